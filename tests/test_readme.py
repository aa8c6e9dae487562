"""The README is the front door: what it names must be in the tree, and the tree in it."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_path_the_readme_names_exists():
    named = set(re.findall(r"\b((?:hpo|tests|benchmarks|search_spaces)/[\w./-]*\w/?)", README))
    missing = sorted(p for p in named if not (ROOT / p).exists() and "*" not in p
                     and not p.startswith("search_spaces/NAME"))
    assert missing == []


def test_the_layout_section_lists_every_module():
    layout = README.split("### Layout", 1)[1].split("###", 1)[0]
    listed = set(re.findall(r"^(hpo/[\w./]+)", layout, re.M))
    modules = {f"hpo/{p.name}" + ("/" if p.is_dir() else "")
               for p in (ROOT / "hpo").iterdir()
               if p.name not in ("__init__.py", "__main__.py", "__pycache__")
               and (p.suffix == ".py" or (p / "__init__.py").is_file())}
    assert sorted(modules - listed) == [], "modules missing from the README's Layout"
    assert sorted(listed - modules) == [], "the README's Layout names what is not there"


def test_what_the_commands_write_is_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    for folder in ("/checkpoints/", "/exports/", "/retrain/", "/hpo.db"):
        assert folder in ignored, folder
