"""The architecture as a test: hpo's modules import only downwards, and never in a loop.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: an import moved
into a function to dodge a loop is still a loop. A package (``hpo.job``, ``hpo.spec``,
``hpo.worker``, ``hpo.cli``) is one node; its own modules may import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "hpo"

LAYERS = [
    # The base: names and helpers everything may use.
    {"hpo", "hpo.errors", "hpo.outage", "hpo.records"},
    # What a study is made of: its spec, Optuna's private API, where the code and data came from.
    {"hpo.spec", "hpo._optuna", "hpo.provenance"},
    # The job: a trial's params -> a fine-tuned model. It sees no database, process or GPU id.
    {"hpo.job"},
    # The database: storage, the artifact store beside it, studies in it (their first trials,
    # when they have converged, the promotion pruner's pauses and promotions).
    {"hpo.storage", "hpo.storage_url", "hpo.artifacts", "hpo.study", "hpo.warm_start",
     "hpo.convergence", "hpo.promotion"},
    # What runs trials and what reads a trial's files.
    {"hpo.worker", "hpo.weights", "hpo.preflight", "hpo.figures"},
    # Machines and processes; what people read and take away.
    {"hpo.launch", "hpo.slots", "hpo.cluster", "hpo.summary", "hpo.numbers", "hpo.export",
     "hpo.report", "hpo.retrain", "hpo.dashboard"},
    # The command line.
    {"hpo.cli", "hpo.__main__"},
]
LAYER = {node: i for i, layer in enumerate(LAYERS) for node in layer}


def _node(module: str) -> str:
    """The graph node of a module: ``hpo.job.fit`` -> ``hpo.job``; ``hpo.errors`` stays."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(module: str, root: Path) -> bool:
    where = root.joinpath(*module.split("."))
    return where.with_suffix(".py").exists() or where.is_dir()


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every hpo module ``path`` imports, anywhere in the file."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from hpo import _optuna`` imports the module hpo._optuna.
            found.update(f"{module}.{a.name}" for a in node.names
                         if _is_module(f"{module}.{a.name}", root))
    return {m for m in found if m == "hpo" or m.startswith("hpo.")}


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _node(_module_name(path))
        edges.setdefault(src, set())
        for target in _imports(path):
            dst = _node(target)
            if dst != src:
                edges[src].add(dst)
    return edges


def test_every_module_has_a_layer():
    missing = sorted(set(_graph()) - set(LAYER))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
                    for src, dsts in _graph().items() for dst in dsts
                    if dst != "hpo" and LAYER.get(dst, -1) > LAYER.get(src, -1))
    assert not upward, "\n".join(upward)


def test_no_import_loop():
    edges = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    loops: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt == "hpo":
                continue  # the package's __init__ holds only the version
            if state.get(nxt) == 1:
                loops.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_the_job_sees_no_database_process_or_study():
    """STYLE.md: a job never sees a process, a GPU id or a database."""
    assert not _graph()["hpo.job"] & {"hpo.storage", "hpo.study", "hpo.worker", "hpo.launch",
                                      "hpo._optuna", "hpo.artifacts"}


def test_the_layer_test_sees_imports_inside_functions(tmp_path):
    """The parser counts what a function imports: the loops of old hid there."""
    (tmp_path / "hpo").mkdir()
    f = tmp_path / "hpo" / "x.py"
    (tmp_path / "hpo" / "worker.py").write_text("", encoding="utf-8")
    f.write_text("def f():\n    from hpo.retrain import RETRAIN_ATTR\n"
                 "    from hpo import worker\n", encoding="utf-8")
    assert _imports(f, tmp_path) == {"hpo.retrain", "hpo", "hpo.worker"}
