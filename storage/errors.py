"""Errors a reader or writer raises: each names the dataset or shard and what is wrong."""


class DatasetError(Exception):
    """Base class for every storage error gristmill raises on purpose."""


class NotADatasetError(DatasetError):
    """The folder has no manifest.json: it was never committed, or is not a gristmill dataset."""


class UnreadableManifestError(DatasetError):
    """manifest.json exists but is damaged or of a format version this code cannot read."""


class CorruptShardError(DatasetError):
    """A shard is truncated, unreadable, or disagrees with its manifest entry."""


class ChecksumMismatchError(CorruptShardError):
    """A shard's checksum differs from the one its manifest recorded."""


class SchemaMismatchError(DatasetError):
    """A table does not fit the schema the dataset was opened or declared with."""


class DatasetExistsError(DatasetError):
    """A committed dataset is already at the output path and overwrite was not asked for."""
