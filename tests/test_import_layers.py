"""The package's import graph: stages keep their order, and nothing imports in a cycle.

Every ``import`` / ``from ... import`` of a ravl module in ``src/ravl`` counts, at module top or
inside a function alike (a lazy import still ties the two modules together). Stages, lowest
first: utilities -> data -> models -> zeroshot -> discovery -> training -> mitigation ->
evaluation -> benchmarks -> report -> cli. A module may import its own stage and the stages
below it, never above; inside a package, submodules import each other directly, never through
the package's ``__init__`` (which only re-exports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Stage of each top-level part of the package (a name not listed is an error: give it a stage).
STAGES = {
    "ravl": 0, "ravl._version": 0, "ravl.exceptions": 0, "ravl.utils": 0,
    "ravl.data": 1,
    "ravl.models": 2,
    "ravl.zeroshot": 3, "ravl.retrieval": 3,
    "ravl.discovery": 4,
    "ravl.training": 5,
    "ravl.mitigation": 6,
    "ravl.evaluation": 7,
    "ravl.benchmarks": 8,
    "ravl.report": 9,
    "ravl.cli": 10, "ravl.__main__": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in (SRC / "ravl").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _stage(module: str) -> int:
    parts = module.split(".")
    for n in range(min(len(parts), 2), 0, -1):
        key = ".".join(parts[:n])
        if key in STAGES:
            return STAGES[key]
    raise AssertionError(f"{module} has no stage in tests/test_import_layers.py STAGES; add it")


def _package(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> list[tuple[str, int]]:
    """``(imported ravl module, line)`` for every import statement of ``module``, at any depth.

    ``from X import y`` counts as importing X (its ``__init__`` runs) and also X.y when y is a
    submodule.
    """
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(module).split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
        else:
            continue
        for name in names:
            if name == "ravl" or name.startswith("ravl."):
                while name not in MODULES and "." in name:
                    name = name.rpartition(".")[0]
                if name != module:
                    out.append((name, node.lineno))
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_stage():
    for m in MODULES:
        _stage(m)


def test_stages_only_import_downwards():
    bad = [f"{m}:{line} imports {t} (stage {_stage(t)} > {_stage(m)})"
           for m, edges in GRAPH.items() for t, line in edges
           if _stage(t) > _stage(m) and t != "ravl"]
    assert not bad, "imports against the stage order:\n" + "\n".join(bad)


def test_submodules_do_not_import_their_own_package_init():
    bad = []
    for m, edges in GRAPH.items():
        for t, line in edges:
            own = MODULES[t].name == "__init__.py" and m.startswith(t + ".") and t != "ravl"
            if own:
                bad.append(f"{m}:{line} imports its package {t}; import the defining submodule instead")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Tarjan's strongly connected components over all imports (top-level and lazy)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH[v]:
            if w == "ravl":  # the root only holds the lazy public API (importlib strings)
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(monkeypatch):
    """The checks above can fail: plant an upward edge and a cycle in a copy of the graph."""
    planted = {m: list(e) for m, e in GRAPH.items()}
    planted["ravl.data.dataset"].append(("ravl.mitigation.api", 1))
    bad = [m for m, edges in planted.items() for t, _ in edges if _stage(t) > _stage(m) and t != "ravl"]
    assert "ravl.data.dataset" in bad
    monkeypatch.setitem(GRAPH, "ravl.models.checkpoint", GRAPH["ravl.models.checkpoint"] + [("ravl.models.base", 1)])
    with pytest.raises(AssertionError, match="import cycles"):
        test_no_import_cycles()


def test_import_ravl_imports_no_torch():
    code = "import sys, ravl; ravl.__version__; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
