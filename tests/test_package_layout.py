"""The package's layers: no module imports a layer above its own (DESIGN.md, "Layers").

Every import is counted, including those inside functions: a lazy import upward is still a cycle waiting to
happen. Within a layer, modules may import each other, except between the sibling packages listed in
``INDEPENDENT`` (point-cloud sampling and profiling statistics know nothing of each other)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a module belongs to the first prefix that matches its dotted name (longest prefix wins)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("cellrep_core", "cellrep_core.errors", "cellrep_core.paths", "cellrep_core.progress",
              "cellrep_core.faults", "cellrep_core.atomic")),
    ("data and storage", ("cellrep_core.data", "cellrep_core.store")),
    ("sampling and statistics", ("cellrep_core.pointclouds", "cellrep_core.profiling")),
    ("models", ("cellrep_core.models",)),
    ("metrics", ("cellrep_core.metrics",)),
    # the analyses read their codes and cells from the stores through the pipeline's lookups
    ("services and analyses", ("cellrep_core.analysis", "cellrep_core.ingest", "cellrep_core.datasets",
                               "cellrep_core.structures", "cellrep_core.registry", "cellrep_core.pipeline",
                               "cellrep_core.statcell", "cellrep_core.sqlmodels", "cellrep_core.faultcheck",
                               "cellrep_core.gpucheck", "cellrep_core.cli")),
    ("Dagster definitions", ("assets",)),
    ("runtime", ("orchestration",)),
]
INDEPENDENT = [("cellrep_core.pointclouds", "cellrep_core.profiling")]
PACKAGES = ("cellrep_core", "assets", "orchestration")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    p = ROOT.joinpath(*dotted.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Every first-party module ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")]
            out.update(subs or [mod])
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _layer(dotted: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (dotted == p or dotted.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{dotted} is in no layer: add it to LAYERS"
    return rank


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_has_a_layer():
    for path in _sources():
        _layer(_module_name(path))


def test_no_import_runs_upward_between_layers():
    upward = []
    for path in _sources():
        me = _module_name(path)
        for target in sorted(_imports(path)):
            if _layer(target) > _layer(me):
                upward.append(f"{me} ({LAYERS[_layer(me)][0]}) imports {target} ({LAYERS[_layer(target)][0]})")
            for a, b in INDEPENDENT:
                for x, y in ((a, b), (b, a)):
                    if me.startswith(x + ".") and (target == y or target.startswith(y + ".")):
                        upward.append(f"{me} imports {target}: {x} and {y} are independent")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the checker itself can fail: a data module importing the pipeline is reported
    fake = ROOT / "cellrep_core" / "data" / "cells.py"
    src = ast.parse("from cellrep_core import pipeline\nfrom cellrep_core.models.train import train_model\n")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: ast.unparse(src))
    found = _imports(fake)
    assert found == {"cellrep_core.pipeline", "cellrep_core.models.train"}
    assert all(_layer(t) > _layer(_module_name(fake)) for t in found)


def _tested_modules() -> set[str]:
    """Modules a test imports (``from pkg import mod`` counts as ``pkg.mod``) or names (a ``-m`` entry point)."""
    out = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == Path(__file__).name:  # its layer table names every package: not a test of them
            continue
        out |= _imports(path)
        text = path.read_text()
        out |= {_module_name(p) for p in _sources() if f'"{_module_name(p)}"' in text}
    return out


def test_every_module_has_a_test():
    """Every module of the package is imported (or started as a module) by at least one test file: the suite is
    organised by capability, not file by file, and this keeps a new module from arriving untested."""
    tested = _tested_modules()
    untested = [m for m in (_module_name(p) for p in _sources() if p.name != "__init__.py") if m not in tested]
    assert not untested, "modules no test imports: " + ", ".join(untested)


MAX_FUNCTION_LINES = 90  # docstring included; a longer function is broken along its steps


def test_no_function_runs_past_the_limit():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {n} lines")
    assert not long, "\n".join(long)
