"""mix: store a mixture plan for trainers, as a sample index (default) or as plain shards.

A global step over the domain datasets (`domain_uris`), so its cache key follows what they
hold, and the runner reuses the output while config, domains, code and storage settings are
unchanged. `Mix` writes one row per sample naming where it is (step, domain, epoch, loss
weight, shard, row): a few bytes a sample instead of a copy of every drawn row, read back by
`gristmill.loading.mixture_index.MixtureIndexStream`. `MixShards` writes the samples
themselves in training order, for trainers that want plain files any Arrow reader opens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pyarrow as pa

from gristmill.loading.mixture import INDEX_SCHEMA, MixtureConfig, MixtureStream
from gristmill.loading.mixture_index import index_summary
from gristmill.stages.base import StageInputError
from gristmill.stages.global_step import GlobalStep, StepSink
from gristmill.storage.fs import resolve
from gristmill.storage.reader import Dataset


def domain_uris(config: MixtureConfig) -> list[str]:
    """The step's inputs: the domains' datasets, in the config's order."""
    return [domain.uri for domain in config.domains]


class Mix(GlobalStep[MixtureConfig]):
    """The `MixtureStream` of one rank, every step in order, stored as a sample index."""

    name: ClassVar[str] = "mix"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        self._check_inputs(inputs)
        return INDEX_SCHEMA

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        stream = MixtureStream(self.config)
        summary = self._write(stream.iter_index(), sink)
        names = [d.name for d in self.config.domains]
        return {**summary, **index_summary(list(inputs), names, stream.columns)}

    def _write(self, batches: Iterator[pa.RecordBatch], sink: StepSink) -> dict[str, Any]:
        samples: Counter[str] = Counter()
        steps = 0
        task = sink.progress.add_task(self.name, total=self.config.total_steps)
        for batch in batches:
            sink.write(batch)
            samples.update(batch.column("domain").to_pylist())
            steps += 1
            sink.progress.advance(task)
        return {"steps": steps, "samples": sink.rows,
                "samples_per_domain": {d.name: samples[d.name] for d in self.config.domains}}

    def _check_inputs(self, inputs: Sequence[Dataset]) -> None:
        """The stream reads the config's domains; inputs that are not those would key the
        output to other data than it holds."""
        expected = [resolve(uri).uri() for uri in domain_uris(self.config)]
        if [dataset.uri for dataset in inputs] != expected:
            raise StageInputError(f"{self.name}: inputs must be the mixture's domains in "
                                  f"order ({expected}), got {[d.uri for d in inputs]}")


class MixShards(Mix):
    """The same samples written out as rows, in training order (a copy per draw)."""

    name: ClassVar[str] = "mix_shards"

    def output_schema(self, inputs: Sequence[Dataset]) -> pa.Schema:
        self._check_inputs(inputs)
        return MixtureStream(self.config).output_schema

    def run(self, inputs: Sequence[Dataset], sink: StepSink) -> dict[str, Any]:
        return self._write(iter(MixtureStream(self.config)), sink)
