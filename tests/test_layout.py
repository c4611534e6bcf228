"""The package layout's import rules, read from the source of every module (nested imports
included), so a change that breaks one fails here instead of in a newcomer's head."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from gristmill.config import StorageConfig
from gristmill.storage.checksum import DEFAULT_CHECKSUM, HASHERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"gristmill": ROOT / "gristmill", "gristmill.flows": ROOT / "flows",
                "gristmill.stages": ROOT / "stages", "gristmill.scoring": ROOT / "scoring",
                "gristmill.storage": ROOT / "storage"}
HEAVY = ("ray", "prefect", "torch", "transformers", "sentence_transformers")
"""Runtimes scoring must not need (faiss's k-means is numbers in, numbers out: allowed)."""
DEMO_DATA_OK = ("gristmill.sources", "gristmill.sources.catalog", "gristmill.sources.cache",
                "gristmill.sources.errors")
"""What code may use of gristmill.sources: finding fetched files, never the fetchers."""


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if package == "gristmill" and parts[0] in {"flows", "stages", "scoring", "storage"}:
                continue
            found[name] = path
    return found


def imports_of(path: Path, nested: bool = True) -> set[str]:
    """Every module an import statement in the file names, at any depth or (nested=False)
    at module level only (`from p import m` counts as p.m when m is a module of ours)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if nested else tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return names


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def permitted(name: str, allowed: tuple[str, ...]) -> bool:
    """`allowed` holds module names, or `package.*` for a package and all it holds."""
    return any(name == a or (a.endswith(".*") and under(name, a[:-2])) for a in allowed)


MODULES = modules()


def broken(owner: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = (),
           nested: bool = True) -> list[str]:
    """`module -> import` for every import under `forbidden`, and not `allowed`, made by a
    module under `owner` (nested=False: at module level, what importing it costs)."""
    return sorted(f"{name} -> {imported}" for name, path in MODULES.items()
                  if under(name, owner) for imported in imports_of(path, nested)
                  if under(imported, *forbidden) and not permitted(imported, allowed))


@pytest.mark.parametrize(("owner", "forbidden", "allowed"), [
    ("gristmill.storage", ("gristmill",), ("gristmill.storage.*",)),
    ("gristmill.scoring", ("gristmill", *HEAVY), ("gristmill.scoring.*",)),
    ("gristmill.stages", ("gristmill.flows", "gristmill.sources"), DEMO_DATA_OK),
    ("gristmill.config", ("gristmill.storage",), ()),
    ("gristmill.loading", ("gristmill.stages", "gristmill.flows", "gristmill.retrieval"), ()),
    ("gristmill.inference", ("gristmill.stages", "gristmill.flows", "gristmill.retrieval"), ()),
])
def test_import_rules(owner: str, forbidden: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    assert broken(owner, forbidden, allowed) == []


def test_the_inference_layer_imports_without_ray_prefect_or_faiss() -> None:
    """It runs alone on a GPU machine that has none of them (vLLM's Ray path loads lazily)."""
    assert broken("gristmill.inference", ("ray", "prefect", "faiss"), nested=False) == []


def test_only_the_cli_and_flows_import_flows() -> None:
    offenders = sorted(f"{name} -> {imported}" for name, path in MODULES.items()
                       if not under(name, "gristmill.flows", "gristmill.cli")
                       for imported in imports_of(path) if under(imported, "gristmill.flows"))
    assert offenders == []


def test_the_rules_see_a_violation() -> None:
    """The checker itself: a module that breaks a rule is reported."""
    MODULES["gristmill.storage._probe"] = ROOT / "stages" / "prune_decisions.py"
    try:
        assert "gristmill.storage._probe -> gristmill.scoring.duplicates" in broken(
            "gristmill.storage", ("gristmill",), ("gristmill.storage.*",))
    finally:
        del MODULES["gristmill.storage._probe"]


def test_config_and_storage_agree_on_checksums() -> None:
    """config names the checksum algorithms without importing storage: the two lists must
    stay the same."""
    field = StorageConfig.model_fields["checksum"]
    assert set(get_args(field.annotation)) == set(HASHERS)
    assert field.default == DEFAULT_CHECKSUM


def test_the_layout_section_names_every_package() -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```")[1]
    for folder in ("gristmill/", "flows/", "stages/", "scoring/", "storage/", "loading/",
                   "retrieval/", "inference/", "sources/"):
        assert folder in layout, folder


def test_importing_the_inference_layer_loads_no_ray_prefect_or_faiss() -> None:
    """The same, followed through every module it imports, in a fresh interpreter."""
    probe = ("import sys, gristmill.inference, gristmill.inference.identity; "
             "print(sorted(m for m in ('ray', 'prefect', 'faiss') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"
