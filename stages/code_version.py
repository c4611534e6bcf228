"""The code version a stage's output depends on: its module and every gristmill module it
reaches, so an edit to a shared helper (a scorer, the runner) invalidates reuse too.

A module counts by its syntax tree, less docstrings and other bare strings, not by its text:
editing a comment or a docstring changes nothing a stage computes, so it keeps the version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import sys
from types import ModuleType

import gristmill

PACKAGE = "gristmill"


def _owner(value: object) -> ModuleType | None:
    if isinstance(value, ModuleType):
        return value
    name = getattr(value, "__module__", None)
    return sys.modules.get(name) if isinstance(name, str) else None


def reachable_modules(*roots: ModuleType) -> list[ModuleType]:
    """The roots plus every gristmill module their globals refer to, transitively."""
    found: dict[str, ModuleType] = {}
    stack = list(roots)
    while stack:
        module = stack.pop()
        if module.__name__ in found:
            continue
        found[module.__name__] = module
        for value in list(vars(module).values()):
            owner = _owner(value)
            if owner is not None and owner.__name__.startswith(f"{PACKAGE}.") \
                    and owner.__name__ not in found:
                stack.append(owner)
    return [found[name] for name in sorted(found)]


def _source(module: ModuleType) -> str:
    try:
        return inspect.getsource(module)
    except (OSError, TypeError):
        return f"<no source for {module.__name__}>"


class _DropDocstrings(ast.NodeTransformer):
    """Removes statements that are only a string (docstrings, attribute docs): they run as
    no-ops, so they cannot change an output."""

    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        value = node.value
        return None if isinstance(value, ast.Constant) and isinstance(value.value, str) \
            else node


@functools.lru_cache(maxsize=1024)
def code_fingerprint(source: str) -> str:
    """What the source computes: its AST without docstrings, comments or line numbers
    (`ast.dump` leaves positions out); text that does not parse counts as it is."""
    try:
        tree = _DropDocstrings().visit(ast.parse(source))
    except SyntaxError:
        return source
    return ast.dump(tree)


def code_version(*roots: ModuleType) -> str:
    """Package version plus a hash of the code of every module the roots reach."""
    digest = hashlib.sha256()
    for module in reachable_modules(*roots):
        digest.update(module.__name__.encode())
        digest.update(code_fingerprint(_source(module)).encode())
    return f"{gristmill.__version__}+{digest.hexdigest()[:12]}"
