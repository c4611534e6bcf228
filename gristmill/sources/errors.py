"""Errors raised by the sources package, each carrying a one-line, actionable message."""


class SourceError(Exception):
    """Base class so callers can catch every source problem in one place."""


class UnknownSourceError(SourceError, LookupError):
    """A source name that is not registered."""


class SourceNotFetchedError(SourceError):
    """A registered source whose files are not in the cache yet."""


class SourceFetchError(SourceError):
    """Downloading or converting a source failed; the message says what to do."""
