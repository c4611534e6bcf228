"""Exact and MinHash dedup as phases of Ray tasks over hash-partitioned files.

The decisions are scoring/duplicates.text_duplicates' (the tests hold the two equal), made
where the rows are, so the driver never holds a key, a signature or an id:

1. rows, per shard: ids routed by id, to find an id on two rows; for exact dedup,
   (content key, id, place) routed by key.
2. exact-groups, per partition: a repeated id is refused; in each group of equal keys the
   smallest id stays, and a removed row is routed to its own shard and to its survivor's.
3. bands, per shard: the LSH band keys of the rows exact dedup kept, each with the row's
   signature, routed by band key.
4. edges, per band partition: rows sharing a band key are candidates, and a pair whose
   estimated Jaccard reaches the threshold is an edge (a bucket of more than 64 rows
   compares each row, in id order, with the bucket's leaders, as in memory).
5. components: large-star and small-star rounds (Kiveris et al., 2014) until every
   component is a star around its smallest id, its leader.
6. leaders, signatures, verify: each member's leader's signature travels to the leader's
   shard and back, to score the pair; a member that reaches the threshold is removed as the
   leader's near duplicate. The others are grouped again among themselves (the edges with
   both ends undecided, filtered in two phases) until no edge is left, as
   scoring/near_dup.leader_verified_groups does in memory.
7. decisions: per shard, the near duplicates found and the exact copies; an exact copy whose
   survivor was itself a near duplicate follows it to the final survivor.

A row's place is its (shard, row) packed in an int64, so anything about a row can be sent
to its shard without a lookup. Work files go under `work` (routed_files.py): a rerun skips
the phases that finished.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from gristmill.config import RuntimeConfig
from gristmill.scoring.duplicates import RepeatedIdError
from gristmill.scoring.near_dup import (
    PAIR_BUCKET_LIMIT,
    band_keys,
    bucket_pairs,
    jaccard,
    leader_pairs,
    lsh_params,
)
from gristmill.stages.base import StageInputError
from gristmill.stages.routed_files import RoutedFiles, partition_of, run_phase
from gristmill.storage.fs import Location
from gristmill.storage.manifest import ShardInfo
from gristmill.storage.reader import Dataset, read_shard_file

ROW_BITS = np.int64(32)
ROW_MASK = np.int64(0xFFFFFFFF)
EMPTY_SLOT_32 = np.uint64(0xFFFFFFFF)
"""An empty text's signature slots (uint64 max) stored in 32 bits: signatures are 32-bit
minima, so a real slot reaches this value only if every one of its hashes does."""

DECISION_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("reason", pa.string()),
    pa.field("duplicate_of", pa.string()), pa.field("score", pa.float64()),
    pa.field("matched", pa.string()),
])
_KEYS = pa.schema([("key", pa.string()), ("id", pa.string()), ("place", pa.int64())])
_IDS = pa.schema([("id", pa.string())])
_REMOVED = pa.schema([("id", pa.string()), ("place", pa.int64()),
                      ("survivor", pa.string()), ("survivor_place", pa.int64())])
_EDGES = pa.schema([("u", pa.string()), ("u_place", pa.int64()),
                    ("v", pa.string()), ("v_place", pa.int64())])
_LEADERS = pa.schema([("id", pa.string()), ("place", pa.int64()),
                      ("leader", pa.string()), ("leader_place", pa.int64())])


def _bands_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("band", pa.int32()), ("bucket", pa.uint64()), ("id", pa.string()),
                      ("place", pa.int64()), ("signature", pa.binary(4 * num_perm))])


_NEAR = pa.schema([("id", pa.string()), ("leader", pa.string()), ("score", pa.float64())])


def _scored_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("place", pa.int64()), ("leader", pa.string()),
                      ("leader_signature", pa.binary(4 * num_perm))])


class ShardRef(NamedTuple):
    """One shard of the input, as a task reads it."""

    index: int
    location: Location
    info: ShardInfo
    schema: pa.Schema
    verify: bool

    def read(self, columns: list[str]) -> pa.Table:
        return read_shard_file(self.location, self.info, self.schema, verify=self.verify,
                               columns=columns)


class Columns(NamedTuple):
    id: str
    key: str
    signature: str


def _places(shard: int, rows: int) -> np.ndarray:
    return (np.int64(shard) << ROW_BITS) | np.arange(rows, dtype=np.int64)


def _shard_of(places: pa.ChunkedArray | np.ndarray) -> np.ndarray:
    return np.asarray(places, np.int64) >> ROW_BITS


def _row_of(places: pa.ChunkedArray | np.ndarray) -> np.ndarray:
    return np.asarray(places, np.int64) & ROW_MASK


def signatures_of(column: pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """A list<uint64> or fixed_size_list<uint64> column as (rows, num_perm) uint64."""
    flat = pa.chunked_array([c.flatten() for c in column.chunks], pa.uint64())
    values = flat.to_numpy()
    if len(values) != len(column) * num_perm:
        raise StageInputError(f"MinHash signatures must hold {num_perm} values per row; "
                              f"{len(column)} rows hold {len(values)}")
    return values.reshape(len(column), num_perm)


def _packed(signatures: np.ndarray) -> pa.FixedSizeBinaryArray:
    """Signatures as 4 bytes a slot: equal slots stay equal, which is all Jaccard needs."""
    narrow = np.minimum(signatures, EMPTY_SLOT_32).astype(np.uint32)
    width = 4 * signatures.shape[1]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(narrow),
                                                [None, pa.py_buffer(narrow.tobytes())])


def _unpacked(column: pa.ChunkedArray | pa.Array, num_perm: int) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, num_perm), np.uint32)
    data = array.buffers()[1]
    values = np.frombuffer(data, np.uint32, count=(array.offset + len(array)) * num_perm)
    return values[array.offset * num_perm:].reshape(len(array), num_perm)


def _strings(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_pylist(), dtype=object)


def _route_rows(shard: ShardRef, columns: Columns, keys: RoutedFiles | None,
                ids: RoutedFiles, partitions: int) -> dict[str, Any]:
    """Ids by id (to find one on two rows) and, for exact dedup, content keys by key."""
    names = [columns.id] + ([columns.key] if keys is not None else [])
    table = shard.read(names)
    if any(table.column(name).null_count for name in names):
        raise StageInputError(f"shard {shard.info.file}: null values in {names}; every row "
                              "needs them to be deduplicated")
    row_ids = table.column(0).to_pylist()
    task = f"s{shard.index:06d}"
    ids.write(pa.table({"id": row_ids}), partition_of(row_ids, partitions), task)
    if keys is not None:
        row_keys = table.column(1).to_pylist()
        keys.write(pa.table({"key": row_keys, "id": row_ids,
                             "place": _places(shard.index, len(row_ids))}),
                   partition_of(row_keys, partitions), task)
    return {"rows": len(row_ids)}


def _exact_groups(partition: int, ids: RoutedFiles, keys: RoutedFiles | None,
                  by_row: RoutedFiles, by_survivor: RoutedFiles) -> dict[str, Any]:
    """A repeated id, if any; and in each group of equal keys, the smallest id stays."""
    seen = np.sort(_strings(ids.read(partition).column("id")))
    repeated = seen[1:][seen[1:] == seen[:-1]]
    summary = {"removed": 0, "repeated_id": str(repeated[0]) if len(repeated) else ""}
    if keys is None:
        return summary
    table = keys.read(partition).sort_by([("key", "ascending"), ("id", "ascending")])
    key = _strings(table.column("key"))
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    leads = np.flatnonzero(first)[np.cumsum(first) - 1]
    removed = pa.array(np.flatnonzero(~first), pa.int64())
    survivors = pa.array(leads[~first], pa.int64())
    rows = pa.table({"id": table.column("id").take(removed),
                     "place": table.column("place").take(removed),
                     "survivor": table.column("id").take(survivors),
                     "survivor_place": table.column("place").take(survivors)})
    task = f"p{partition:06d}"
    by_row.write(rows, _shard_of(rows.column("place")), task)
    by_survivor.write(rows, _shard_of(rows.column("survivor_place")), task)
    return {**summary, "removed": rows.num_rows}


def _bands(shard: ShardRef, columns: Columns, num_perm: int, exact_removed: RoutedFiles | None,
           bands: RoutedFiles, band_rows: tuple[int, int], partitions: int) -> dict[str, Any]:
    table = shard.read([columns.id, columns.signature])
    alive = np.ones(table.num_rows, bool)
    if exact_removed is not None:
        alive[_row_of(exact_removed.read(shard.index).column("place"))] = False
    signatures = signatures_of(table.column(1), num_perm)[alive]
    kept = pa.array(np.flatnonzero(alive), pa.int64())
    row_ids = table.column(0).take(kept)
    places = pa.array(_places(shard.index, table.num_rows)[alive])
    packed = _packed(signatures)
    count, rows = band_rows
    parts = []
    for band in range(count):
        buckets = band_keys(signatures[:, band * rows:(band + 1) * rows])
        parts.append(pa.table({"band": pa.array(np.full(len(buckets), band, np.int32)),
                               "bucket": buckets, "id": row_ids, "place": places,
                               "signature": packed}, schema=bands.schema))
    routed = pa.concat_tables(parts) if parts else bands.schema.empty_table()
    buckets = routed.column("bucket").to_numpy()
    bands.write(routed, (buckets % np.uint64(partitions)).astype(np.int64),
                f"s{shard.index:06d}")
    return {"rows": int(alive.sum())}


def _both_ways(u: pa.Array, u_place: pa.Array, v: pa.Array, v_place: pa.Array) -> pa.Table:
    return pa.table({"u": pa.concat_arrays([u, v]),
                     "u_place": pa.concat_arrays([u_place, v_place]),
                     "v": pa.concat_arrays([v, u]),
                     "v_place": pa.concat_arrays([v_place, u_place])}, schema=_EDGES)


def _edges(partition: int, bands: RoutedFiles, num_perm: int, threshold: float,
           edges: RoutedFiles, partitions: int) -> dict[str, Any]:
    table = bands.read(partition).sort_by(
        [("band", "ascending"), ("bucket", "ascending"), ("id", "ascending")])
    band, bucket = table.column("band").to_numpy(), table.column("bucket").to_numpy()
    starts = np.flatnonzero(np.r_[True, (band[1:] != band[:-1]) | (bucket[1:] != bucket[:-1])])
    ends = np.r_[starts[1:], len(band)].astype(np.int64)
    runs = [np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
            if e - s > 1]
    signatures = _unpacked(table.column("signature"), num_perm)
    candidates = bucket_pairs([r for r in runs if len(r) <= PAIR_BUCKET_LIMIT])
    similar = jaccard(signatures[candidates[:, 0]], signatures[candidates[:, 1]]) >= threshold
    found = [candidates[similar] if len(candidates) else candidates]
    found += [leader_pairs(r, signatures, threshold) for r in runs if len(r) > PAIR_BUCKET_LIMIT]
    pairs = np.unique(np.concatenate(found), axis=0)
    left, right = pa.array(pairs[:, 0], pa.int64()), pa.array(pairs[:, 1], pa.int64())
    ids, places = table.column("id"), table.column("place")
    routed = _both_ways(ids.take(left).combine_chunks(), places.take(left).combine_chunks(),
                        ids.take(right).combine_chunks(), places.take(right).combine_chunks())
    edges.write(routed, partition_of(routed.column("u").to_pylist(), partitions),
                f"p{partition:06d}")
    return {"candidates": len(candidates), "edges": len(pairs)}


def _star(partition: int, kind: str, edges_in: RoutedFiles, edges_out: RoutedFiles,
          partitions: int) -> dict[str, Any]:
    """One large-star or small-star round over the nodes of one partition. Also counts the
    nodes that break the final shape (a node with a smaller neighbour and more than one
    neighbour): none anywhere means every component is a star around its smallest id."""
    table = edges_in.read(partition).sort_by([("u", "ascending"), ("v", "ascending")])
    us, vs = table.column("u").to_pylist(), table.column("v").to_pylist()
    place = dict(zip(us, table.column("u_place").to_pylist(), strict=True))
    place.update(zip(vs, table.column("v_place").to_pylist(), strict=True))
    out: set[tuple[str, str]] = set()
    broken = 0
    start = 0
    while start < len(us):
        node = us[start]
        end = start
        while end < len(us) and us[end] == node:
            end += 1
        neighbours = sorted(set(vs[start:end]))
        smaller = [v for v in neighbours if v < node]
        broken += bool(smaller) and len(neighbours) > 1
        if kind == "large":
            low = min(neighbours[0], node)
            out.update((v, low) for v in neighbours if v > node)
        elif smaller:
            out.update((v, smaller[0]) for v in [*smaller, node] if v != smaller[0])
        start = end
    pairs = sorted(out)
    a = pa.array([p[0] for p in pairs], pa.string())
    b = pa.array([p[1] for p in pairs], pa.string())
    routed = _both_ways(a, pa.array([place[p[0]] for p in pairs], pa.int64()),
                        b, pa.array([place[p[1]] for p in pairs], pa.int64()))
    edges_out.write(routed, partition_of(routed.column("u").to_pylist(), partitions),
                    f"p{partition:06d}")
    return {"broken": broken, "edges": len(pairs)}


def _leaders(partition: int, stars: RoutedFiles, leaders: RoutedFiles) -> dict[str, Any]:
    """In a star forest a node with a smaller neighbour is a leaf, and that neighbour its
    component's smallest id (an edge may be listed more than once: it counts once)."""
    table = stars.read(partition)
    u, v = _strings(table.column("u")), _strings(table.column("v"))
    leaf = np.flatnonzero(v < u)
    _, first = np.unique(u[leaf], return_index=True)
    leaf = pa.array(leaf[first], pa.int64())
    rows = pa.table({"id": table.column("u").take(leaf),
                     "place": table.column("u_place").take(leaf),
                     "leader": table.column("v").take(leaf),
                     "leader_place": table.column("v_place").take(leaf)})
    leaders.write(rows, _shard_of(rows.column("leader_place")), f"p{partition:06d}")
    return {"removed": rows.num_rows}


def _leader_signatures(shard: ShardRef, columns: Columns, num_perm: int, leaders: RoutedFiles,
                       scored: RoutedFiles) -> dict[str, Any]:
    found = leaders.read(shard.index)
    if found.num_rows == 0:
        return {"rows": 0}
    signatures = signatures_of(shard.read([columns.signature]).column(0), num_perm)
    leader_rows = _row_of(found.column("leader_place"))
    rows = pa.table({"id": found.column("id"), "place": found.column("place"),
                     "leader": found.column("leader"),
                     "leader_signature": _packed(signatures[leader_rows])})
    scored.write(rows, _shard_of(rows.column("place")), f"s{shard.index:06d}")
    return {"rows": rows.num_rows}


def _verify(shard: ShardRef, columns: Columns, num_perm: int, threshold: float,
            scored: RoutedFiles, near: RoutedFiles, undecided: RoutedFiles, task: str,
            partitions: int) -> dict[str, Any]:
    """Score this shard's members against their leaders: a match is a near duplicate, the
    rest are undecided (routed by id, to filter the next round's edges)."""
    found = scored.read(shard.index)
    if found.num_rows == 0:
        return {"joined": 0, "undecided": 0}
    signatures = signatures_of(shard.read([columns.signature]).column(0), num_perm)
    own = np.minimum(signatures[_row_of(found.column("place"))], EMPTY_SLOT_32).astype(np.uint32)
    scores = np.atleast_1d(jaccard(own, _unpacked(found.column("leader_signature"), num_perm)))
    joined = scores >= threshold
    rows = pa.table({"id": found.column("id"), "leader": found.column("leader"),
                     "score": scores})
    matches = rows.filter(pa.array(joined))
    near.write(matches, np.full(matches.num_rows, shard.index, np.int64), task)
    rest = rows.filter(pa.array(~joined)).select(["id"])
    undecided.write(rest, partition_of(rest.column("id").to_pylist(), partitions), task)
    return {"joined": matches.num_rows, "undecided": rest.num_rows}


def _open_from(partition: int, edges: RoutedFiles, undecided: RoutedFiles,
               out: RoutedFiles, task: str, partitions: int, both_ways: bool) -> dict[str, Any]:
    """Keep the edges (routed by u) whose u is undecided. First pass: send each reversed, so
    the second pass, over the partition of the other end, checks that end (and sends the
    edges it keeps both ways, ready for the next round's components)."""
    table = edges.read(partition)
    open_ids = set(undecided.read(partition).column("id").to_pylist())
    keep = pa.array([u in open_ids for u in table.column("u").to_pylist()], pa.bool_())
    kept = table.filter(keep)
    u, u_place = kept.column("u").combine_chunks(), kept.column("u_place").combine_chunks()
    v, v_place = kept.column("v").combine_chunks(), kept.column("v_place").combine_chunks()
    if both_ways:
        routed = _both_ways(u, u_place, v, v_place)
    else:
        routed = pa.table({"u": v, "u_place": v_place, "v": u, "v_place": u_place},
                          schema=_EDGES)
    out.write(routed, partition_of(routed.column("u").to_pylist(), partitions), task)
    return {"edges": kept.num_rows}


def _decisions(shard: ShardRef, near: RoutedFiles | None, exact_by_survivor: RoutedFiles | None,
               decisions: RoutedFiles) -> dict[str, Any]:
    parts = []
    leader_of: dict[str, str] = {}
    if near is not None:
        found = near.read(shard.index)
        leader_of = dict(zip(found.column("id").to_pylist(), found.column("leader").to_pylist(),
                             strict=True))
        parts.append(pa.table({
            "id": found.column("id"), "reason": ["near_duplicate"] * found.num_rows,
            "duplicate_of": found.column("leader"), "score": found.column("score"),
            "matched": pa.nulls(found.num_rows, pa.string())}, schema=DECISION_SCHEMA))
    if exact_by_survivor is not None:
        copies = exact_by_survivor.read(shard.index)
        survivors = copies.column("survivor").to_pylist()
        parts.append(pa.table({
            "id": copies.column("id"), "reason": ["exact_duplicate"] * copies.num_rows,
            "duplicate_of": [leader_of.get(s, s) for s in survivors],
            "score": np.ones(copies.num_rows),
            "matched": [s if s in leader_of else None for s in survivors]},
            schema=DECISION_SCHEMA))
    table = pa.concat_tables(parts) if parts else DECISION_SCHEMA.empty_table()
    decisions.write(table, np.full(table.num_rows, shard.index, np.int64), "decisions")
    return {"rows": table.num_rows}


def _components(work: Location, edges: RoutedFiles, partitions: int, runtime: RuntimeConfig,
                prefix: str) -> RoutedFiles:
    """Alternate large-star and small-star rounds until the edges form stars."""
    current = edges
    for round_ in range(10_000):
        for kind in ("large", "small"):
            name = f"{prefix}stars-{round_:04d}-{kind}"
            following = RoutedFiles(work.join(name), _EDGES)
            summaries = run_phase(work, name, _star, [
                (p, kind, current, following, partitions) for p in range(partitions)], runtime)
            if kind == "large" and sum(s["broken"] for s in summaries) == 0:
                return current
            current = following
    raise RuntimeError("connected components did not converge")


def _near_duplicates(shards: list[ShardRef], columns: Columns, edges: RoutedFiles,
                     num_perm: int, threshold: float, partitions: int, work: Location,
                     runtime: RuntimeConfig) -> RoutedFiles:
    """Leader-verified groups over the verified edges (module doc, step 6): every removed
    row's (id, leader, score), routed to the row's shard."""
    near = RoutedFiles(work.join("near"), _NEAR)
    for round_ in range(10_000):
        prefix = f"r{round_:03d}-"
        stars = _components(work, edges, partitions, runtime, prefix)
        leaders = RoutedFiles(work.join(f"{prefix}leaders"), _LEADERS)
        found = run_phase(work, f"{prefix}leaders", _leaders,
                          [(p, stars, leaders) for p in range(partitions)], runtime)
        if sum(f["removed"] for f in found) == 0:
            return near
        scored = RoutedFiles(work.join(f"{prefix}scored"), _scored_schema(num_perm))
        run_phase(work, f"{prefix}leader-signatures", _leader_signatures,
                  [(s, columns, num_perm, leaders, scored) for s in shards], runtime)
        undecided = RoutedFiles(work.join(f"{prefix}undecided"), _IDS)
        verified = run_phase(work, f"{prefix}verify", _verify, [
            (s, columns, num_perm, threshold, scored, near, undecided,
             f"{prefix}s{s.index:06d}", partitions) for s in shards], runtime)
        if sum(v["undecided"] for v in verified) == 0:
            return near
        half = RoutedFiles(work.join(f"{prefix}open-half"), _EDGES)
        run_phase(work, f"{prefix}open-half", _open_from, [
            (p, edges, undecided, half, f"p{p:06d}", partitions, False)
            for p in range(partitions)],
            runtime)
        edges = RoutedFiles(work.join(f"{prefix}open"), _EDGES)
        run_phase(work, f"{prefix}open", _open_from, [
            (p, half, undecided, edges, f"p{p:06d}", partitions, True)
            for p in range(partitions)],
            runtime)
    raise RuntimeError("leader verification did not converge")


def shard_refs(dataset: Dataset, runtime: RuntimeConfig) -> list[ShardRef]:
    return [ShardRef(i, dataset.shard_location(i), info, dataset.schema,
                     runtime.storage.verify_inputs) for i, info in enumerate(dataset.shards)]


def text_duplicates_on_workers(
    dataset: Dataset, *, columns: Columns, exact: bool, minhash: bool, threshold: float,
    num_perm: int, partitions: int, work: Location, runtime: RuntimeConfig,
) -> RoutedFiles:
    """Every removed row's decision (DECISION_SCHEMA), routed to the shard that holds the
    row: partition i of the result is shard i's (see the module docstring). The files stay
    under `work` for the caller to read."""
    shards = shard_refs(dataset, runtime)
    ids = RoutedFiles(work.join("ids"), _IDS)
    keys = RoutedFiles(work.join("keys"), _KEYS) if exact else None
    exact_removed = RoutedFiles(work.join("exact-by-row"), _REMOVED) if exact else None
    exact_by_survivor = RoutedFiles(work.join("exact-by-survivor"), _REMOVED) if exact else None
    near = None
    run_phase(work, "rows", _route_rows, [(s, columns, keys, ids, partitions) for s in shards],
              runtime)
    groups = run_phase(work, "exact-groups", _exact_groups, [
        (p, ids, keys, exact_removed, exact_by_survivor) for p in range(partitions)], runtime)
    repeated = next((g["repeated_id"] for g in groups if g["repeated_id"]), "")
    if repeated:
        raise RepeatedIdError(f"id {repeated!r} is on more than one row: dedup needs an id "
                              "per row")
    if minhash:
        band_rows = lsh_params(threshold, num_perm)
        bands = RoutedFiles(work.join("bands"), _bands_schema(num_perm))
        run_phase(work, "bands", _bands, [(s, columns, num_perm, exact_removed, bands, band_rows,
                                           partitions) for s in shards], runtime)
        edges = RoutedFiles(work.join("edges"), _EDGES)
        run_phase(work, "edges", _edges, [(p, bands, num_perm, threshold, edges, partitions)
                                          for p in range(partitions)], runtime)
        near = _near_duplicates(shards, columns, edges, num_perm, threshold, partitions, work,
                                runtime)
    decisions = RoutedFiles(work.join("decisions"), DECISION_SCHEMA)
    run_phase(work, "decisions", _decisions,
              [(s, near, exact_by_survivor, decisions) for s in shards], runtime)
    return decisions
