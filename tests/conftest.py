"""Shared fixtures: one local Ray for the session, a real S3 server on loopback when a test
asks for one, quiet services, offline models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import fsspec
import pytest
from s3_server import S3Server, environment_for_tests

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
S3_PORT = environment_for_tests()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with two CPUs, started once for every test that needs it."""
    import ray

    from gristmill.runtime import RayConfig, ensure_ray

    started = ensure_ray(RayConfig(num_cpus=2))
    yield
    if started:
        ray.shutdown()


@pytest.fixture
def memory_uri() -> Iterator[str]:
    """A fresh folder on fsspec's process-wide memory filesystem, removed afterwards."""
    path = f"/gristmill-tests/{uuid.uuid4().hex}"
    yield f"memory://{path}"
    memory = fsspec.filesystem("memory")
    if memory.exists(path):
        memory.rm(path, recursive=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """SeaweedFS's S3 server on loopback, started once; its data is removed after."""
    server = S3Server(S3_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh bucket on the test S3 server, deleted afterwards: SeaweedFS gives every
    bucket volumes of its own, and the server has a fixed number."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    yield name
    s3_server.filesystem().delete_dir(name)
