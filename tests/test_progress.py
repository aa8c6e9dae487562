"""What ``hpo run`` prints while a study runs: one line per change, a summary at the end."""

from __future__ import annotations

import re
import time

import pytest

from conftest import run_hpo
from workers import FAST, fast_env


@pytest.mark.slow
def test_hpo_run_prints_one_line_per_change_and_one_summary(tmp_path):
    """A run longer than the old 30 s status period: each finished trial is one line (the
    new best said on it), and the multi-line status block comes once, at the end, not
    periodically."""
    url = f"sqlite:///{tmp_path / 'progress.db'}"
    env = fast_env(tmp_path, epoch_seconds=1.8)
    name = f"progress-{time.time_ns()}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(FAST.format(name=name, n=3, low=6, high=6, pruner="none"))
    started = time.monotonic()
    r = run_hpo("run", str(spec), "--storage", url, "--workers", "1", cwd=tmp_path, env=env,
                timeout=300)
    assert time.monotonic() - started > 32  # past the old status period
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    trial_lines = [ln for ln in lines if re.search(r"\] trial \d+ +COMPLETE", ln)]
    assert [re.search(r"trial (\d+)", ln).group(1) for ln in trial_lines] == ["0", "1", "2"], \
        r.stdout
    assert "new best" in trial_lines[0], r.stdout  # the first complete trial is the best yet
    # The status block (its "study NAME" and "  trials" lines) once: the summary at the end.
    assert [ln for ln in lines if ln == f"study {name}"] == [f"study {name}"], r.stdout
    assert len([ln for ln in lines if ln.startswith("  trials ")]) == 1, r.stdout
    summary = lines.index(f"study {name}")
    assert not [ln for ln in lines[summary:] if " trial " in ln and "COMPLETE" in ln]
    assert "complete 3" in r.stdout, r.stdout
