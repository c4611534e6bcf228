"""Run the registry clients (npm, pip, apt-get, dpkg-deb) and turn every failure into one line.

All subprocess use in the package goes through here, so a missing tool or a registry error
surfaces as a SourceFetchError that names the source, the command and the fix.
"""

import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gristmill.sources.errors import SourceFetchError

_INSTALL_HINTS = {
    "npm": "install Node.js and npm (Debian: `apt-get install npm`)",
    "apt-get": "run on a Debian/Ubuntu machine with apt configured",
    "dpkg-deb": "install dpkg (Debian: `apt-get install dpkg`)",
}
_MAX_REASON = 200
_NOISE = re.compile(r"complete log of this run|^npm error code \S+$")


def _retry_hint(source: str) -> str:
    return f"retry with `python -m gristmill.sources.fetch {source}`"


def _check_tool(source: str, argv: list[str]) -> None:
    if shutil.which(argv[0]) is None:
        hint = _INSTALL_HINTS.get(argv[0], f"install `{argv[0]}`")
        raise SourceFetchError(
            f"source '{source}': `{argv[0]}` is not installed, so `{shlex.join(argv)}` "
            f"cannot run; {hint}, then {_retry_hint(source)}"
        )


def _reason(output: str) -> str:
    """The line that says why a client failed.

    The first error line usually does, except that npm brackets the reason with its error code
    and the path of its debug log, which are skipped. Long lines (pip lists every version it
    rejected) are cut so the message stays one readable line.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [
        line
        for line in lines
        if ("error" in line.lower() or line.startswith("E:")) and not _NOISE.search(line)
    ]
    reason = errors[0] if errors else (lines[-1] if lines else "no output")
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def run_tool(source: str, argv: list[str], cwd: Path | None = None) -> None:
    """Run a registry client to completion; raise SourceFetchError if it is absent or fails."""
    _check_tool(source, argv)
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SourceFetchError(
            f"source '{source}': could not start `{shlex.join(argv)}` ({exc}); "
            f"{_retry_hint(source)}"
        ) from exc
    if done.returncode != 0:
        raise SourceFetchError(
            f"source '{source}': `{shlex.join(argv)}` failed with exit code {done.returncode} "
            f"({_reason(done.stderr or done.stdout)}); check access to the registry and "
            f"{_retry_hint(source)}"
        )


def _close(proc: subprocess.Popen[bytes]) -> int:
    """Close our end of the pipe first, so a writer blocked on it exits instead of hanging."""
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.wait()


@contextmanager
def deb_tar(source: str, deb: Path) -> Iterator[tarfile.TarFile]:
    """Stream a .deb's file tree as a tar, so only the members a builder wants hit the disk.

    A tar error caused by dpkg-deb failing (e.g. a damaged .deb) is reported as dpkg-deb's
    own message rather than as the unreadable stream it left behind.
    """
    argv = ["dpkg-deb", "--fsys-tarfile", str(deb)]
    _check_tool(source, argv)
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar
                for _ in tar:
                    pass
        except tarfile.TarError:
            if _close(proc) == 0:
                raise
        finally:
            returncode = _close(proc)
        stderr.seek(0)
        message = _reason(stderr.read().decode(errors="replace"))
    if returncode != 0:
        raise SourceFetchError(
            f"source '{source}': `{shlex.join(argv)}` failed with exit code {returncode} "
            f"({message}); delete {deb} and {_retry_hint(source)}"
        )
