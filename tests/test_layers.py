"""The package's folders read as the pipeline, and imports only run down it.

Layers, lowest first: the pure-numpy core, ``io``, ``models``, ``outputs`` (schemas and part
files, which the stages write into), ``stages`` (what Ray ships to workers), ``audit``,
``config`` (the frozen JobConfig), ``driver`` (planning, progress, interrupts: the driver's
side of a run), and the entry points (``pipeline``, ``cli``, the package ``__init__``). A module
may import its own layer and the layers below it, never one above; nothing imports the package
``__init__`` (which imports the entry points).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segbatch"
CORE = {"_version", "errors", "masks", "metrics", "categories", "quality", "sample"}
LAYERS = ["core", "io", "models", "outputs", "stages", "audit", "config", "driver", "entry"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "entry"  # the package __init__
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] == "config":
        return "config"
    return "core" if parts[1] in CORE else "entry"


def _imports(path: Path) -> list[str]:
    """Every segbatch module ``path`` imports, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "segbatch"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segbatch":
            found.append(node.module)
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_run_down_the_layers(path: Path):
    me = _module_name(path)
    for imported in _imports(path):
        assert imported != "segbatch" or me == "segbatch", (
            f"{me} imports the package __init__ (which imports the entry points)"
        )
        assert LAYERS.index(_layer(imported)) <= LAYERS.index(_layer(me)), (
            f"{me} ({_layer(me)}) imports {imported} ({_layer(imported)}), a layer above it"
        )


def test_every_module_is_in_a_known_place():
    for path in MODULES:
        parts = _module_name(path).split(".")
        assert len(parts) <= 3, f"{path}: the package is at most one folder deep"
        if len(parts) == 2:
            assert parts[1] in CORE | set(LAYERS) | {"config", "pipeline", "executor", "cli"}, (
                f"{path}: where does it belong?"
            )
