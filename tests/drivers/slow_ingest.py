"""Run the real ingest over one file cut into small byte ranges, slowed per batch, so a test
can kill it part-way through the file.

Usage: python slow_ingest.py INPUT OUTPUT SECONDS_PER_BATCH UNIT_BYTES
"""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from gristmill.config import RuntimeConfig
from gristmill.runtime import RayConfig
from gristmill.stages.base import Resources, Split
from gristmill.stages.ingest import Ingest, IngestConfig
from gristmill.stages.raw_inputs import RawFilesInput
from gristmill.stages.runner import run_stage


class SlowIngest(Ingest):
    """The real ingest; the pause only widens the window in which a kill lands."""

    pause_seconds = 0.0

    def process(self, batch: pa.Table) -> Split:
        time.sleep(self.pause_seconds)
        return super().process(batch)


if __name__ == "__main__":
    SlowIngest.pause_seconds = float(sys.argv[3])
    source = RawFilesInput.from_args([sys.argv[1]], unit_bytes=int(sys.argv[4]))
    config = IngestConfig(resources=Resources(concurrency=1))
    runtime = RuntimeConfig(ray=RayConfig(num_cpus=1), progress=False)
    result = run_stage(SlowIngest, config, source, sys.argv[2], runtime)
    print(result.model_dump_json())
