"""Exact and MinHash dedup on the Ray workers decide exactly as the in-memory functions."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.config import RuntimeConfig
from gristmill.scoring.duplicates import RepeatedIdError, text_duplicates
from gristmill.scoring.near_dup import MinHasher, connected_min_labels, exact_key
from gristmill.sources.catalog import resolve as resolve_source
from gristmill.stages.base import DatasetInput
from gristmill.stages.lsh_dedup import (
    _EDGES,
    Columns,
    _components,
    text_duplicates_on_workers,
)
from gristmill.stages.near_dup_keys import NearDupKeys, NearDupKeysConfig
from gristmill.stages.routed_files import RoutedFiles, partition_of
from gristmill.stages.runner import run_stage
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

pytestmark = pytest.mark.usefixtures("ray_local")
HASHER = MinHasher(num_perm=128, ngram=5)
COLUMNS = Columns(id="id", key="exact_key", signature="minhash")
RUNTIME = RuntimeConfig(progress=False)


def _edited(text: str, rate: float, rng: random.Random) -> str:
    """Each word dropped or replaced with probability `rate` (a near copy)."""
    out = []
    for word in text.split():
        roll = rng.random()
        if roll < rate / 2:
            continue
        out.append("qux" if roll < rate else word)
    return " ".join(out)


def _words_replaced(text: str, count: int, rng: random.Random) -> str:
    """`count` words at random places replaced by words no other edit uses."""
    words = text.split()
    for place in rng.sample(range(len(words)), count):
        words[place] = f"edit{rng.getrandbits(40):x}"
    return " ".join(words)


def planted_corpus(seed: int = 7) -> list[str]:
    """Real Brown passages with exact copies (case changed), near copies at several edit
    rates, chains of copies of copies (loose ones, and tight ones whose neighbours are alike
    but whose ends are not), exact copies of near copies, and two empty texts, shuffled: a
    fixed corpus for each seed."""
    path = resolve_source("brown").files[0]
    base = [" ".join(json.loads(line)["text"].split()[:120])
            for line in path.read_text().splitlines()[:160]]
    rng = random.Random(seed)
    texts = list(base)
    for text in base[:30]:
        texts.append(text.upper())
    for rate in (0.02, 0.05, 0.1, 0.2):
        texts.extend(_edited(t, rate, rng) for t in rng.sample(base, 15))
    for text in base[100:110]:
        link = text
        for _ in range(4):
            link = _edited(link, 0.06, rng)
            texts.append(link)
    for text in base[140:145]:
        link = text
        for _ in range(7):
            link = _words_replaced(link, 2, rng)
            texts.append(link)
    for text in base[120:135]:
        near = _edited(text, 0.02, rng)
        texts += [near, near.upper()]
    texts += ["", ""]
    rng.shuffle(texts)
    return texts


def write_corpus(folder: Path, texts: list[str], ids: list[str] | None = None) -> Dataset:
    ids = ids or [hashlib.blake2b(f"{i}\n{t}".encode(), digest_size=16).hexdigest()
                  for i, t in enumerate(texts)]
    signatures = HASHER.signatures(texts)
    table = pa.table({
        "id": ids, "exact_key": [exact_key(t) for t in texts],
        "minhash": pa.FixedSizeListArray.from_arrays(pa.array(signatures.ravel(), pa.uint64()),
                                                     HASHER.num_perm)})
    write_table(str(folder / "input"), table, max_rows=37)
    return Dataset.open(str(folder / "input"))


def on_workers(dataset: Dataset, work: Path, *, exact: bool = True, minhash: bool = True,
               partitions: int = 3) -> dict[str, tuple]:
    decisions = text_duplicates_on_workers(
        dataset, columns=COLUMNS, exact=exact, minhash=minhash, threshold=0.8,
        num_perm=HASHER.num_perm, partitions=partitions, work=resolve(str(work)),
        runtime=RUNTIME)
    rows = pa.concat_tables([decisions.read(shard) for shard in range(len(dataset.shards))
                             ]).to_pylist()
    assert len({r["id"] for r in rows}) == len(rows), "one decision per removed row"
    return {r["id"]: (r["reason"], r["duplicate_of"], round(r["score"], 9), r["matched"] or "")
            for r in rows}


def in_memory(dataset: Dataset, *, exact: bool = True, minhash: bool = True) -> dict[str, tuple]:
    table = dataset.to_table()
    signatures = table.column("minhash").combine_chunks().flatten().to_numpy()
    found = text_duplicates(table.column("id").to_pylist(),
                            table.column("exact_key").to_pylist() if exact else None,
                            signatures.reshape(table.num_rows, -1) if minhash else None, 0.8)
    return {i: (d.reason, d.duplicate_of, round(d.score, 9), d.matched)
            for i, d in found.items()}


@pytest.mark.parametrize(("exact", "minhash"), [(True, True), (True, False), (False, True)])
def test_workers_decide_exactly_as_in_memory(tmp_path: Path, exact: bool, minhash: bool) -> None:
    dataset = write_corpus(tmp_path, planted_corpus())
    assert len(dataset.shards) > 5
    expected = in_memory(dataset, exact=exact, minhash=minhash)
    found = on_workers(dataset, tmp_path / "work", exact=exact, minhash=minhash)
    reasons = {reason for reason, *_ in found.values()}
    assert reasons == {r for r, on in [("exact_duplicate", exact), ("near_duplicate", minhash)]
                       if on}
    assert found == expected
    if minhash:
        assert (tmp_path / "work" / "_phases" / "r001-verify.json").exists(), \
            "a chain's far end was grouped again in a second round"
        assert all(score >= 0.8 for reason, _, score, _ in found.values()
                   if reason == "near_duplicate")


def test_partition_count_does_not_change_a_decision(tmp_path: Path) -> None:
    dataset = write_corpus(tmp_path, planted_corpus(seed=11))
    one = on_workers(dataset, tmp_path / "one", partitions=1)
    assert one == on_workers(dataset, tmp_path / "five", partitions=5)
    assert any(matched for *_, matched in one.values()), "an exact copy followed a near copy"


def test_a_finished_phase_is_not_run_again(tmp_path: Path) -> None:
    dataset = write_corpus(tmp_path, planted_corpus())
    first = on_workers(dataset, tmp_path / "work")
    edges = sorted((tmp_path / "work" / "edges").rglob("*.arrow"))
    written = [path.stat().st_mtime_ns for path in edges]
    (tmp_path / "work" / "_phases" / "decisions.json").unlink()
    assert on_workers(dataset, tmp_path / "work") == first
    assert edges and [path.stat().st_mtime_ns for path in edges] == written, \
        "edges were not computed again"


def test_an_id_on_two_rows_is_refused(tmp_path: Path) -> None:
    texts = planted_corpus()[:50]
    ids = [f"row-{i}" for i in range(49)] + ["row-3"]
    dataset = write_corpus(tmp_path, texts, ids)
    with pytest.raises(RepeatedIdError, match="row-3"):
        on_workers(dataset, tmp_path / "work")


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(nodes=st.integers(2, 40), data=st.data())
def test_star_rounds_find_every_component_and_its_smallest_id(
        tmp_path_factory: pytest.TempPathFactory, nodes: int, data: st.DataObject) -> None:
    pairs = data.draw(st.lists(st.tuples(st.integers(0, nodes - 1), st.integers(0, nodes - 1))
                               .filter(lambda p: p[0] != p[1]), max_size=3 * nodes))
    names = data.draw(st.permutations([f"n{i:03d}" for i in range(nodes)]))
    work = resolve(str(tmp_path_factory.mktemp("stars")))
    edges = RoutedFiles(work.join("edges"), _EDGES)
    both = [(names[a], names[b]) for a, b in pairs] + [(names[b], names[a]) for a, b in pairs]
    table = pa.table({"u": [u for u, _ in both], "u_place": [int(u[1:]) for u, _ in both],
                      "v": [v for _, v in both], "v_place": [int(v[1:]) for _, v in both]},
                     schema=_EDGES)
    edges.write(table, partition_of(table.column("u").to_pylist(), 3), "input")
    stars = _components(work, edges, 3, RUNTIME, "")
    leader: dict[str, str] = {}
    for partition in range(3):
        for row in stars.read(partition).to_pylist():
            if row["v"] < row["u"]:
                assert leader.setdefault(row["u"], row["v"]) == row["v"], "one leader each"
    order = sorted(names)
    labels = connected_min_labels(nodes, np.array(
        [(order.index(names[a]), order.index(names[b])) for a, b in pairs],
        np.int64).reshape(-1, 2))
    expected = {order[i]: order[label] for i, label in enumerate(labels) if label != i}
    assert leader == expected


def test_near_dup_keys_then_workers_drop_the_planted_copies(tmp_path: Path) -> None:
    """The near_dup_keys stage gives the dedup steps their columns: exact copies (case and
    punctuation changed) and one-word edits are dropped, each pointing at its original."""
    path = resolve_source("brown").files[0]
    originals = [" ".join(json.loads(line)["text"].split()[:120])
                 for line in path.read_text().splitlines()[:40]]
    texts = [*originals, originals[3].upper(), originals[7] + " zebra"]
    ids = [f"r{i:02d}" for i in range(len(texts))]
    write_table(str(tmp_path / "rows"), pa.table({"id": ids, "text": texts}), max_rows=9)
    keyed = run_stage(NearDupKeys, NearDupKeysConfig(), DatasetInput(str(tmp_path / "rows")),
                      str(tmp_path / "keyed"), RUNTIME)
    assert keyed.stats.rows_out == len(texts) and keyed.stats.rows_rejected == 0
    dataset = Dataset.open(keyed.output)
    found = on_workers(dataset, tmp_path / "work")
    assert {row: (reason, kept) for row, (reason, kept, *_) in found.items()} == {
        "r40": ("exact_duplicate", "r03"), "r41": ("near_duplicate", "r07")}
