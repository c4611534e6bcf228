"""Pick files out of a Debian package's file tree by their installed path."""

import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from gristmill.sources.downloads import apt_deb
from gristmill.sources.tools import deb_tar


def _relative(name: str, prefix: PurePosixPath) -> PurePosixPath | None:
    path = PurePosixPath(name.removeprefix("./"))
    if path == prefix or not path.is_relative_to(prefix) or ".." in path.parts:
        return None
    return path.relative_to(prefix)


def package_members(
    source: str, package: str, prefix: str
) -> Iterator[tuple[PurePosixPath, tarfile.TarInfo, bytes | None]]:
    """Yield (path under prefix, member, content) for every entry below an installed folder.

    Content is the bytes of a regular file and None for links and folders, so callers can
    count what they skip without unpacking anything else from the package.
    """
    deb: Path = apt_deb(source, package)
    root = PurePosixPath(prefix.strip("/"))
    with deb_tar(source, deb) as tar:
        for member in tar:
            relative = _relative(member.name, root)
            if relative is None:
                continue
            handle = tar.extractfile(member) if member.isfile() else None
            yield relative, member, handle.read() if handle else None
