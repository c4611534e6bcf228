"""Flow: corpus datasets -> passages -> vectors -> a sharded FAISS datastore, with a report.

Each corpus dataset is chunked and embedded by the ordinary stage runner (cached, resumable),
then the datastore is built or extended: inputs it already holds are skipped, new ones
become new shards against the stored training.
"""

from __future__ import annotations

import posixpath
import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from gristmill.config import FrozenModel, RuntimeConfig
from gristmill.flows.report import cell
from gristmill.flows.stage_task import run_stage_task
from gristmill.inference.embed import resolve_embedder_folder
from gristmill.retrieval.build import BuildReport, Parallel, build_datastore_from
from gristmill.retrieval.datastore import IndexSpec
from gristmill.retrieval.plan import human_bytes
from gristmill.retrieval.postprocess import Hit, SearchOptions
from gristmill.retrieval.retriever import Retriever
from gristmill.runtime import ensure_ray
from gristmill.stages.base import DatasetInput
from gristmill.stages.chunk import Chunk, ChunkConfig
from gristmill.stages.embed import Embed, EmbedConfig
from gristmill.stages.runner import StageResult


class BuildDatastoreParams(FrozenModel):
    inputs: list[str] = Field(default=[".gristmill/demo/text_filter"],
                              description="Corpus datasets (ingested, with id and text)")
    output: str = Field(default=".gristmill/datastore", description="Datastore folder")
    work_dir: str = Field(default=".gristmill/datastore_work",
                          description="Where passages and their vectors are kept")
    chunk: ChunkConfig = ChunkConfig()
    embed: EmbedConfig = EmbedConfig()
    index: IndexSpec = IndexSpec()
    parallel: Parallel = Field(default="ray", description="Shard builds on Ray tasks or threads")
    sample_query: str = "What did the jury say about the election?"
    runtime: RuntimeConfig = RuntimeConfig()


@task(name="build-index", retries=1, retry_delay_seconds=5)
def build_index_task(params: BuildDatastoreParams, embedded: list[str]) -> BuildReport:
    if params.parallel == "ray":
        ensure_ray(params.runtime.ray)
    embedder = {**params.embed.embedder.model_dump(mode="json"),
                "resolved": str(resolve_embedder_folder(params.embed.embedder))}
    return build_datastore_from(params.output, embedded, params.index, embedder=embedder,
                                vector_column=params.embed.vector_column,
                                backend=params.parallel)


def datastore_report(report: BuildReport, stages: list[StageResult], query: str,
                     hits: list[Hit], query_seconds: float) -> str:
    manifest = report.manifest
    phases = {f"{r.stage} ({posixpath.basename(r.output)})": r.wall_seconds for r in stages}
    phases.update({f"datastore {k}": v for k, v in report.seconds.items()})
    lines = [
        "# build_datastore", "",
        f"Datastore `{report.uri}`: {manifest.total_vectors:,} vectors in "
        f"{len(manifest.shards)} shards, index `{manifest.index.factory()}`, dim "
        f"{manifest.dim}, index files {human_bytes(manifest.index_bytes)}. This run added "
        f"{report.passages:,} passages from {len(report.added_inputs)} inputs "
        f"(skipped {len(report.skipped_inputs)} already held).", "",
        "| phase | seconds | passages/s |", "|---|---:|---:|",
        *(f"| {name} | {sec:.1f} | {report.passages / sec if sec > 0 else 0:,.0f} |"
          for name, sec in phases.items()), "",
        "| shard | vectors | index bytes |", "|---:|---:|---:|",
        *(f"| {s.shard_id} | {s.vectors:,} | {human_bytes(s.index_bytes)} |"
          for s in manifest.shards), "",
        f"Sample query ({query_seconds * 1000:.0f} ms): **{cell(query)}**", "",
        "| rank | score | shard | passage |", "|---:|---:|---:|---|",
        *(f"| {i} | {h.score:.4f} | {h.shard_id} | {cell(h.text)} |"
          for i, h in enumerate(hits, 1)),
    ]
    return "\n".join(lines) + "\n"


@flow(name="build_datastore", log_prints=True)
def build_datastore_flow(params: BuildDatastoreParams) -> list[StageResult]:
    stages: list[StageResult] = []
    embedded = []
    for n, uri in enumerate(params.inputs):
        name = f"{n:02d}-{posixpath.basename(uri.rstrip('/'))}"
        chunks = run_stage_task(Chunk, params.chunk, DatasetInput(uri),
                                  posixpath.join(params.work_dir, "chunk", name), params.runtime)
        vectors = run_stage_task(Embed, params.embed, DatasetInput(chunks.output),
                                   posixpath.join(params.work_dir, "embed", name),
                                   params.runtime)
        stages += [chunks, vectors]
        embedded.append(vectors.output)
    report = build_index_task(params, embedded)
    retriever = Retriever.open(params.output)
    started = time.perf_counter()
    hits = retriever.search([params.sample_query], SearchOptions())[0]
    query_seconds = time.perf_counter() - started
    retriever.close()
    create_markdown_artifact(datastore_report(report, stages, params.sample_query, hits,
                                              query_seconds),
                             key="build-datastore-report",
                             description="datastore: counts, sizes, build time, sample query")
    print(f"datastore {report.uri}: {report.manifest.total_vectors:,} vectors in "
          f"{len(report.manifest.shards)} shards (added {report.passages:,})")
    return stages
