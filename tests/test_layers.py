"""The architecture as a test: hpo's modules import only downwards, and never in a loop.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: an import moved
into a function to dodge a loop is still a loop. A package (``hpo.spec``, ``hpo.store``,
``hpo.job``, ``hpo.search``, ``hpo.run``, ``hpo.results``, ``hpo.cli``) is one node of the layers; between its own modules
``test_no_import_loop_between_modules`` looks for loops module by module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "hpo"

LAYERS = [
    # The base: names and helpers everything may use.
    {"hpo", "hpo.errors", "hpo.records", "hpo.session", "hpo.integrations"},
    # What a study is made of, and where it lives: the spec; the store (storage, its URL, the
    # artifact store, database outages, Optuna's private API); where code and data came from.
    {"hpo.spec", "hpo.store", "hpo.provenance"},
    # The job: a trial's params -> a fine-tuned model. It sees no database, process or GPU id.
    {"hpo.job"},
    # The search: studies in the store, their first trials, convergence, how trials go on.
    {"hpo.search"},
    # The run: workers, the launcher, clusters, the checks before a study is written.
    {"hpo.run"},
    # The results: what people read and take away (numbers, figures, report, export, retrain).
    {"hpo.results"},
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
            # ``from hpo.store import _optuna`` imports the module hpo.store._optuna.
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


def _module_graph(package: Path = PACKAGE, root: Path = ROOT) -> dict[str, set[str]]:
    """Every module of ``package`` -> the modules of it that it imports, module by module.

    A package's ``__init__`` importing its own submodules (to re-export their names) is left
    out: importing a submodule runs its package's ``__init__`` first whatever it imports, so
    ``from hpo.cli import _read`` in ``hpo.cli._table`` is no loop through ``hpo.cli``.
    """
    edges: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        src = _module_name(path, root)
        reexported = f"{src}." if path.name == "__init__.py" else None
        edges[src] = {
            dst for dst in _imports(path, root)
            if dst != src and not (reexported and dst.startswith(reexported))
        }
    return edges


def _loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """The sets of modules that import each other, each in a loop (a strongly connected
    component of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(components)


def _path_through(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest loop from ``start`` back to it inside ``members``."""
    paths = {start: [start]}
    queue = [start]
    for node in queue:
        for nxt in sorted(edges.get(node, set()) & members):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"{start} is in no loop")


def test_no_import_loop_between_modules():
    """No loop between modules, inside a package too (``hpo.job.state`` <-> ``loaders``)."""
    edges = _module_graph()
    loops = [
        f"{', '.join(loop)} (e.g. {' -> '.join(_path_through(loop[0], set(loop), edges))})"
        for loop in _loops(edges)
    ]
    assert not loops, "import loops between modules: " + "; ".join(loops)


def test_the_module_loop_test_sees_a_loop_inside_a_package(tmp_path):
    """Two modules of one package that import each other, one inside a function and one
    under ``TYPE_CHECKING``, are a loop; the package re-exporting them is not."""
    package = tmp_path / "hpo" / "job"
    package.mkdir(parents=True)
    (tmp_path / "hpo" / "__init__.py").write_text("", encoding="utf-8")
    (package / "__init__.py").write_text(
        "from hpo.job.a import A\nfrom hpo.job.b import B\n", encoding="utf-8"
    )
    (package / "a.py").write_text(
        "from hpo.job import b\n\nA = 1\n\ndef f():\n    from hpo.job.c import C\n",
        encoding="utf-8",
    )
    (package / "b.py").write_text("B = 2\n", encoding="utf-8")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from hpo.job.a import A\n",
        encoding="utf-8",
    )
    edges = _module_graph(tmp_path / "hpo", tmp_path)
    assert edges["hpo.job"] == set()  # its re-exports
    assert _loops(edges) == [["hpo.job.a", "hpo.job.c"]]
    assert _path_through("hpo.job.c", {"hpo.job.a", "hpo.job.c"}, edges) == [
        "hpo.job.c", "hpo.job.a", "hpo.job.c"
    ]


def test_the_job_sees_no_database_process_or_study():
    """STYLE.md: a job never sees a process, a GPU id or a database."""
    assert not _graph()["hpo.job"] & {"hpo.store", "hpo.search", "hpo.run"}


def test_the_layer_test_sees_imports_inside_functions(tmp_path):
    """The parser counts what a function imports: the loops of old hid there."""
    (tmp_path / "hpo").mkdir()
    f = tmp_path / "hpo" / "x.py"
    (tmp_path / "hpo" / "worker.py").write_text("", encoding="utf-8")
    f.write_text("def f():\n    from hpo.retrain import RETRAIN_ATTR\n"
                 "    from hpo import worker\n", encoding="utf-8")
    assert _imports(f, tmp_path) == {"hpo.retrain", "hpo", "hpo.worker"}
