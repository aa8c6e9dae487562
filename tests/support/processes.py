"""The hpo CLI run as a user runs it: a subprocess with its output captured, or one left
running (a worker, a launcher) for a test to signal, kill or wait for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"


def _this_checkout_first(env: dict) -> dict:
    """``env`` with this checkout first on PYTHONPATH: the subprocess imports the hpo under
    test, not another one installed in the environment (an editable install elsewhere)."""
    rest = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([rest] if rest else [])])
    return env


def run_hpo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run the hpo CLI as a user would: a subprocess, its output captured."""
    full_env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    full_env.update(PYTHONUNBUFFERED="1", **(env or {}))
    _this_checkout_first(full_env)
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_hpo(*args, cwd, env) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE"}
    full.update(PYTHONUNBUFFERED="1", **env)
    _this_checkout_first(full)
    return subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def one_line_error(result, spec, *words: str) -> str:
    """What bad input gets from the CLI: exit 2, one line on stderr naming the spec file and
    each of ``words``, no traceback. Returns the line."""
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in result.stdout + err, err
    assert err.startswith(f"hpo: error: {spec}: "), err
    for word in words:
        assert word in err, (word, err)
    return err
