"""MkDocs hooks: the reference pages generated from the code, and the benchmark results.

- ``docs/reference/spec.md``: ``<!-- spec-reference -->`` becomes every key of the study spec,
  with its type, default and docstring. The keys are the ones the parser accepts (asked from
  ``hpo.spec.parse_spec`` itself: each section is given an unknown key, and its error lists
  the keys it expected), so a key the parser gains shows up here, and ``tests/test_docs.py``
  fails until it has a docstring.
- ``docs/reference/cli.md``: ``<!-- cli-reference -->`` becomes the ``--help`` of ``hpo`` and
  of every command of ``hpo.cli.COMMANDS``.
- ``benchmarks/RESULTS.md`` is served as the page ``benchmarks/results.md``.

Where a key is documented (one convention: the string literal right under its definition):

- a key that is a dataclass field: the field's docstring (``TaskSpec.max_length``); a key
  without a field of its own name takes the docstring of the field or property that names it
  (``warm_start.from`` is ``WarmStartSpec.source``, ``study.directions`` the property);
- a key that is an entry of a table (a sampler's or a pruner's option, a ``task.dataset``
  key): the table's docstring has one item ``- ``key``: what it is`` (``name.key`` where one
  sampler or pruner means something else by it);
- a hyperparameter: its ``Hyperparameter.doc`` in ``HYPERPARAMETERS``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import inspect
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC_PLACEHOLDER = "<!-- spec-reference -->"
CLI_PLACEHOLDER = "<!-- cli-reference -->"
RESULTS_PAGE = "benchmarks/results.md"
HELP_WIDTH = "100"


# --------------------------------------------------------------------------------------------
# Docstrings of fields and of table entries.


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, and of each of its properties."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if _is_string(after):
                docs[node.target.id] = inspect.cleandoc(after.value.value)  # type: ignore[union-attr]
        elif isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list
        ):
            doc = ast.get_docstring(node)
            if doc:
                docs[node.name] = doc
    return docs


def table_docs(module: Any, name: str) -> dict[str, str]:
    """The items ``- ``key``: text`` of the docstring under the table ``name`` of ``module``."""
    tree = ast.parse(inspect.getsource(module))
    for node, after in zip(tree.body, tree.body[1:]):
        target = getattr(node, "target", None) or (getattr(node, "targets", None) or [None])[0]
        if isinstance(target, ast.Name) and target.id == name and _is_string(after):
            text = inspect.cleandoc(after.value.value)  # type: ignore[union-attr]
            items = re.findall(r"^- ``([\w.]+)``: (.+?)(?=^- ``|^\S|\Z)", text, re.M | re.S)
            return {key: " ".join(doc.split()) for key, doc in items}
    return {}


def _is_string(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


# --------------------------------------------------------------------------------------------
# The keys the parser accepts, asked from the parser.

PROBE = "__probe__"
_BASE: dict[str, Any] = {
    "task": {"kind": "custom", "entrypoint": "probe.module:job"},
    "search_space": {"lr": {"type": "float", "low": 0.001, "high": 0.1}},
}
_IMAGE_TASK = {"kind": "image_classification", "model": "resnet18", "dataset": {"name": "digits"}}
_TEXT_TASK = {"kind": "text_classification", "model": "m", "dataset": {"name": "vader"}}


def accepted_keys(path: tuple[str, ...], task: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The keys the parser accepts in the section at ``path`` (``()``: the top level).

    The section gets the key ``__probe__``; the parser's error lists the keys it expected.
    ``task`` replaces the probe spec's task (a custom one) where the section needs another.
    """
    from hpo.errors import SpecError
    from hpo.spec import parse_spec

    raw = copy.deepcopy(_BASE)
    if task is not None:
        raw["task"] = copy.deepcopy(task)
    if path and path[0] == "study" and path[1:] == ("latency",):
        raw["study"] = {"objectives": ["val_loss", "latency_ms"]}
        raw["pruner"] = {"name": "none"}
    section = raw
    for key in path:
        section = section.setdefault(key, {})
    section[PROBE] = 1
    try:
        parse_spec(raw, source="probe", default_name="probe", check_environment=False)
    except SpecError as e:
        found = re.search(r"unknown key(?: \([^)]*\))?; expected one of (.+)$", str(e))
        if found and str(e).startswith("probe: " + ".".join((*path, PROBE)) + ":"):
            return tuple(found.group(1).split(", "))
        raise RuntimeError(f"the parser did not list the keys of {path}: {e}") from None
    raise RuntimeError(f"the parser accepted an unknown key in {path}")


# --------------------------------------------------------------------------------------------
# The spec's keys, each with its type, default and docstring.


@dataclasses.dataclass(frozen=True)
class SpecKey:
    """One key of the spec, as the reference shows it."""

    path: str
    """The YAML key path, e.g. ``task.max_length``."""
    type: str
    default: str
    doc: str
    note: str = ""
    """Where the key applies, where not everywhere (task kinds, samplers, pruners)."""


@dataclasses.dataclass(frozen=True)
class Section:
    """A mapping of the spec whose keys come from one dataclass."""

    path: tuple[str, ...]
    title: str
    cls: type
    task: dict[str, Any] | None = None
    nullable: bool = True
    """A key whose type allows None takes ``null`` in YAML."""


def sections() -> list[Section]:
    """The dataclass-backed mappings of the spec, in the order of a spec file."""
    from hpo.spec import (
        AdapterSpec,
        BudgetSpec,
        LatencySpec,
        ParamSpec,
        ResourcesSpec,
        Spec,
        StudySection,
        TaskSpec,
        TrackingSpec,
        WarmStartSpec,
    )

    return [
        Section((), "The top level", Spec),
        Section(("study",), "study", StudySection),
        Section(("study", "latency"), "study.latency", LatencySpec),
        Section(("task",), "task", TaskSpec),
        Section(("task", "adapter"), "task.adapter", AdapterSpec, task=_TEXT_TASK),
        Section(("search_space", "lr"), "search_space entries", ParamSpec, nullable=False),
        Section(("budget",), "budget", BudgetSpec),
        Section(("resources",), "resources", ResourcesSpec),
        Section(("warm_start",), "warm_start", WarmStartSpec),
        Section(("tracking",), "tracking", TrackingSpec),
    ]


def section_keys(section: Section) -> list[SpecKey]:
    """Every key the parser accepts in ``section``, documented from its dataclass."""
    keys = accepted_keys(section.path, section.task)
    fields = {f.name: f for f in dataclasses.fields(section.cls)}
    docs = field_docs(section.cls)
    prefix = ".".join(section.path[:-1] if section.cls.__name__ == "ParamSpec" else section.path)
    prefix = "search_space.NAME" if section.cls.__name__ == "ParamSpec" else prefix
    hints = _annotations(section.cls)
    required = first_required(section)
    out = []
    for key in keys:
        name = _field_of(key, keys, docs)
        f = fields.get(name) if name else None
        out.append(
            SpecKey(
                path=f"{prefix}.{key}" if prefix else key,
                type=_yaml_type(hints.get(name or "", ""), section.nullable),
                default="required" if key == required else _default(f, section.nullable),
                doc=_own_doc(key, docs.get(name or "", "")),
            )
        )
    return out


def first_required(section: Section) -> str | None:
    """The key the parser asks for first when the section is an empty mapping, if any."""
    from hpo.errors import SpecError
    from hpo.spec import parse_spec

    raw = copy.deepcopy(_BASE)
    if section.task is not None:
        raw["task"] = copy.deepcopy(section.task)
    if not section.path:
        return None
    parent = raw
    for key in section.path[:-1]:
        parent = parent.setdefault(key, {})
    parent[section.path[-1]] = {}
    try:
        parse_spec(raw, source="probe", default_name="probe", check_environment=False)
    except SpecError as e:
        where = "probe: " + ".".join(section.path) + "."
        found = re.match(rf"{re.escape(where)}(\w+): missing", str(e))
        return found.group(1) if found else None
    return None


def _own_doc(key: str, doc: str) -> str:
    """A docstring without the ``key``: that names its YAML key (``from``: ...)."""
    return re.sub(rf"^``{re.escape(key)}``: ", "", doc)


def _field_of(key: str, keys: tuple[str, ...], docs: dict[str, str]) -> str | None:
    """The field (or property) that documents the YAML ``key``: the one of that name, else the
    one that is not a key itself and whose docstring names the key first."""
    if key in docs:
        return key
    for name, doc in docs.items():
        if name not in keys and re.match(rf"``{re.escape(key)}``", doc):
            return name
    return None


def _annotations(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update({k: str(v) for k, v in getattr(klass, "__annotations__", {}).items()})
    for name, member in vars(cls).items():
        if isinstance(member, property) and member.fget is not None:
            out.setdefault(name, str(member.fget.__annotations__.get("return", "")))
    return out


_TYPE_WORDS = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "Any": "any",
    "Mapping[str, Any]": "mapping",
    "tuple[str, ...]": "list of strings",
    "tuple[Any, ...]": "list",
    "tuple[ParamSpec, ...]": "mapping",
    "tuple[tuple[str, tuple[Any, ...]], ...]": "mapping",
}


def _yaml_type(annotation: str, nullable: bool) -> str:
    """A dataclass annotation in YAML's words: ``int | None`` -> ``integer or null``."""
    words: list[str] = []
    for part in (p.strip() for p in annotation.split(" | ")):
        if part == "None":
            word = "null" if nullable else ""
        elif part in _TYPE_WORDS:
            word = _TYPE_WORDS[part]
        elif part.endswith(("Spec", "Section")):
            word = "mapping"
        else:
            word = f"`{part}`"
        if word and word not in words:
            words.append(word)
    if "integer" in words and "number" in words:  # float | int: a number
        words.remove("integer")
    return " or ".join(words) or "—"


def _default(f: dataclasses.Field | None, nullable: bool = True) -> str:
    if f is None:
        return "—"
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "—"
    if value in ("", {}, ()) or (value is None and not nullable):
        return "—"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    """A value as YAML's flow style writes it."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def hyperparameter_keys() -> list[SpecKey]:
    """The keys of ``search_space``: the hyperparameters the job understands."""
    from hpo.spec import HYPERPARAMETERS

    out = []
    # A built-in task's: a script or custom task also takes names of its own.
    for name in accepted_keys(("search_space",), _IMAGE_TASK):
        hp = HYPERPARAMETERS[name]
        out.append(
            SpecKey(
                path=f"search_space.{name}",
                type=hp.check(object()) or "any",  # what the check expected
                default="—" if hp.default is None else f"`{_yaml(hp.default)}`",
                doc=hp.doc,
            )
        )
    return out


def dataset_keys() -> list[SpecKey]:
    """The keys of ``task.dataset``, with the task kinds that take each."""
    from hpo.spec import _task

    kinds: dict[str, list[str]] = {}
    for task in (_IMAGE_TASK, _TEXT_TASK):
        for key in accepted_keys(("task", "dataset"), task):
            kinds.setdefault(key, []).append(task["kind"].split("_")[0])
    docs = table_docs(_task, "_DATASET_KEYS")
    return [
        SpecKey(f"task.dataset.{key}", "string", "—", docs.get(key, ""), note=", ".join(kind))
        for key, kind in kinds.items()
    ]


def option_keys(what: str) -> list[SpecKey]:
    """The options of every sampler (``what="sampler"``) or pruner: one row per option and
    meaning, with the samplers or pruners that take it."""
    from hpo.spec import _components

    table_name = "SAMPLER_OPTIONS" if what == "sampler" else "PRUNER_OPTIONS"
    table: dict[str, dict[str, str]] = getattr(_components, table_name)
    docs = table_docs(_components, table_name)
    rows: dict[tuple[str, str, str], list[str]] = {}
    for name, options in table.items():
        for option, kind in options.items():
            doc_key = f"{name}.{option}" if f"{name}.{option}" in docs else option
            rows.setdefault((option, kind, doc_key), []).append(name)
    return [
        SpecKey(
            f"{what}.{option}",
            _OPTION_TYPES.get(kind, kind),
            "—",
            docs.get(doc_key, ""),
            ", ".join(n),
        )
        for (option, kind, doc_key), n in rows.items()
    ]


_OPTION_TYPES = {
    "int": "integer",
    "float": "number",
    "number": "number",
    "bool": "boolean",
    "str": "string",
    "pruner": "mapping",
}


def component_names(what: str) -> tuple[str, ...]:
    """The names a sampler or pruner may have, as the parser lists them."""
    from hpo.errors import SpecError
    from hpo.spec import parse_spec

    raw = {**copy.deepcopy(_BASE), what: {"name": PROBE}}
    try:
        parse_spec(raw, source="probe", default_name="probe", check_environment=False)
    except SpecError as e:
        found = re.search(r"expected one of (.+)$", str(e))
        if found:
            return tuple(found.group(1).split(", "))
        raise
    raise RuntimeError(f"the parser accepted an unknown {what}")


def every_key() -> Iterator[SpecKey]:
    """Every key of the spec that the reference documents (what the tests walk)."""
    for section in sections():
        yield from section_keys(section)
        if section.path == ("task",):
            yield from dataset_keys()
        if section.path == ("search_space", "lr"):
            yield from hyperparameter_keys()
    yield from option_keys("sampler")
    yield from option_keys("pruner")


# --------------------------------------------------------------------------------------------
# The pages.


def _table(rows: list[SpecKey], note: str = "") -> str:
    head = "| key | type | default | " + (f"{note} | " if note else "") + "what it is |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"`{r.path}`", r.type, r.default] + ([r.note] if note else []) + [r.doc]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Markdown of a table cell: reST's ``code`` as Markdown's, on one line, pipes escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))
    return text.replace("|", "\\|")


def spec_reference() -> str:
    """The Markdown of every spec key, section by section."""
    parts = []
    for section in sections():
        parts.append(f"## {section.title}\n\n{_table(section_keys(section))}")
        if section.path == ("task",):
            parts.append(
                "## task.dataset\n\nExactly one source key (`name`, `image_folder`, `hf`, "
                "`csv` or `jsonl`); *kinds* says which `task.kind` takes each key.\n\n"
                + _table(dataset_keys(), note="kinds")
            )
        if section.path == ("search_space", "lr"):
            parts.append(
                "## search_space keys: the hyperparameters\n\nEach key is a distribution "
                "(the entry forms above) or a fixed value (`epochs: 3`). What is not listed "
                "keeps its default; *type* is what a fixed value or a range must be. A "
                "built-in task refuses any other name. Your own code (`task.kind: script` or "
                "`custom`) may also name parameters of its own (letters, digits and `_`, e.g. "
                "`alpha`, `warmup_ratio`) with any range or choices; there the numbers below "
                "keep their domain (`lr` > 0) and the named choices (`optimizer`, ...) are "
                "your code's own; a script gets the spec's parameters alone "
                "(`hpo.session.params`).\n\n"
                + _table(hyperparameter_keys())
            )
    for what in ("sampler", "pruner"):
        names = ", ".join(f"`{n}`" for n in component_names(what))
        parts.append(
            f"## {what} options\n\n`{what}.name` is one of {names}. The options go beside it "
            f"(`{{name: {'tpe' if what == 'sampler' else 'median'}, ...}}`); *{what}s* says "
            f"which take each option, and an option left out keeps Optuna's default.\n\n"
            + _table(option_keys(what), note=f"{what}s")
        )
    return "\n\n".join(parts) + "\n"


def cli_reference() -> str:
    """The ``--help`` of ``hpo`` and of every command, in the command table's order."""
    from hpo.cli import build_parser
    from hpo.cli._table import COMMANDS

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps at the terminal's width
    try:
        parser = build_parser()
        commands = next(
            a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
        ).choices
        parts = [f"## hpo\n\n```text\n{parser.format_help().rstrip()}\n```"]
        for command in COMMANDS:
            help_text = commands[command.name].format_help().rstrip()
            parts.append(f"## hpo {command.name}\n\n{command.help}\n\n```text\n{help_text}\n```")
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# MkDocs events.


def on_files(files: Any, config: Any) -> Any:
    """Serve ``benchmarks/RESULTS.md`` as a page of the site."""
    from mkdocs.structure.files import File

    results = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    files.append(File.generated(config, RESULTS_PAGE, content=results))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Fill the references' placeholders."""
    if SPEC_PLACEHOLDER in markdown:
        markdown = markdown.replace(SPEC_PLACEHOLDER, spec_reference())
    if CLI_PLACEHOLDER in markdown:
        markdown = markdown.replace(CLI_PLACEHOLDER, cli_reference())
    return markdown
