"""MinHash near-duplicate removal: gristmill against rensa, datasketch and DataTrove on the
same text.

The corpus is real text with planted copies. Base passages are consecutive runs of
`--words` words from Debian's documentation (`bench/debian_corpus.py`), each distinct
after normalization; a fifth of the rows are copies of random base passages with words
dropped or replaced at edit rates 0.5%, 1%, 2% and 5% (a quarter each: 5-gram Jaccard
about 0.95, 0.9, 0.8 and 0.6). Every tool keys on
word 5-grams, 128 permutations and Jaccard 0.8:
- gristmill: ingest + near_dup_keys in one pass on a local Ray, then exact and MinHash
  dedup as phases of worker tasks (stages/lsh_dedup.py), `--workers` CPUs;
- rensa 0.5.0 (Rust) and datasketch 2.0.0: one process each, streaming (a document whose
  LSH candidates hold one at estimated Jaccard >= 0.8 is dropped, else inserted), in their
  own virtualenvs under the scratch folder;
- DataTrove 0.10.1: its four MinHash steps (signatures, buckets, clusters, filter) on its
  local executor with `--workers` processes, in its own virtualenv; it normalizes text its
  own way and joins any two documents that share a band, unverified.

Quality is judged against the exact Jaccard of 5-gram sets, computed here:
- recall: of the planted copies whose exact Jaccard to their original is >= 0.8, the share
  a tool put in one group with that original (its drops followed to their kept rows);
- precision: of a tool's drops, the share whose exact Jaccard to the row it names as kept is
  >= 0.7 (MinHash estimates carry ~0.035 of noise at 128 permutations, and a group may be a
  chain whose ends are less alike than its links).
Speed is documents per second per CPU the tool used. Memory is the peak RSS of the whole
process tree and, for gristmill, of the driver alone. Tools run interleaved, a fresh
process each, `--rounds` times.

    python bench/dedup_vs_peers.py --rows 100000 --rounds 5
    python bench/dedup_vs_peers.py --rows 100000 200000 --rounds 1 --tools gristmill \\
        --results bench/results/dedup_driver_memory.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import load_average, write_json
from debian_corpus import PACKAGES, unique_documents, unpack
from peer_runs import spread, timed_run, venv_python

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".gristmill" / "bench" / "dedup_vs_peers"
DEBIAN = ROOT / ".gristmill" / "bench" / "pipeline_vs_peers"
RESULT = ROOT / "bench" / "results" / "dedup_vs_peers.json"
PEERS = {"rensa": "rensa==0.5.0", "datasketch": "datasketch==2.0.0",
         "datatrove": "datatrove[io,processing]==0.10.1 aiohttp requests spacy"}
PARALLEL = {"gristmill", "datatrove"}
"""Tools that use `--workers` CPUs; the others run in one process."""
TOOLS = ["gristmill", *PEERS]
EDIT_RATES = (0.005, 0.01, 0.02, 0.05)
COPY_SHARE = 0.2
THRESHOLD = 0.8
PRECISION_JACCARD = 0.7
WORD = re.compile(r"\w+")


def shingle_set(text: str, n: int = 5) -> set[str]:
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str) -> float:
    left, right = shingle_set(a), shingle_set(b)
    return len(left & right) / len(left | right) if left | right else 1.0


def edited(text: str, rate: float, vocabulary: list[str], rng: random.Random) -> str:
    words = []
    for word in text.split():
        roll = rng.random()
        if roll < rate / 2:
            continue
        words.append(rng.choice(vocabulary) if roll < rate else word)
    return " ".join(words)


def write_corpus(rows: int, words: int, files: int = 8, seed: int = 0) -> tuple[Path, dict]:
    """JSONL files of base passages and planted copies; the plant list beside them."""
    out = SCRATCH / f"corpus-{rows}-{words}w"
    meta_path = out.with_name(out.name + ".json")
    if meta_path.exists():
        return out, json.loads(meta_path.read_text())
    copies = int(rows * COPY_SHARE)
    passages: list[str] = []
    seen: set[bytes] = set()
    for _, text in unique_documents(unpack(PACKAGES, DEBIAN)):
        tokens = text.split()
        for start in range(0, len(tokens) - words + 1, words):
            passage = " ".join(tokens[start:start + words])
            key = hashlib.blake2b(" ".join(WORD.findall(passage.lower())).encode(),
                                  digest_size=16).digest()
            if key not in seen:
                seen.add(key)
                passages.append(passage)
        if len(passages) >= rows - copies:
            break
    if len(passages) < rows - copies:
        raise SystemExit(f"only {len(passages):,} distinct {words}-word passages; ask for "
                         f"fewer rows or shorter passages (--words)")
    rng = random.Random(seed)
    base = passages[:rows - copies]
    vocabulary = [w for p in base[:2000] for w in p.split()]
    records = [{"doc_id": f"b{i}", "text": t} for i, t in enumerate(base)]
    planted = []
    for i in range(copies):
        original = rng.randrange(len(base))
        rate = EDIT_RATES[i % len(EDIT_RATES)]
        records.append({"doc_id": f"c{i}", "text": edited(base[original], rate, vocabulary,
                                                           rng)})
        planted.append({"copy": f"c{i}", "original": f"b{original}", "rate": rate})
    rng.shuffle(records)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    sinks = [(partial / f"part-{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    for index, record in enumerate(records):
        sinks[index % files].write(json.dumps(record, ensure_ascii=False) + "\n")
    for sink in sinks:
        sink.close()
    partial.rename(out)
    meta = {"rows": rows, "words": words, "base": len(base), "copies": copies,
            "edit_rates": list(EDIT_RATES), "files": files, "seed": seed, "planted": planted}
    meta_path.write_text(json.dumps(meta))
    return out, meta


def command(tool: str, corpus: Path, out: Path, workers: int) -> list[str]:
    args = ["--input", str(corpus), "--output", str(out), "--workers", str(workers),
            "--threshold", str(THRESHOLD), "--num-perm", "128"]
    script = ROOT / "bench" / "peers" / f"{tool}_minhash.py"
    if tool == "gristmill":
        return [sys.executable, str(script), *args]
    return [str(venv_python(SCRATCH / "venvs" / tool, PEERS[tool])), str(script), *args]


def run_tool(tool: str, corpus: Path, workers: int) -> dict:
    out = SCRATCH / "out" / tool
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    argv = command(tool, corpus, out, workers)
    wall, rss = timed_run(argv, ROOT, f"{tool} on {corpus.name}")
    report = json.loads((out / "report.json").read_text())
    removed = report["removed"] if tool != "gristmill" else gristmill_removed(out)
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "tool_s": report["seconds"], "removed": removed,
            "peak_rss_bytes": rss.peak, "root_peak_rss_bytes": rss.root_peak,
            "rss_at_peak_by_process": rss.at_peak}


def gristmill_removed(out: Path) -> dict[str, str]:
    """gristmill's decisions (row ids) as doc_id -> kept doc_id, read here rather than in
    the measured driver."""
    from gristmill.storage.reader import Dataset

    keys = Dataset.open(str(out / "keys")).to_table(columns=["id", "doc_id"])
    names = dict(zip(keys.column("id").to_pylist(), keys.column("doc_id").to_pylist(),
                     strict=True))
    pairs = (line.split("\t") for line in (out / "removed.tsv").read_text().splitlines())
    return {names[row]: names[kept] for row, kept in pairs}


def _root(parent: dict[str, str], node: str) -> str:
    seen = set()
    while node in parent and node not in seen:
        seen.add(node)
        node = parent[node]
    return node


def quality(removed: dict[str, str], meta: dict, texts: dict[str, str]) -> dict:
    """Recall over planted copies at exact Jaccard >= threshold (overall and per edit rate),
    precision over drops (exact Jaccard to the named kept row >= PRECISION_JACCARD)."""
    by_rate: dict[str, list[bool]] = {}
    for plant in meta["planted"]:
        if plant["true_jaccard"] < THRESHOLD:
            continue
        joined = _root(removed, plant["copy"]) == _root(removed, plant["original"])
        by_rate.setdefault(str(plant["rate"]), []).append(joined)
    found = [hit for hits in by_rate.values() for hit in hits]
    correct = [jaccard(texts[row], texts[kept]) >= PRECISION_JACCARD
               for row, kept in removed.items()]
    return {"removed": len(removed), "positives": len(found),
            "recall": sum(found) / max(1, len(found)),
            "recall_by_edit_rate": {r: sum(h) / len(h) for r, h in sorted(by_rate.items())},
            "precision": sum(correct) / max(1, len(correct))}


def load_texts(corpus: Path) -> dict[str, str]:
    texts = {}
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            texts[record["doc_id"]] = record["text"]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--words", type=int, default=100, help="words per base passage")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tools", nargs="+", default=TOOLS, choices=TOOLS)
    parser.add_argument("--results", type=Path, default=RESULT)
    args = parser.parse_args()

    corpora, metas, texts = {}, {}, {}
    for rows in args.rows:
        corpora[rows], metas[rows] = write_corpus(rows, args.words)
        texts[rows] = load_texts(corpora[rows])
        for plant in metas[rows]["planted"]:
            plant["true_jaccard"] = jaccard(texts[rows][plant["copy"]],
                                            texts[rows][plant["original"]])
    cores = {tool: args.workers if tool in PARALLEL else 1 for tool in args.tools}
    runs = []
    jobs = [(rows, tool) for rows in args.rows for tool in args.tools]
    for round_index in range(args.rounds):
        shift = round_index % len(jobs)
        for rows, tool in jobs[shift:] + jobs[:shift]:
            result = run_tool(tool, corpora[rows], args.workers)
            removed = result.pop("removed")
            result["quality"] = quality(removed, metas[rows], texts[rows])
            runs.append({"round": round_index, "tool": tool, "rows": rows, **result})
            print(f"round {round_index} {tool:<10} {rows:>8} rows {result['wall_s']:7.1f} s "
                  f"recall {result['quality']['recall']:.3f} "
                  f"precision {result['quality']['precision']:.3f}", flush=True)
    table: dict[str, dict[str, dict]] = {}
    for rows in args.rows:
        for tool in args.tools:
            mine = [r for r in runs if r["tool"] == tool and r["rows"] == rows]
            wall = spread([r["wall_s"] for r in mine])
            table.setdefault(tool, {})[str(rows)] = {
                "rounds": len(mine), "wall_s": wall, "tool_s": spread([r["tool_s"] for r in mine]),
                "docs_per_s": rows / wall["median"],
                "docs_per_s_per_cpu": rows / wall["median"] / cores[tool],
                "peak_rss_bytes": spread([r["peak_rss_bytes"] for r in mine]),
                "driver_peak_rss_bytes": spread([r["root_peak_rss_bytes"] for r in mine]),
                "quality": mine[-1]["quality"]}
    print(f"{'tool':<10} {'rows':>8} {'wall s (min-max)':>20} {'docs/s/cpu':>10} "
          f"{'tree MB':>8} {'driver MB':>9} {'recall':>7} {'precision':>9}")
    for tool, sizes in table.items():
        for rows, row in sizes.items():
            wall = row["wall_s"]
            print(f"{tool:<10} {rows:>8} {wall['median']:>8.1f} ({wall['min']:.0f}-"
                  f"{wall['max']:.0f}) {row['docs_per_s_per_cpu']:>10.0f} "
                  f"{row['peak_rss_bytes']['median'] / 1e6:>8.0f} "
                  f"{row['driver_peak_rss_bytes']['median'] / 1e6:>9.0f} "
                  f"{row['quality']['recall']:>7.3f} {row['quality']['precision']:>9.3f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    write_json(args.results, {
        "commit": commit, "cpus": psutil.cpu_count(), "workers": args.workers,
        "cpus_used": cores, "threshold": THRESHOLD, "num_perm": 128,
        "load_average_after": load_average(),
        "corpora": {str(r): {k: v for k, v in m.items() if k != "planted"}
                    for r, m in metas.items()},
        "runs": runs, "table": table})


if __name__ == "__main__":
    main()
