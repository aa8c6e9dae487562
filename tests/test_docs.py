"""The docs site: its references are generated from the code and complete, and it builds."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def test_every_spec_key_has_a_docstring():
    keys = list(hooks.every_key())
    undocumented = sorted(k.path for k in keys if not k.doc.strip())
    assert undocumented == [], "spec keys without a docstring: " + ", ".join(undocumented)


def test_the_reference_walks_every_section_the_parser_has():
    paths = {k.path for k in hooks.every_key()}
    for top in hooks.accepted_keys(()):
        assert top in paths
    # Keys whose YAML name is not their field's name show under the YAML name.
    assert {"warm_start.from", "study.directions", "task.dataset.image_folder"} <= paths
    assert "warm_start.source" not in paths
    for name in ("lr", "lora_target"):
        assert f"search_space.{name}" in paths
    for option in ("sampler.constant_liar", "pruner.reduction_factor", "pruner.wrapped"):
        assert option in paths


def test_a_key_without_a_docstring_is_found(monkeypatch):
    docs = hooks.field_docs(hooks.sections()[3].cls)  # TaskSpec
    assert docs["max_length"]
    monkeypatch.setattr(hooks, "field_docs", lambda cls: {})
    missing = [k.path for k in hooks.every_key() if not k.doc]
    assert "task.max_length" in missing and "budget.n_trials" in missing


def test_the_spec_reference_shows_yaml_types_and_defaults():
    text = hooks.spec_reference()
    assert "| `task.max_length` | integer | `128` |" in text
    assert "| `task.kind` | string | required |" in text
    assert "| `budget.n_trials` | integer or null | `20` |" in text


def test_every_cli_command_is_in_the_cli_reference():
    from hpo.cli._table import COMMANDS

    text = hooks.cli_reference()
    for command in COMMANDS:
        assert f"## hpo {command.name}\n" in text, command.name
        assert f"usage: hpo {command.name} " in text, command.name


def test_every_environment_variable_hpo_reads_is_in_the_table():
    source = "\n".join(p.read_text() for p in (ROOT / "hpo").rglob("*.py"))
    names = set(re.findall(r"\b((?:HPO|HF)_[A-Z][A-Z0-9_]*)\b", source))
    assert "HPO_STORAGE" in names  # the grep finds them
    table = (DOCS / "reference" / "environment.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z_]+)`", table, re.M))
    assert sorted(names - rows) == [], "environment variables missing from the docs' table"


def test_the_layout_page_lists_every_module():
    page = (DOCS / "guides" / "layout.md").read_text()
    layout = page.split("## Layout", 1)[1]
    listed = set(re.findall(r"^(hpo/[\w./]+)", layout, re.M))
    def entries(folder):
        return {
            p for p in folder.iterdir()
            if p.name not in ("__init__.py", "__main__.py", "__pycache__")
            and (p.suffix == ".py" or (p / "__init__.py").is_file())
        }

    # The packages of the data path that group modules list each of theirs.
    groups = {ROOT / "hpo" / name for name in ("store", "search", "run", "results")}
    found = set()
    for p in entries(ROOT / "hpo"):
        found |= entries(p) if p in groups else {p}
    modules = {str(p.relative_to(ROOT)) + ("/" if p.is_dir() else "") for p in found}
    assert sorted(modules - listed) == [], "modules missing from the layout page"
    assert sorted(listed - modules) == [], "the layout page names what is not there"


def test_every_path_the_docs_name_exists():
    missing = []
    for page in DOCS.rglob("*.md"):
        named = re.findall(
            r"`((?:hpo|tests|benchmarks|search_spaces)/[\w./-]*\w/?)", page.read_text()
        )
        missing += [
            f"{page.name}: {p}"
            for p in named
            if not (ROOT / p).exists() and "*" not in p and "NAME" not in p
        ]
    assert missing == []


def test_mkdocs_build_strict_passes(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed (pip install -e '.[test]')")
        pytest.skip("mkdocs is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spec_page = (tmp_path / "reference" / "spec" / "index.html").read_text()
    assert "task.max_length" in spec_page  # the generated reference, not the placeholder
    assert "spec-reference" not in spec_page
    assert (tmp_path / "benchmarks" / "results" / "index.html").is_file()
