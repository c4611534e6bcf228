"""The flows `gristmill run <name>` and the deployments know, with their parameter models."""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel

from gristmill.flows.curate import CurateParams, curate_flow
from gristmill.flows.fuse_captions import FuseCaptionsParams, fuse_captions_flow
from gristmill.flows.ingest import IngestParams, ingest_flow
from gristmill.flows.mix import MixParams, mix_flow
from gristmill.flows.text_filter import TextFilterParams, text_filter_flow


class FlowEntry(NamedTuple):
    flow: Any
    params: type[BaseModel]


FLOWS: dict[str, FlowEntry] = {
    "curate": FlowEntry(curate_flow, CurateParams),
    "fuse_captions": FlowEntry(fuse_captions_flow, FuseCaptionsParams),
    "ingest": FlowEntry(ingest_flow, IngestParams),
    "mix": FlowEntry(mix_flow, MixParams),
    "text_filter": FlowEntry(text_filter_flow, TextFilterParams),
}
