"""Every gristmill flow as a Prefect deployment, with the schedules a YAML file lists.

`gristmill serve` (and `make ui`) calls `serve_flows`: it connects to PREFECT_API_URL or
starts a local server, registers one deployment per flow (default parameters from the flow's
params model, or from a config file), attaches the schedules, and runs the flow runs the
server hands out (from the UI, the API or a schedule) until Ctrl-C. Each schedule carries its
own parameters, read from a config file plus `--set`-style overrides, so a nightly run and
an hourly one can differ.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any, Self

import yaml
from prefect import get_client, serve
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.schedules import Schedule
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Crashed
from pydantic import Field, ValidationError, model_validator

from gristmill.config import ConfigError, FrozenModel, load_config
from gristmill.flows.registry import FLOWS
from gristmill.flows.server import prefect_api

ORPHAN_GRACE_SECONDS = 15.0
"""How long runs interrupted by Ctrl-C get to report their own end before serve marks them."""

class ScheduleSpec(FrozenModel):
    """When a deployment runs on its own, and with which parameters."""

    cron: str | None = Field(default=None, description="Cron string, e.g. '0 3 * * *'")
    interval_seconds: float | None = Field(default=None, gt=0)
    timezone: str | None = Field(default=None, description="IANA name; None = UTC")
    config: str | None = Field(default=None, description="YAML of the flow's parameters")
    overrides: list[str] = Field(default_factory=list, description="key.path=value edits")
    active: bool = True
    slug: str | None = Field(default=None, description="Stable name of this schedule")

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("a schedule needs exactly one of cron or interval_seconds")
        return self


class DeploymentSpec(FrozenModel):
    """One flow's deployment: its default parameters and its schedules."""

    description: str | None = None
    config: str | None = Field(default=None, description="YAML of the default parameters")
    overrides: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    schedules: list[ScheduleSpec] = Field(default_factory=list)


class ServeSpec(FrozenModel):
    """What `gristmill serve` registers. Flows not listed get a deployment with defaults
    and no schedule, so every flow can be started from the UI."""

    deployments: dict[str, DeploymentSpec] = Field(default_factory=dict)
    limit: int | None = Field(default=1, ge=1, description="Flow runs at once (None: no cap)")

    @model_validator(mode="after")
    def _known_flows(self) -> Self:
        unknown = sorted(set(self.deployments) - set(FLOWS))
        if unknown:
            raise ValueError(f"unknown flows {unknown}; known: {sorted(FLOWS)}")
        return self


def load_serve_spec(path: str | Path | None) -> ServeSpec:
    if path is None:
        return ServeSpec()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return ServeSpec.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as err:
        raise ConfigError(f"cannot use schedules file {path}: {err}") from err


def flow_parameters(flow_name: str, config: str | None, overrides: list[str]) -> dict[str, Any]:
    """The flow's one argument, `params`, validated by its model and dumped as JSON."""
    params = load_config(FLOWS[flow_name].params, config, overrides)
    return {"params": params.model_dump(mode="json")}


def _schedule(spec: ScheduleSpec, flow_name: str) -> Schedule:
    every = datetime.timedelta(seconds=spec.interval_seconds) if spec.interval_seconds else None
    return Schedule(cron=spec.cron, interval=every, timezone=spec.timezone, active=spec.active,
                    slug=spec.slug, parameters=flow_parameters(flow_name, spec.config,
                                                               spec.overrides))


def build_deployments(spec: ServeSpec) -> list[RunnerDeployment]:
    """One deployment per registered flow, named after it, entrypoint by module path so a
    run imports the installed package, wherever the worker's working directory is. Without
    a config the form starts from the params model's own defaults."""
    deployments = []
    for name, entry in FLOWS.items():
        wanted = spec.deployments.get(name, DeploymentSpec())
        deployments.append(entry.flow.to_deployment(
            name=name,
            description=wanted.description or (entry.flow.description or "").strip() or None,
            parameters=(flow_parameters(name, wanted.config, wanted.overrides)
                        if wanted.config or wanted.overrides else None),
            schedules=[_schedule(s, name) for s in wanted.schedules] or None,
            tags=["gristmill", *wanted.tags],
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    return deployments


def serve_flows(spec: ServeSpec, *, home: str = ".gristmill/prefect", host: str = "127.0.0.1",
                port: int | None = None) -> None:
    """Serve every deployment until interrupted; a server started here stops after."""
    deployments = build_deployments(spec)
    with prefect_api(home, host, port) as api_url, \
            temporary_settings(updates={PREFECT_API_URL: api_url}):
        print(f"Prefect UI: {api_url.removesuffix('/api')}  (API {api_url})", flush=True)
        serve(*deployments, limit=spec.limit)
        crash_orphaned_runs(deployments)


def crash_orphaned_runs(deployments: list[RunnerDeployment],
                        grace_seconds: float = ORPHAN_GRACE_SECONDS) -> int:
    """After `serve` stops, a run it was executing may still read Running: its process was
    interrupted before it could report. Served deployments run only in their `serve`, so once
    the interrupted runs had `grace_seconds` to report their own end, any still Running is
    marked Crashed (the UI never shows a run nobody runs). Returns how many were marked."""
    with get_client(sync_client=True) as client:
        ids = [client.read_deployment_by_name(f"{d.flow_name}/{d.name}").id for d in deployments]
        running = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=ids),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
        deadline = time.monotonic() + grace_seconds
        while (runs := client.read_flow_runs(flow_run_filter=running)) \
                and time.monotonic() < deadline:
            time.sleep(1)
        for run in runs:
            client.set_flow_run_state(run.id, Crashed(
                message="gristmill serve stopped while this run was in flight"), force=True)
    return len(runs)
