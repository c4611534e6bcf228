"""Size a datastore before building it: vectors, shards, bytes, nodes and GPU-hours.

Arithmetic only, from the corpus size and a few measured rates. MassiveDS's check:
1e12 tokens in 256-token passages is ~3.9e9 vectors, ~12 TB as 768-d float32 Flat and
~280 GB as IVF-PQ with 64-byte codes (+8-byte ids).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from gristmill.config import FrozenModel
from gristmill.retrieval.datastore import IndexSpec


class PlanConfig(FrozenModel):
    """The corpus, the embedder and the machines; rates are measured, see their notes."""

    tokens: float = Field(default=1e12, gt=0)
    tokens_per_passage: int = Field(default=256, ge=1)
    dim: int = Field(default=768, ge=1, description="Contriever-msmarco: 768")
    text_bytes_per_token: float = Field(
        default=4.5, gt=0, description="Stored passage text + metadata per token: English "
                                       "is ~4 bytes of UTF-8 per BPE token, plus ids")
    passages_per_gpu_second: float = Field(
        default=9000.0, gt=0, description="Embedding rate per GPU: BERT-base shape, 256-token "
                                          "passages, bf16, measured on one H100")
    vectors_per_shard: int = Field(default=50_000_000, ge=1)
    node_ram_bytes: float = Field(default=512e9, gt=0, description="RAM per search node")
    ram_fill: float = Field(default=0.7, gt=0, le=1, description="Share of RAM for indexes")
    indexes: list[IndexSpec] = Field(default_factory=lambda: [
        IndexSpec(kind="flat"), IndexSpec(kind="ivfpq"),
        IndexSpec(kind="ivfpq", pq_m=64)])


class IndexPlan(BaseModel):
    index: str
    bytes_per_vector: int
    index_bytes: float
    nodes: int
    ram_per_node_bytes: float
    disk_per_node_bytes: float


class Plan(BaseModel):
    tokens: float
    vectors: int
    shards: int
    text_bytes: float
    training_vectors: int
    embedding_gpu_hours: float
    indexes: list[IndexPlan]


def make_plan(config: PlanConfig) -> Plan:
    vectors = math.ceil(config.tokens / config.tokens_per_passage)
    shards = max(1, math.ceil(vectors / config.vectors_per_shard))
    text = config.tokens * config.text_bytes_per_token
    plans = []
    for spec in config.indexes:
        per_vector = spec.bytes_per_vector(config.dim)
        total = per_vector * vectors
        nodes = max(1, math.ceil(total / (config.node_ram_bytes * config.ram_fill)))
        nodes = min(nodes, shards)
        plans.append(IndexPlan(
            index=spec.factory(), bytes_per_vector=per_vector, index_bytes=total, nodes=nodes,
            ram_per_node_bytes=total / nodes, disk_per_node_bytes=(total + text) / nodes))
    training = max((s.train_size for s in config.indexes if s.kind != "flat"), default=0)
    return Plan(tokens=config.tokens, vectors=vectors, shards=shards, text_bytes=text,
                training_vectors=min(training, vectors),
                embedding_gpu_hours=vectors / config.passages_per_gpu_second / 3600,
                indexes=plans)


def human_bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:,.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} PB"
