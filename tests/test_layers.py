"""The package's layers point one way: no import cycles (imports inside functions count), and no module imports a
layer above its own. See docs/ARCHITECTURE.md for the order and why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "distill"

# Lowest first. A module may import its own layer or a lower one, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "registry", "imports", "batch", "config", "files"),  # leaf types
    ("losses", "features", "augment"),  # pure functions
    ("pairing", "teachers", "models", "data", "compress", "diagnose"),  # building blocks
    ("methods",),
    ("engine",),
    ("report",),  # reads only run artifacts
    ("recipe", "run_dir", "pipeline", "tasks", "task_kind_base", "task_kind_lm", "task_kinds", "deploy", "tune", "tune_space", "seeds", "variants"),  # recipe orchestration
    ("api", "cli", "hf", "__main__", ""),  # surfaces; "" is the package's own __init__
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PKG).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every `distill` module that `name` imports anywhere in its file (top level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PKG)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(target)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"module {module} is in no layer; add its top-level name to LAYERS in this test")


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(_graph().items()) for d in sorted(deps) if _layer(d) > _layer(m)
    ]
    assert upward == []


def test_the_checker_sees_cycles_and_lazy_imports(tmp_path: Path) -> None:
    """The checks above can fail: a lazy import inside a function closes a cycle, and an upward import is caught."""
    graph = _graph()
    graph["distill.config"] = graph["distill.config"] | {"distill.methods"}  # what config did before the split
    assert any("distill.config" in c for c in _cycles(graph))
    pkg = tmp_path / "distill"
    pkg.mkdir()
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import a\n")
    names = {"distill.a", "distill.b"}
    lazy = {n: _imports(n, pkg / f"{n.split('.')[1]}.py", names) for n in names}
    assert lazy == {"distill.a": {"distill.b"}, "distill.b": {"distill.a"}}
    assert _cycles(lazy) == [["distill.a", "distill.b"]]


@pytest.mark.parametrize("module", ["distill.config", "distill.methods.base", "distill.data._registry"])
def test_registries_and_config_stay_low(module: str) -> None:
    assert all(_layer(d) <= _layer(module) for d in _graph()[module])
