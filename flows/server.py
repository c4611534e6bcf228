"""A Prefect API to talk to: the one PREFECT_API_URL names (in the environment or the active
Prefect profile), or a local server started here.

The local server is the real `prefect server start` (SQLite under `home`, bound to loopback),
run as a child process so Ctrl-C stops it after whatever was using it has stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from gristmill.net import base_url, free_port

STARTUP_SECONDS = 120.0
STOP_SECONDS = 20.0
PR_SET_PDEATHSIG = 1


class PrefectServerError(RuntimeError):
    """The local Prefect server did not come up (its log tail says why)."""


def api_is_up(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until_up(process: subprocess.Popen, api_url: str, log: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerError(f"prefect server exited with {process.returncode}:\n"
                                     + _tail(log))
        if api_is_up(api_url):
            return
        time.sleep(0.5)
    raise PrefectServerError(f"prefect server not up after {limit:.0f}s:\n" + _tail(log))


def _tail(log: Path, lines: int = 20) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the parent dies, so a
    killed `gristmill serve` never leaves an orphan server holding the port."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=STOP_SECONDS)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def local_prefect_server(home: str | Path = ".gristmill/prefect", host: str = "127.0.0.1",
                         port: int | None = None,
                         extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `prefect server start` on `host:port` with its database under `home`; yield the
    API URL; stop the server on exit, whatever happened inside."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    api_url = f"{base_url(host, port)}/api"
    if api_is_up(api_url):
        raise PrefectServerError(f"something already answers on {host}:{port}; "
                                 "pick another --port or set PREFECT_API_URL to use it")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **(extra_env or {})}
    log = home / "server.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", host,
             "--port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        _wait_until_up(process, api_url, log, STARTUP_SECONDS)
        yield api_url
    finally:
        _stop(process)


@contextmanager
def prefect_api(home: str | Path = ".gristmill/prefect", host: str = "127.0.0.1",
                port: int | None = None) -> Iterator[str]:
    """PREFECT_API_URL when it is set, in the environment or by `prefect config set` (any
    Prefect server or Prefect Cloud), else a local server for the duration of the block."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    with local_prefect_server(home, host, port or 4200) as api_url:
        yield api_url
