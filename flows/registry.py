"""The flows `gristmill run <name>` and the deployments know, with their parameter models."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel

from gristmill.flows.build_datastore import BuildDatastoreParams, build_datastore_flow
from gristmill.flows.curate import CurateParams, curate_flow
from gristmill.flows.fuse_captions import FuseCaptionsParams, fuse_captions_flow
from gristmill.flows.ingest import IngestParams, ingest_flow
from gristmill.flows.mix import MixParams, mix_flow
from gristmill.flows.prune import PruneParams, prune_flow
from gristmill.flows.quality_filter import QualityFilterParams, quality_filter_flow
from gristmill.flows.synthesize_questions import (
    SynthesizeQuestionsParams,
    synthesize_questions_flow,
)
from gristmill.flows.text_filter import TextFilterParams, text_filter_flow


class FlowEntry(NamedTuple):
    flow: Any
    params: type[BaseModel]


FLOWS: dict[str, FlowEntry] = {
    "build_datastore": FlowEntry(build_datastore_flow, BuildDatastoreParams),
    "curate": FlowEntry(curate_flow, CurateParams),
    "quality_filter": FlowEntry(quality_filter_flow, QualityFilterParams),
    "fuse_captions": FlowEntry(fuse_captions_flow, FuseCaptionsParams),
    "ingest": FlowEntry(ingest_flow, IngestParams),
    "mix": FlowEntry(mix_flow, MixParams),
    "prune": FlowEntry(prune_flow, PruneParams),
    "synthesize_questions": FlowEntry(synthesize_questions_flow, SynthesizeQuestionsParams),
    "text_filter": FlowEntry(text_filter_flow, TextFilterParams),
}
