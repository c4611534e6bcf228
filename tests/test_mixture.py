"""The mixture stream: frequencies follow the schedule, order is deterministic and resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import DataLoader

from gristmill.config import RuntimeConfig, StorageConfig
from gristmill.flows.plots import mixture_probabilities_png
from gristmill.loading.mixture import (
    INDEX_SCHEMA,
    DomainSpec,
    MixtureConfig,
    MixtureError,
    MixturePlan,
    MixtureStream,
)
from gristmill.loading.mixture_index import MixtureIndexStream
from gristmill.scoring.temperature import ConstantSchedule, CooldownSchedule, temperature_probs
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import StepResult, run_global_step
from gristmill.stages.mix import Mix, MixShards, domain_uris
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

SIZES = [2733, 162, 39, 1]


def write_domain(folder: Path, name: str, rows: int) -> DomainSpec:
    table = pa.table({"id": [f"{name}-{i}" for i in range(rows)],
                      "text": [f"{name} sample {i}" for i in range(rows)]})
    write_table(str(folder / name), table, max_rows=max(1, rows // 3))
    return DomainSpec(name=name, uri=str(folder / name))


@pytest.fixture
def domains(tmp_path: Path) -> list[DomainSpec]:
    return [write_domain(tmp_path, f"d{i}", n) for i, n in enumerate(SIZES)]


def frequencies(plan: MixturePlan, steps: range) -> np.ndarray:
    consumed = np.zeros(len(SIZES), dtype=np.int64)
    totals = np.zeros(len(SIZES))
    for step in range(steps.stop):
        _, counts = plan.draw(step, consumed)
        consumed += counts
        if step in steps:
            totals += counts
    return totals / totals.sum()


def test_draws_follow_each_phase_of_the_cooldown_within_one_percent(
        domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, schedule=CooldownSchedule(), total_steps=2000,
                           batch_size=100)
    plan = MixturePlan(config, SIZES, SIZES)
    high = frequencies(plan, range(0, 1000))
    low = frequencies(plan, range(1000, 2000))
    assert high == pytest.approx(temperature_probs(SIZES, 5.0), abs=0.01)
    assert low == pytest.approx(temperature_probs(SIZES, 1.0), abs=0.01)


def test_token_sizes_give_each_domain_its_share_of_tokens_not_of_rows(
        domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains[:2], schedule=ConstantSchedule(value=1.0),
                           size_by="n_tokens")
    plan = MixturePlan(config, sizes=[1000.0, 1000.0], rows=[100, 10])
    assert plan.probabilities(0) == pytest.approx([0.5, 0.5])
    assert plan.row_probabilities(0) == pytest.approx([10 / 11, 1 / 11])


def test_batches_are_tagged_and_weighted_in_scalarization_mode(
        domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, schedule=ConstantSchedule(value=5.0),
                           total_steps=3, batch_size=64, mode="scalarize")
    batches = list(MixtureStream(config))
    assert len(batches) == 3
    first = batches[0].to_pylist()
    assert all(row["id"].startswith(row["domain"]) for row in first)
    weights = {row["domain"]: row["loss_weight"] for row in first}
    assert weights["d0"] < 1 < weights.get("d1", 2)


def test_a_resumed_stream_yields_exactly_the_remaining_batches(
        domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=12, batch_size=16)
    full = [b.column("id").to_pylist() for b in MixtureStream(config)]
    stream = MixtureStream(config)
    iterator = iter(stream)
    for _ in range(5):
        next(iterator)
    state = stream.state_dict()
    resumed = MixtureStream(config)
    resumed.load_state_dict(state)
    assert [b.column("id").to_pylist() for b in resumed] == full[5:]


def test_batches_come_as_torch_tensors_when_asked(domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=2, batch_size=8, mode="scalarize")
    batch = next(iter(MixtureStream(config, format="torch")))
    assert batch["loss_weight"].dtype == torch.float32 and batch["step"].tolist() == [0] * 8
    assert isinstance(batch["id"], list) and len(batch["domain"]) == 8


def test_the_order_is_the_same_with_dataloader_workers(domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=6, batch_size=8)
    alone = [b.column("id").to_pylist() for b in MixtureStream(config)]
    loader = DataLoader(MixtureStream(config), batch_size=None, num_workers=2)
    assert [b.column("id").to_pylist() for b in loader] == alone


def test_ranks_share_a_step_without_overlap(domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains[:2], total_steps=4, batch_size=10)
    ranks = [list(MixtureStream(config, rank=r, world_size=2)) for r in range(2)]
    for step in range(4):
        ids = [set(ranks[r][step].column("id").to_pylist()) for r in range(2)]
        assert not ids[0] & ids[1]


def test_a_small_domain_repeats_and_counts_its_epochs(tmp_path: Path) -> None:
    specs = [write_domain(tmp_path, "big", 50), write_domain(tmp_path, "tiny", 3)]
    config = MixtureConfig(domains=specs, schedule=ConstantSchedule(value=100.0),
                           total_steps=10, batch_size=20)
    rows = [r for b in MixtureStream(config) for r in b.to_pylist() if r["domain"] == "tiny"]
    tiny = [r["id"] for r in rows]
    assert len(tiny) > 3
    for epoch_start in range(0, len(tiny) - len(tiny) % 3, 3):
        assert sorted(tiny[epoch_start:epoch_start + 3]) == ["tiny-0", "tiny-1", "tiny-2"]
    assert [r["domain_epoch"] for r in rows] == [i // 3 for i in range(len(rows))]


def test_a_stopping_domain_leaves_the_mixture_and_the_stream_ends(tmp_path: Path) -> None:
    specs = [write_domain(tmp_path, "a", 30), write_domain(tmp_path, "b", 5)]
    config = MixtureConfig(domains=specs, schedule=ConstantSchedule(value=50.0),
                           total_steps=1000, batch_size=4, on_exhausted="stop")
    ids = [i for b in MixtureStream(config) for i in b.column("id").to_pylist()]
    assert len(ids) == len(set(ids)) <= 35
    assert {i.split("-")[0] for i in ids} == {"a", "b"}


def test_bad_mixtures_are_clear_errors(tmp_path: Path, domains: list[DomainSpec]) -> None:
    with pytest.raises(ValueError, match="at least one domain"):
        MixtureConfig(domains=[])
    with pytest.raises(ValueError, match="each with its own name"):
        MixtureConfig(domains=[domains[0], domains[0]])
    empty = tmp_path / "empty"
    write_table(str(empty), pa.table({"id": pa.array([], pa.string()),
                                      "text": pa.array([], pa.string())}))
    config = MixtureConfig(domains=[domains[0], DomainSpec(name="empty", uri=str(empty))])
    with pytest.raises(MixtureError, match="no rows cannot be mixed"):
        MixtureStream(config)
    with pytest.raises(MixtureError, match="size_by column 'tokens'"):
        MixtureStream(MixtureConfig(domains=domains, size_by="tokens"))


def test_mix_step_stores_an_index_that_streams_the_plans_batches_and_is_reused(
        tmp_path: Path, domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=20, batch_size=16)
    out = str(tmp_path / "mixed")
    quiet = RuntimeConfig(progress=False, storage=StorageConfig(max_rows_per_shard=50))

    def mix(mixture: MixtureConfig) -> StepResult:
        return run_global_step(Mix(mixture), domain_uris(mixture), out, quiet)

    first = mix(config)
    index = Dataset.open(out, verify=True)
    assert index.schema.equals(INDEX_SCHEMA) and len(index.shards) > 1
    assert index.num_rows == first.stats.rows_out == 20 * 16
    assert index.to_table().column("step").to_pylist() == [s for s in range(20) for _ in range(16)]
    stored = [b.to_pylist() for b in MixtureIndexStream(out)]
    assert stored == [b.to_pylist() for b in MixtureStream(config)]
    drawn = first.summary["samples_per_domain"]
    assert list(drawn) == [d.name for d in domains] and sum(drawn.values()) == 20 * 16
    assert (first.summary["steps"], first.stats.rows_in) == (20, sum(SIZES))
    again = mix(config)
    assert again.reused and again.ref == first.ref and again.summary == first.summary
    assert not mix(config.model_copy(update={"seed": 1})).reused


def test_a_stored_index_resumes_splits_over_workers_and_refuses_a_changed_domain(
        tmp_path: Path, domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=8, batch_size=8)
    out = str(tmp_path / "mixed")
    run_global_step(Mix(config), domain_uris(config), out, RuntimeConfig(progress=False))
    whole = [b.column("id").to_pylist() for b in MixtureIndexStream(out)]
    stream = MixtureIndexStream(out)
    for _ in zip(range(3), stream, strict=False):
        pass
    state = stream.state_dict()
    resumed = MixtureIndexStream(out)
    resumed.load_state_dict(state)
    assert [b.column("id").to_pylist() for b in resumed] == whole[3:]
    loader = DataLoader(MixtureIndexStream(out), batch_size=None, num_workers=2)
    assert [b.column("id").to_pylist() for b in loader] == whole
    write_table(domains[1].uri, pa.table({"id": ["new"], "text": ["other rows"]}),
                overwrite=True)
    with pytest.raises(MixtureError, match=r"domain 'd1' .* run the mix step again"):
        MixtureIndexStream(out)


def test_mix_shards_writes_the_samples_themselves(tmp_path: Path,
                                                  domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=5, batch_size=8)
    out = str(tmp_path / "rows")
    result = run_global_step(MixShards(config), domain_uris(config), out,
                             RuntimeConfig(progress=False))
    table = Dataset.open(out, verify=True).to_table()
    assert table.to_pylist() == [r for b in MixtureStream(config) for r in b.to_pylist()]
    assert result.summary["samples"] == 40
    with pytest.raises(MixtureError, match="not a stored mixture index"):
        MixtureIndexStream(out)


def test_mix_step_refuses_inputs_that_are_not_its_domains(tmp_path: Path,
                                                         domains: list[DomainSpec]) -> None:
    config = MixtureConfig(domains=domains, total_steps=2)
    with pytest.raises(StageInputError, match="inputs must be the mixture's domains"):
        run_global_step(Mix(config), domain_uris(config)[::-1], str(tmp_path / "mixed"),
                        RuntimeConfig(progress=False))


def test_the_probability_plot_is_a_png(domains: list[DomainSpec]) -> None:
    stream = MixtureStream(MixtureConfig(domains=domains, total_steps=100))
    png = mixture_probabilities_png(stream.plan, [d.name for d in domains])
    assert png.startswith(b"\x89PNG")
