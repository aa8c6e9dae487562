"""The README is the front door: what it names must be in the tree, and the tree in it."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_path_the_readme_names_exists():
    named = set(re.findall(r"\b((?:hpo|tests|benchmarks|search_spaces|docs)/[\w./-]*\w/?)", README))
    missing = sorted(
        p
        for p in named
        if not (ROOT / p).exists() and "*" not in p and not p.startswith("search_spaces/NAME")
    )
    assert missing == []


def test_the_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_the_readme_has_its_two_commands():
    run = (
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 "
        "-e . && .venv/bin/hpo run search_spaces/digits.yaml"
    )
    tests = (
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 "
        "-e '.[test]' && .venv/bin/python -m pytest -q"
    )
    assert "## Run the main job\n" in README and "## Run the tests\n" in README
    main_job = README.split("## Run the main job", 1)[1].split("\n## ", 1)[0]
    test_section = README.split("## Run the tests", 1)[1].split("\n## ", 1)[0]
    assert f"```bash\n{run}\n```" in main_job
    assert f"```bash\n{tests}\n```" in test_section


def test_the_readme_links_docs_pages_that_exist():
    links = re.findall(r"\]\((docs/[\w./-]+\.md)\)", README)
    assert len(links) >= 10
    assert sorted(p for p in links if not (ROOT / p).is_file()) == []


def test_the_tour_runs_commands_that_hpo_has():
    from hpo.cli._table import COMMANDS

    names = {c.name for c in COMMANDS}
    tour = README.split("## A five-minute tour", 1)[1].split("\n## ", 1)[0]
    used = set(re.findall(r"\.venv/bin/hpo ([\w-]+)", tour))
    assert {"status", "report", "dashboard", "export"} <= used
    assert sorted(used - names) == []


def test_what_the_commands_write_is_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    for folder in ("/checkpoints/", "/exports/", "/retrain/", "/hpo.db", "/site/"):
        assert folder in ignored, folder
