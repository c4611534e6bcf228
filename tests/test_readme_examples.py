"""The README's complete examples of a filter stage and a global step, run as written."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pytest
import ray.cloudpickle

from gristmill.config import RuntimeConfig
from gristmill.stages.base import DatasetInput
from gristmill.stages.global_step import run_global_step
from gristmill.stages.runner import run_stage
from gristmill.storage.reader import Dataset
from gristmill.storage.writer import write_table

README = Path(__file__).resolve().parent.parent / "README.md"
QUIET = RuntimeConfig(progress=False)


def readme_module(first_line: str) -> Iterator[ModuleType]:
    """The README's python block that starts with `first_line`, as an importable module
    (pickled by value, so Ray workers need no file)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    source = next(b for b in blocks if b.startswith(first_line))
    module = ModuleType("gristmill.readme_" + Path(first_line.split()[-1]).stem)
    sys.modules[module.__name__] = module
    exec(compile(source, str(README), "exec"), module.__dict__)
    ray.cloudpickle.register_pickle_by_value(module)
    yield module
    ray.cloudpickle.unregister_pickle_by_value(module)
    del sys.modules[module.__name__]


@pytest.fixture
def shout() -> Iterator[ModuleType]:
    yield from readme_module("# stages/shout_filter.py")


@pytest.fixture
def count() -> Iterator[ModuleType]:
    yield from readme_module("# stages/count_values.py")


@pytest.fixture
def texts(tmp_path: Path) -> str:
    uri = str(tmp_path / "texts")
    write_table(uri, pa.table({
        "id": ["a", "b", "c", "d"], "source": ["mail", "web", "web", "mail"],
        "text": ["BUY NOW AND SAVE BIG", "a calm sentence", "OK", "THIS IS FINE, really"]}))
    return uri


@pytest.mark.usefixtures("ray_local")
def test_the_readme_filter_stage_runs_as_written(shout: ModuleType, texts: str,
                                                 tmp_path: Path) -> None:
    result = run_stage(shout.ShoutFilter, shout.ShoutConfig(), DatasetInput(texts),
                       str(tmp_path / "quiet"), QUIET)
    assert (result.stats.rows_in, result.stats.rows_out, result.stats.rows_rejected) == (4, 3, 1)
    rejected = Dataset.open(result.output).rejected.to_table()
    assert rejected.column("id").to_pylist() == ["a"]
    assert rejected.column("reject_reason").to_pylist() == ["shouting"]


def test_the_readme_global_step_runs_as_written(count: ModuleType, texts: str,
                                               tmp_path: Path) -> None:
    result = run_global_step(count.CountValues(count.CountConfig()), [texts],
                             str(tmp_path / "counts"), QUIET)
    assert Dataset.open(result.output).to_table().to_pylist() == [
        {"value": "mail", "rows": 2}, {"value": "web", "rows": 2}]
    assert result.summary == {"values": 2}
