"""A real two-node Ray cluster on this machine: a head and a second node started with
`ray start`, one CPU and one temp dir each. curate runs on it with RAY_ADDRESS set and its
work folder on a real S3 server; its units run on both nodes, and every dataset it commits
equals a local run's, row for row. Its retrieval datastore, searched from index actors on
both nodes, answers as the local one does on threads (slow: two curate runs)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml

from gristmill.net import free_port
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
NODE_MEMORY = str(200 * 1024 * 1024)
DATASTORE = "datastore"
QUERIES = ["What did the jury say about the election?", "free money offer, click now",
           "the history of the city council"]


class RayNode:
    """One `ray start --block` process group; stopping it stops the node's processes."""

    def __init__(self, arguments: list[str], env: dict[str, str]) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="gm-ray-", dir="/tmp")
        self.process = subprocess.Popen(
            [RAY, "start", "--block", "--num-cpus=1", f"--temp-dir={self.temp_dir}",
             f"--object-store-memory={NODE_MEMORY}",
             "--disable-usage-stats", *arguments],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=90)
    return int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def _environment() -> dict[str, str]:
    """The test's S3 endpoint and credentials (set by conftest), offline models, and Ray's
    token authentication off: every process of this cluster is on loopback."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def two_nodes(s3_server) -> Iterator[str]:
    """The cluster's address; both nodes reach the S3 server through the environment."""
    env = _environment()
    address = f"127.0.0.1:{free_port()}"
    head = RayNode(["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"],
                   env)
    nodes = [head]
    try:
        deadline = time.monotonic() + 180
        while _alive_nodes(address, env) < 1:
            assert head.process.poll() is None, head.process.stdout.read()
            assert time.monotonic() < deadline, "the head never came up"
            time.sleep(1)
        nodes.append(RayNode([f"--address={address}"], env))
        while _alive_nodes(address, env) < 2:
            assert nodes[1].process.poll() is None, nodes[1].process.stdout.read()
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)
        yield address
    finally:
        for node in reversed(nodes):
            node.stop()


def _curate(work_dir: str, tmp_path: Path, name: str, env: dict[str, str]) -> str:
    config = {
        "sources": ["brown", "owt", "spam_assassin"], "max_records": 40, "work_dir": work_dir,
        "text_filter": {"min_words": 50},
        "quality": {"budget": 60, "law": {"preset": "datacomp_medium", "rescale": True}},
        "prune": {"config": {"clustering": {"clusters": 3},
                             "embed": {"embedder": {"max_seq_length": 64}},
                             "dedup": {"minhash_threshold": 0.5}}},
        "mix": {"total_steps": 20, "batch_size": 8},
        "captions": {"enabled": False},
        "datastore": {"chunk": {"num_shards": 2}, "index": {"kind": "flat"},
                      "embed": {"embedder": {"max_seq_length": 64}}},
        "runtime": {"progress": False, "storage": {"max_rows_per_shard": 16}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "gristmill.cli", "run", "curate", "-c",
                           str(path)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _datasets(root: str) -> list[str]:
    """Folders under `root` holding a committed dataset, relative to it (the datastore's own
    manifest is not a dataset's; its passages are)."""
    loc = resolve(root)
    listed = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True))
    return sorted(name for name in (os.path.relpath(os.path.dirname(i.path), loc.path)
                                    for i in listed if i.base_name == "manifest.json")
                  if name != DATASTORE)


def _search_on_cluster(uri: str, address: str, env: dict[str, str]) -> dict:
    """QUERIES against the datastore at `uri` from Ray actors on the cluster: the hits' ids
    and each actor's node."""
    probe = ("import json, sys; from gristmill.retrieval.retriever import Retriever; "
             "r = Retriever.open(sys.argv[1], backend='ray', workers=2); "
             "hits = r.search(json.loads(sys.argv[2])); "
             "print(json.dumps({'nodes': r.searcher.nodes(), "
             "'ids': [[h.id for h in q] for q in hits]}))")
    done = subprocess.run([sys.executable, "-c", probe, uri, json.dumps(QUERIES)],
                          env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rows(root: str, name: str) -> list[dict]:
    """A dataset's rows in manifest order, with the run's own folder (named by an index of
    domains, say) written as <root>."""
    table = Dataset.open(f"{root}/{name}").to_table()
    return json.loads(json.dumps(table.to_pylist(), default=str).replace(root, "<root>"))


def test_curate_runs_on_both_nodes_with_outputs_on_s3_as_a_local_run(
        two_nodes: str, s3_bucket: str, tmp_path: Path) -> None:
    env = _environment()
    started = time.monotonic()
    _curate(str(tmp_path / "local"), tmp_path, "local", env)
    local_seconds = time.monotonic() - started
    remote = f"s3://{s3_bucket}/run"
    started = time.monotonic()
    output = _curate(remote, tmp_path, "cluster", {**env, "RAY_ADDRESS": two_nodes})
    cluster_seconds = time.monotonic() - started

    names = _datasets(remote)
    assert "final" in names and "text_filter" in names
    assert names == _datasets(str(tmp_path / "local"))
    for name in names:
        here = _rows(str(tmp_path / "local"), name)
        assert _rows(remote, name) == here, f"{name} differs between the cluster and local run"

    nodes: dict[str, int] = {}
    for name in names:
        stats = Dataset.open(f"{remote}/{name}").manifest.stats
        for node, units in (stats.units_per_node if stats else {}).items():
            nodes[node] = nodes.get(node, 0) + units
    assert len(nodes) == 2, f"units ran on {nodes}: {output}"

    from gristmill.retrieval.retriever import Retriever

    local = Retriever.open(str(tmp_path / "local" / DATASTORE), backend="threads")
    expected = [[hit.id for hit in hits] for hits in local.search(QUERIES)]
    assert all(expected), "the local datastore found nothing to compare with"
    searched = _search_on_cluster(f"{remote}/{DATASTORE}", two_nodes, env)
    assert len(set(searched["nodes"])) == 2, f"index actors on {searched['nodes']}"
    assert searched["ids"] == expected
    print(json.dumps({"local_seconds": round(local_seconds, 1),
                      "cluster_seconds": round(cluster_seconds, 1), "units_per_node": nodes}))
