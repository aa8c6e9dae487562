"""The results table: one row per measurement, its baseline, their ratio and the goal."""

from __future__ import annotations

import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence


@dataclass
class Row:
    """One measurement of hpo next to its baseline, measured in the same command."""

    benchmark: str
    case: str
    """What was measured, e.g. ``sqlite, 1000 trials``."""
    metric: str
    """The unit of ``hpo`` and ``baseline``, e.g. ``ms/trial``."""
    hpo: float | None = None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    """Usually ``hpo / baseline``; each benchmark says which way its goal reads."""
    goal: str = ""
    """E.g. ``<= 1.1``: the ratio's goal ('' where the row only informs)."""
    met: bool | None = None
    note: str = ""
    skipped: str = ""
    """Why there is no measurement (no server, no CUDA, a missing package)."""


def judged(row: Row, test: Callable[[float], bool]) -> Row:
    """``row`` with ``met`` set by ``test(ratio)`` (left ``None`` without a ratio)."""
    if row.ratio is not None and row.goal:
        row.met = bool(test(row.ratio))
    return row


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render(rows: Iterable[Row], *, title: str, context: Sequence[str] = ()) -> str:
    """The markdown table, with a title and lines of context (date, machine, budgets)."""
    lines = [f"# {title}", ""]
    lines += [f"- {c}" for c in context]
    lines += ["", "| benchmark | case | metric | hpo | baseline | ratio | goal | met | notes |",
              "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.benchmark} | {r.case} | {r.metric} | | | | {r.goal} | skipped "
                         f"| {r.skipped} |")
            continue
        base = fmt(r.baseline) + (f" ({r.baseline_name})" if r.baseline_name else "")
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "" if r.ratio is None else f"{r.ratio:.3g}"
        lines.append(f"| {r.benchmark} | {r.case} | {r.metric} | {fmt(r.hpo)} | {base} | "
                     f"{ratio} | {r.goal} | {met} | {r.note} |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    """A one-line description of this machine."""
    import os

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    return (f"{platform.node()}: {os.cpu_count()} CPU cores ({cpu or platform.machine()}){mem}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def write_section(out: Path, section: str, text: str) -> None:
    """Put ``text`` (the ``## section`` block) in ``out``, replacing an earlier one and
    leaving every other section as it is (a results file that several commands write)."""
    old = out.read_text() if out.is_file() else ""
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1).rstrip("\n") + "\n"
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + text
    out.write_text(new)


def revision() -> str:
    """The commit of this checkout, and whether hpo/ differs from it (a results file says
    which code it measured)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        last = git("log", "-1", "--format=%h", "--", "hpo")
        dirty = git("status", "--porcelain", "--", "hpo")
    except (OSError, subprocess.SubprocessError):
        return "an unknown revision"
    return (f"{head} (hpo/ last changed in {last})"
            + (" with uncommitted changes in hpo/" if dirty else ""))
