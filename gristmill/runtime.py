"""The Ray session every stage runs in: a quiet local Ray by default, a cluster by address.

`RAY_ADDRESS` or `RayConfig.address` joins an existing cluster ("auto", "ray://host:10001",
"host:6379"); otherwise a local instance starts with no dashboard and no token prompt.
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, ConfigDict, Field


class RayConfig(BaseModel):
    """Where stages execute."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(
        default=None, description="Cluster to join; None starts a local Ray (or uses RAY_ADDRESS)")
    num_cpus: int | None = Field(default=None, description="CPUs for a local Ray; None = all")
    num_gpus: int | None = Field(default=None, description="GPUs for a local Ray; None = detect")
    object_store_memory: int | None = Field(
        default=None, description="Bytes of object store for a local Ray; None = Ray's default")
    namespace: str = "gristmill"


def _quiet_local_env() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def ensure_ray(config: RayConfig | None = None) -> bool:
    """Start or join Ray unless this process is already connected; True if this call did it."""
    import ray

    if ray.is_initialized():
        return False
    config = config or RayConfig()
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=config.namespace, logging_level=logging.WARNING,
                 log_to_driver=True)
    else:
        _quiet_local_env()
        ray.init(
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            object_store_memory=config.object_store_memory,
            namespace=config.namespace,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    return True

