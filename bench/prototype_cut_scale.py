"""The prototype cut on the workers as rows grow: wall time, radix rounds, and the driver's
peak RSS, which must not grow with the rows.

Each size is a scored dataset written once under the scratch folder (ids, `--clusters`
k-means labels, float32 distances rounded to 4 decimals so scores tie; 100,000 rows per
shard) and cut by `stages/prototype_cut.py` in a fresh process on a local Ray with 2 CPUs,
keeping the hard 80% of every cluster (`balance`), with a tenth of the rows already removed
by dedup. Sizes run interleaved, `--rounds` times; the driver's and the whole tree's peak
RSS are sampled from outside.

    python bench/prototype_cut_scale.py --rows 1000000 4000000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, write_json
from peer_runs import spread, timed_run

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".gristmill" / "bench" / "prototype_cut_scale"
RESULT = ROOT / "bench" / "results" / "prototype_cut_scale.json"
SHARD_ROWS = 100_000


def build(rows: int, clusters: int) -> Path:
    """The scored dataset and its dedup decisions (routed by shard), made once per size."""
    import numpy as np
    import pyarrow as pa

    from gristmill.config import RuntimeConfig
    from gristmill.stages.lsh_dedup import DECISION_SCHEMA, shard_refs
    from gristmill.stages.routed_files import RoutedFiles
    from gristmill.storage.fs import resolve
    from gristmill.storage.reader import Dataset
    from gristmill.storage.writer import DatasetWriter

    folder = SCRATCH / f"scored-{rows}-{clusters}"
    if (folder / "removed").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.string()), ("cluster", pa.int32()),
                        ("centroid_distance", pa.float32())])
    with DatasetWriter(str(folder / "scored"), schema, max_rows=SHARD_ROWS) as writer:
        for start in range(0, rows, SHARD_ROWS):
            count = min(SHARD_ROWS, rows - start)
            writer.write(pa.table({
                "id": [f"row-{i:09d}" for i in range(start, start + count)],
                "cluster": pa.array(rng.integers(0, clusters, count), pa.int32()),
                "centroid_distance": pa.array(np.round(rng.random(count), 4), pa.float32())},
                schema=schema))
        writer.commit()
    dataset = Dataset.open(str(folder / "scored"))
    removed = RoutedFiles(resolve(str(folder / "removed")), DECISION_SCHEMA)
    for shard in shard_refs(dataset, RuntimeConfig(progress=False)):
        ids = shard.read(["id"]).column("id").to_pylist()[::10]
        removed.write(pa.table({"id": ids, "reason": ["exact_duplicate"] * len(ids),
                                "duplicate_of": ["row-000000000"] * len(ids),
                                "score": [1.0] * len(ids),
                                "matched": pa.nulls(len(ids), pa.string())}),
                      np.full(len(ids), shard.index, np.int64), "bench")
    return folder


def child(folder: Path, output: Path) -> None:
    """One measured cut (run in its own process)."""
    start = time.perf_counter()
    from gristmill.config import RuntimeConfig
    from gristmill.runtime import RayConfig
    from gristmill.stages.lsh_dedup import DECISION_SCHEMA, shard_refs
    from gristmill.stages.prototype_cut import prototype_cut
    from gristmill.stages.prune import PrototypeConfig
    from gristmill.stages.routed_files import RoutedFiles
    from gristmill.storage.fs import resolve
    from gristmill.storage.reader import Dataset

    runtime = RuntimeConfig(ray=RayConfig(num_cpus=2), progress=False)
    dataset = Dataset.open(str(folder / "scored"))
    work = output / "work"
    found = prototype_cut(shard_refs(dataset, runtime),
                          RoutedFiles(resolve(str(folder / "removed")), DECISION_SCHEMA),
                          PrototypeConfig(strategy="hard", keep_fraction=0.8, balance=True),
                          id_column="id", partitions=4, work=resolve(str(work)),
                          runtime=runtime)
    rounds = len(list((work / "_phases").glob("round-*.json")))
    (output / "report.json").write_text(json.dumps({
        "seconds": time.perf_counter() - start, "rounds": rounds,
        "pruned": sum(found.summary["pruned_counts"])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULT)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.output)
        return
    folders = {rows: build(rows, args.clusters) for rows in args.rows}
    runs = []
    for round_index in range(args.rounds):
        for rows in args.rows if round_index % 2 == 0 else reversed(args.rows):
            output = SCRATCH / "out"
            shutil.rmtree(output, ignore_errors=True)
            output.mkdir(parents=True)
            wall, rss = timed_run([sys.executable, __file__, "--child", str(folders[rows]),
                                   "--output", str(output)], ROOT, f"cut of {rows} rows")
            report = json.loads((output / "report.json").read_text())
            runs.append({"round": round_index, "rows": rows, "wall_s": wall, **report,
                         "driver_peak_rss_bytes": rss.root_peak, "tree_peak_rss_bytes": rss.peak})
            print(f"round {round_index} {rows:>9} rows {wall:6.1f} s {report['rounds']} rounds "
                  f"driver {rss.root_peak / 1e6:5.0f} MB tree {rss.peak / 1e6:6.0f} MB", flush=True)
    table = {}
    for rows in args.rows:
        mine = [r for r in runs if r["rows"] == rows]
        table[str(rows)] = {"rounds": len(mine), "wall_s": spread([r["wall_s"] for r in mine]),
                            "radix_rounds": mine[-1]["rounds"],
                            "driver_peak_rss_bytes": spread(
                                [r["driver_peak_rss_bytes"] for r in mine]),
                            "tree_peak_rss_bytes": spread([r["tree_peak_rss_bytes"] for r in mine])}
        wall, driver = table[str(rows)]["wall_s"], table[str(rows)]["driver_peak_rss_bytes"]
        print(f"{rows:>9} rows: {wall['median']:.1f} s ({wall['min']:.0f}-{wall['max']:.0f}), "
              f"driver {driver['median'] / 1e6:.0f} MB")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    write_json(args.results, {"commit": commit, "clusters": args.clusters,
                              "load_average_after": load_average(), "runs": runs,
                              "table": table})


if __name__ == "__main__":
    main()
