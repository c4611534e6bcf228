"""Deployments against a real Prefect server on loopback: `gristmill serve` registers every
flow with its schedules and parameter form; runs started from the API, from the UI form in a
real headless Chromium, and by a schedule all complete with the same output; Ctrl-C stops
the runner and then the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gristmill.flows.deploy import ServeSpec, build_deployments, load_serve_spec
from gristmill.flows.registry import FLOWS
from gristmill.net import free_port
from gristmill.sources import resolve
from gristmill.storage.reader import Dataset

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def test_the_schedules_file_validates_every_flow_and_schedule() -> None:
    spec = load_serve_spec("configs/schedules.yaml")
    deployments = {d.name: d for d in build_deployments(spec)}
    assert set(deployments) == set(FLOWS)
    nightly = deployments["curate"].schedules[0]
    assert nightly.schedule.cron == "0 3 * * *"
    assert nightly.parameters["params"]["work_dir"] == ".gristmill/demo"
    assert deployments["curate"].entrypoint == "gristmill.flows.curate.curate_flow"


def test_a_schedule_needs_exactly_one_kind_and_a_known_flow() -> None:
    with pytest.raises(ValueError, match="exactly one of cron or interval"):
        ServeSpec.model_validate({"deployments": {"ingest": {"schedules": [{}]}}})
    with pytest.raises(ValueError, match="unknown flows"):
        ServeSpec.model_validate({"deployments": {"nope": {}}})


def _without_prefect_settings(root: Path, profiles: Path | None = None) -> dict[str, str]:
    """This environment minus every Prefect setting, and a profiles file of our own (empty
    unless given), so a developer's `prefect config set PREFECT_API_URL=...` cannot send the
    test's deployments to their server."""
    if profiles is None:
        profiles = root / "profiles.toml"
        profiles.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_PROFILES_PATH"] = str(profiles)
    return env


def test_serve_uses_the_api_url_of_the_active_prefect_profile(tmp_path: Path) -> None:
    """`prefect config set PREFECT_API_URL=...` is how users point Prefect at a server; serve
    must use it rather than start its own (read in a fresh process: Prefect reads profiles
    at import)."""
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('active = "remote"\n[profiles.remote]\n'
                        'PREFECT_API_URL = "http://prefect.example:4200/api"\n')
    env = _without_prefect_settings(tmp_path, profiles)
    code = ("from gristmill.flows.server import prefect_api\n"
            "with prefect_api(home='unused') as url: print(url)")
    found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "http://prefect.example:4200/api"
    assert not (tmp_path / "unused").exists(), "no local server was started"


def _wait(check: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1.0)
    raise AssertionError(f"timed out after {seconds:.0f}s waiting for {what}")


class Served:
    """`gristmill serve` in a child process, and a client of its API."""

    def __init__(self, process: subprocess.Popen, api: str, log: Path) -> None:
        self.process, self.api, self.log = process, api, log
        self.http = httpx.Client(base_url=api, timeout=30)

    def send(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        """One API call, retrying 503s as Prefect's own client does (SQLite busy under
        load); deleting what is already gone is fine."""
        for attempt in range(6):
            response = self.http.request(method, path, json=body)
            if response.status_code != 503:
                break
            time.sleep(2 ** attempt)
        if not (method == "DELETE" and response.status_code == 404):
            response.raise_for_status()
        return response

    def post(self, path: str, body: dict | None = None) -> Any:
        return self.send("POST", path, body or {}).json()

    def deployments(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.post("/deployments/filter")}

    def runs(self, deployment_id: str) -> list[dict]:
        return self.post("/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": [deployment_id]}}})

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group,
        `serve` and the flow runs it started (the server it started has its own group)."""
        os.killpg(self.process.pid, signal.SIGINT)

    def stop_schedules(self, deployment_id: str) -> None:
        """Pause the deployment and drop the runs its schedule already queued, so the next
        test's run does not wait behind a backlog of late 10-second runs on a busy machine
        (pausing removes only future runs)."""
        self.send("PATCH", f"/deployments/{deployment_id}", {"paused": True})
        for run in self.runs(deployment_id):
            if run["auto_scheduled"] and run["state"]["type"] == "SCHEDULED":
                self.send("DELETE", f"/flow_runs/{run['id']}")

    def finished(self, run_id: str, seconds: float = 240) -> dict:
        def state() -> dict | None:
            run = self.send("GET", f"/flow_runs/{run_id}").json()
            return run if run["state"]["type"] in TERMINAL else None
        run = _wait(state, seconds, f"flow run {run_id}")
        assert run["state"]["type"] == "COMPLETED", self.log.read_text()[-3000:]
        return run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    raw = root / "brown.jsonl"
    rows = resolve("brown").files[0].read_text().splitlines()[:3]
    raw.write_text("\n".join(rows) + "\n")
    base = [f"sources=[{raw}]", f"output={root / 'ingested'}", "runtime.progress=false"]
    (root / "schedules.yaml").write_text(yaml.safe_dump({"limit": 1, "deployments": {
        "ingest": {"overrides": base, "schedules": [
            {"interval_seconds": 10, "overrides": base, "slug": "every-10s"}]}}}))
    port = free_port()
    env = _without_prefect_settings(root)
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "2"
    log = root / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gristmill.cli", "serve", "--schedules",
             str(root / "schedules.yaml"), "--port", str(port), "--home", str(root / "prefect")],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(process, f"http://127.0.0.1:{port}/api", log)
    served.root = root  # type: ignore[attr-defined]
    try:
        _wait(lambda: _up(served) and len(served.deployments()) == len(FLOWS), 180,
              "the deployments")
        yield served
    finally:
        if process.poll() is None:
            served.ctrl_c()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _up(served: Served) -> bool:
    assert served.process.poll() is None, served.log.read_text()[-3000:]
    try:
        return served.http.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_every_flow_is_a_deployment_with_its_schedule_and_form(served: Served) -> None:
    deployments = served.deployments()
    assert set(deployments) == set(FLOWS)
    ingest = deployments["ingest"]
    assert [s["schedule"]["interval"] for s in ingest["schedules"]] == [10.0]
    schema = ingest["parameter_openapi_schema"]
    form = schema["definitions"]["IngestParams"]["properties"]
    assert form["sources"]["description"] == "Named sources, files, folders, globs or URIs"
    assert form["output"]["default"] == ".gristmill/ingest"
    assert ingest["parameters"]["params"]["output"] == str(served.root / "ingested")


@pytest.mark.slow
def test_api_and_schedule_runs_complete_with_the_same_output(served: Served) -> None:
    ingest = served.deployments()["ingest"]
    params = json.loads(json.dumps(ingest["parameters"]))
    run = served.post(f"/deployments/{ingest['id']}/create_flow_run",
                      {"parameters": params})
    served.finished(run["id"])
    output = Dataset.open(params["params"]["output"])
    assert output.num_rows == 3
    manifest = (Path(params["params"]["output"]) / "manifest.json").read_bytes()
    runs = [r["id"] for r in served.runs(ingest["id"])]
    artifacts = served.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": runs}}})
    reports = [a["data"] for a in artifacts if a["key"] == "ingest-report"]
    assert sum("(reused:" not in r for r in reports) == 1, \
        "one run did the work; every later one reports that it reused that output"

    scheduled = _wait(lambda: [r for r in served.runs(ingest["id"]) if r["auto_scheduled"]
                               and r["state"]["type"] == "COMPLETED"], 180,
                      "a scheduled run to complete")
    assert scheduled[0]["parameters"] == params
    served.stop_schedules(ingest["id"])
    assert (Path(params["params"]["output"]) / "manifest.json").read_bytes() == manifest

    env = {**os.environ, "PREFECT_API_URL": served.api}
    cli = subprocess.run([sys.executable, "-m", "gristmill.cli", "run", "ingest",
                          *[arg for o in _overrides(params) for arg in ("--set", o)]],
                         env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (Path(params["params"]["output"]) / "manifest.json").read_bytes() == manifest


def _overrides(params: dict) -> list[str]:
    p = params["params"]
    return [f"sources=[{p['sources'][0]}]", f"output={p['output']}", "runtime.progress=false"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test "
                    "installs it)")
def test_the_ui_form_starts_a_run_with_edited_values(served: Served, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ingest = served.deployments()["ingest"]
    served.stop_schedules(ingest["id"])
    edited = str(tmp_path / "from-the-ui")
    ui = served.api.removesuffix("/api")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{ui}/deployments/deployment/{ingest['id']}/run", wait_until="networkidle")
        page.get_by_text("Named sources, files, folders, globs or URIs").wait_for(timeout=60_000)
        assert page.get_by_text("Larger texts are rejected as too_large").is_visible()
        default = str(served.root / "ingested")
        fields = [f for f in page.locator("input, textarea").all() if f.input_value() == default]
        assert len(fields) == 1, "the output field, pre-filled with the deployment's value"
        fields[0].fill(edited)
        page.screenshot(path=str(tmp_path / "deployment-form.png"), full_page=True)
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url(lambda url: not url.endswith("/run"), timeout=60_000)
        browser.close()
    assert (tmp_path / "deployment-form.png").stat().st_size > 10_000
    runs = _wait(lambda: [r for r in served.runs(ingest["id"])
                          if r["parameters"].get("params", {}).get("output") == edited],
                 60, "the run the form submitted")
    assert len(runs) == 1
    served.finished(runs[0]["id"])
    assert Dataset.open(edited).num_rows == 3


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_the_run_the_runner_then_the_server(served: Served) -> None:
    """The run ingests 170 MB (tens of seconds), so Ctrl-C surely lands while it runs. The
    server's own SQLite file is read at the end: the server is gone by then."""
    ingest = served.deployments()["ingest"]
    served.stop_schedules(ingest["id"])
    big = served.root / "big.jsonl"
    with big.open("wb") as sink:
        for _ in range(5):
            sink.write(resolve("spam_assassin").files[0].read_bytes())
    params = json.loads(json.dumps(ingest["parameters"]))
    params["params"].update(sources=[str(big)], output=str(served.root / "interrupted"))
    run = served.post(f"/deployments/{ingest['id']}/create_flow_run", {"parameters": params})
    _wait(lambda: served.send("GET", f"/flow_runs/{run['id']}").json()["state"]["type"]
          == "RUNNING", 240, "the run to start")
    served.ctrl_c()
    served.process.wait(timeout=120)
    with pytest.raises(httpx.HTTPError):
        served.http.get("/health", timeout=3)
    db = sqlite3.connect(served.root / "prefect" / "prefect.db")
    (state,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (run["id"],)).fetchone()
    assert state == "CRASHED", "the interrupted run is marked so in the UI, not left running"
