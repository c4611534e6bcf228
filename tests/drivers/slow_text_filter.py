"""Run the real text filter, slowed per batch, so a test can kill it part-way.

Usage: python slow_text_filter.py INPUT OUTPUT SECONDS_PER_BATCH
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from gristmill.config import RuntimeConfig
from gristmill.runtime import RayConfig
from gristmill.stages.base import DatasetInput, Resources, Split
from gristmill.stages.runner import run_stage
from gristmill.stages.text_filter import TextFilter, TextFilterConfig


class SlowTextFilter(TextFilter):
    """The real filter; the pause only widens the window in which a kill lands."""

    pause_seconds = 0.0

    def process(self, batch: pa.Table) -> Split:
        time.sleep(self.pause_seconds)
        return super().process(batch)


if __name__ == "__main__":
    SlowTextFilter.pause_seconds = float(sys.argv[3])
    config = TextFilterConfig(resources=Resources(concurrency=1))
    runtime = RuntimeConfig(ray=RayConfig(num_cpus=1), progress=False)
    result = run_stage(SlowTextFilter, config, DatasetInput(sys.argv[1]), sys.argv[2], runtime)
    print(result.model_dump_json())
