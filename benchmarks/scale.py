"""Scale: N workers of one study on direct PostgreSQL, through the gRPC proxy, on a journal.

    python -m benchmarks.scale [--workers 16,64,128] [--storages postgresql,grpc,journal]
                               [--trial-seconds 3] [--trials-per-worker 10]
                               [--postgres private|shared] [--out [FILE]] [--smoke]

Each case is ``hpo launch STUDY --workers N`` (N processes on this machine) of a study whose
trials only sleep (``gated_sleep_job``: a GPU-bound trial, as far as the CPU and the storage
can tell), on a fresh storage:

- ``postgresql``: a fresh database, every worker connected to it;
- ``grpc``: the same behind ``hpo storage-proxy`` (default 10 threads), the workers on
  ``grpc://``;
- ``journal``: a fresh ``journal://`` file in the work directory.

Start-up is left out: every worker claims a first trial and waits in it until all N have one
(or until no more worker got one for 45 s: the rest are stuck, e.g. refused by the server);
then the gate opens and the measurement runs from that moment to the last claim of the budget
(N x ``--trials-per-worker`` more trials). Measured:

- **trials/s** completed in that window, against the ideal N / trial seconds;
- **machine busy**: the share of this machine's CPU time used in the window (/proc/stat; the
  machine is shared, so other load counts too), and the case's own share (its processes'
  CPU time): near 100 % the machine, not the storage, limits the figure;
- **CPU ms per trial** of the workers, PostgreSQL's processes (the private server's; on a
  shared server, every ``postgres`` process) and the proxy: the coordination cost, which
  decides how many trials/s a machine of C cores sustains (C x 1000 / ms per trial);
- **peak PostgreSQL connections** to the study's database (``pg_stat_activity``, sampled
  every 0.5 s);
- **statements per trial** (``pg_stat_statements`` calls where the server loads it, else
  ``pg_stat_database.xact_commit``: transactions) and rows read per trial
  (``tup_returned + tup_fetched``); a journal's records appended per trial instead;
- **errors**: the launcher's exit code, FAIL or leftover RUNNING trials, finished != budget,
  and lines of the launch log that say error / refused / unavailable.

``--postgres private`` (the default where ``initdb`` is found) runs the PostgreSQL cases on a
server of their own, started in the work directory with initdb's defaults
(``max_connections = 100``) and ``pg_stat_statements`` preloaded, so that a benchmark that uses
up the connections disturbs nobody else's server; ``shared`` uses ``$HPO_BENCH_POSTGRES``.
``--out`` writes the table into FILE's section "Scale: workers per storage" (default FILE:
benchmarks/RESULTS.md), replacing an earlier one and leaving the other sections as they are.
``--smoke`` runs 2 workers of 0.2 s trials on each storage (the test suite's version).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from benchmarks import studies
from benchmarks.databases import ADMIN_URLS, fresh_database, unavailable
from benchmarks.table import revision, write_section

SECTION = "Scale: workers per storage"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
STORAGES = ("postgresql", "grpc", "journal")
GATE_VAR = "HPO_BENCH_GATE"
SLEEP_VAR = "HPO_BENCH_SLEEP"
STALL_SECONDS = 45.0
"""The gate opens when no more worker got a first trial for this long."""
RAMP_TIMEOUT = 900.0
ERROR_WORDS = re.compile(r"error|refused|unavailable|too many clients|Traceback|failed", re.I)


def gated_sleep_job(trial, params, context) -> float:
    """Wait for the gate (the first trial of each worker only), then sleep
    ``$HPO_BENCH_SLEEP`` seconds without using the CPU."""
    gate = os.environ.get(GATE_VAR)
    while gate and not os.path.exists(gate):
        time.sleep(0.05)
    time.sleep(float(os.environ.get(SLEEP_VAR, "1")))
    trial.report(params["lr"], 1)
    return params["lr"]


@dataclass
class Case:
    storage: str
    workers: int
    trial_seconds: float
    n_trials: int = 0
    skipped: str = ""
    started: int = 0
    """Workers that had claimed a trial when the gate opened."""
    window: float = 0.0
    completed: int = 0
    """Trials completed in the window."""
    busy: float = 0.0
    """Share of the machine's CPU time used in the window, by everything."""
    own: float = 0.0
    """... by the case's processes: workers, PostgreSQL (a private server's), proxy."""
    cpu_ms: dict[str, float] = field(default_factory=dict)
    peak_connections: int | None = None
    mean_connections: float | None = None
    statements: float | None = None
    statements_kind: str = ""
    rows_read: float | None = None
    journal_records: float | None = None
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.window if self.window else 0.0

    @property
    def ideal(self) -> float:
        return self.workers / self.trial_seconds

    @property
    def efficiency(self) -> float:
        return self.rate / self.ideal if self.ideal else 0.0


# --------------------------------------------------------------------------------------------
# Measuring instruments: CPU from /proc, PostgreSQL's statistics.


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of process ``pid``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, name)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        found[int(entry)] = (int(text.rsplit(")", 1)[1].split()[1]), name)
    return found


def _tree(pid: int, processes: dict[int, tuple[int, str]]) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in processes.items():
        children.setdefault(parent, []).append(child)
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _postgres_pids(postmaster: int | None, processes: dict[int, tuple[int, str]]) -> list[int]:
    """The private server's processes, or every process named postgres (a shared server)."""
    if postmaster is not None:
        return _tree(postmaster, processes)
    return [pid for pid, (_, name) in processes.items() if name == "postgres"]


class CpuMeter:
    """CPU seconds used by groups of processes from a start, sampled until they are gone."""

    def __init__(self, groups: dict[str, Callable[[dict], list[int]]]) -> None:
        self.groups = groups
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}

    def sample(self, start: bool = False) -> None:
        processes = _processes()
        for name, pids in self.groups.items():
            for pid in pids(processes):
                cpu = _proc_cpu(pid)
                if cpu is None:
                    continue
                key = (name, pid)
                if start or key not in self.first:
                    # A process that appears after the start counts from 0.
                    self.first[key] = cpu if start else 0.0
                self.last[key] = cpu

    def at_start(self, group: str) -> float:
        """CPU seconds the group's processes had used at the start."""
        return sum(cpu for (name, _), cpu in self.first.items() if name == group)

    def seconds(self) -> dict[str, float]:
        used = {name: 0.0 for name in self.groups}
        for key, cpu in self.last.items():
            used[key[0]] += cpu - self.first.get(key, 0.0)
        return used


class Postgres:
    """The PostgreSQL statistics of one database, read through an admin connection."""

    def __init__(self, admin_url: str, database: str) -> None:
        import sqlalchemy

        self.database = database
        self.engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                               connect_args={"connect_timeout": 5})
        with self.engine.connect() as con:
            self.statements = bool(con.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"))
                .scalar())

    def query(self, sql: str) -> list:
        import sqlalchemy

        with self.engine.connect() as con:
            return list(con.execute(sqlalchemy.text(sql), {"db": self.database}).one())

    def connections(self) -> int:
        return self.query("SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                          "AND pid <> pg_backend_pid()")[0]

    def counters(self) -> dict[str, float]:
        xact, rows = self.query(
            "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched "
            "FROM pg_stat_database WHERE datname = :db")
        found = {"xact": xact, "rows": rows}
        if self.statements:
            found["calls"] = self.query(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
                "ON d.oid = s.dbid WHERE d.datname = :db")[0]
        return found

    def close(self) -> None:
        self.engine.dispose()


@contextlib.contextmanager
def private_postgresql(say) -> Iterator[tuple[str, int]]:
    """A PostgreSQL server of its own in a temporary directory (initdb's defaults,
    pg_stat_statements preloaded, trust on 127.0.0.1): yields (admin URL, postmaster pid);
    stopped and removed afterwards."""
    initdb = _pg_binary("initdb")
    pg_ctl = _pg_binary("pg_ctl")
    home = Path(tempfile.mkdtemp(prefix="hpo-scale-pg-"))
    data = home / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(home, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args: str) -> None:
        done = subprocess.run(as_user + list(args), capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: "
                               f"{(done.stderr or done.stdout).strip()[-800:]}")

    try:
        pg(initdb, "-D", str(data), "-U", "postgres", "--auth=trust")
        pg(pg_ctl, "-D", str(data), "-l", str(home / "server.log"), "-w", "start", "-o",
           f"-p {port} -k {home} -c listen_addresses=127.0.0.1 "
           "-c shared_preload_libraries=pg_stat_statements")
        try:
            postmaster = int((data / "postmaster.pid").read_text().split()[0])
            admin = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
            _create_extension(admin)
            say(f"scale: a private PostgreSQL on port {port} (pid {postmaster})")
            yield admin, postmaster
        finally:
            with contextlib.suppress(RuntimeError):
                pg(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _create_extension(admin: str) -> None:
    """pg_stat_statements in the admin database, whence its view is read."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as con:
            con.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    finally:
        engine.dispose()


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(f"{name} not found (PostgreSQL's server binaries)")
    return str(candidates[-1])


def can_run_private() -> str:
    """Why a private PostgreSQL cannot be started here ('' if it can)."""
    try:
        _pg_binary("initdb")
        _pg_binary("pg_ctl")
    except FileNotFoundError as e:
        return str(e)
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser"
    return ""


# --------------------------------------------------------------------------------------------
# One case.


def run_case(storage: str, workers: int, *, trial_seconds: float, per_worker: int,
             admin_url: str, postmaster: int | None, workdir: Path, say) -> Case:
    case = Case(storage, workers, trial_seconds, n_trials=workers * (per_worker + 1))
    started = time.monotonic()
    scratch = workdir / f"{storage}-{workers}"
    scratch.mkdir(parents=True, exist_ok=True)
    if storage == "journal":
        measure(case, f"journal://{scratch / 'study.log'}", None, None, scratch, say)
    else:
        backend_env = {"HPO_BENCH_POSTGRES": admin_url}
        with _env(backend_env), fresh_database("postgresql", scratch,
                                               prefix="hpo_scale") as db_url:
            from sqlalchemy.engine import make_url

            pg = Postgres(admin_url, make_url(db_url).database)
            try:
                if storage == "postgresql":
                    measure(case, db_url, pg, postmaster, scratch, say)
                else:
                    with storage_proxy(db_url, scratch) as (url, proxy_pid):
                        measure(case, url, pg, postmaster, scratch, say, proxy_pid)
            finally:
                pg.close()
    case.seconds = time.monotonic() - started
    return case


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    """``benchmarks.databases`` reads its admin URL when imported: point it at ours."""
    import benchmarks.databases as databases

    saved = dict(databases.ADMIN_URLS)
    databases.ADMIN_URLS["postgresql"] = values["HPO_BENCH_POSTGRES"]
    try:
        yield
    finally:
        databases.ADMIN_URLS.clear()
        databases.ADMIN_URLS.update(saved)


@contextlib.contextmanager
def storage_proxy(db_url: str, scratch: Path) -> Iterator[tuple[str, int]]:
    """``hpo storage-proxy`` in front of ``db_url``: yields its grpc:// URL and pid."""
    log = scratch / "proxy.log"
    with open(log, "w") as out:
        proxy = subprocess.Popen([sys.executable, "-m", "hpo", "storage-proxy", "--storage",
                                  db_url, "--port", "0"], env=studies.environment(),
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            found = re.search(r"--storage (grpc://\S+)", log.read_text())
            if found:
                break
            if proxy.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hpo storage-proxy did not start: {log.read_text()[-800:]}")
            time.sleep(0.1)
        yield found.group(1), proxy.pid
    finally:
        proxy.terminate()
        try:
            proxy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()


def measure(case: Case, url: str, pg: Postgres | None, postmaster: int | None,
            scratch: Path, say, proxy_pid: int | None = None) -> None:
    import optuna
    from optuna.trial import TrialState

    from hpo.spec import parse_spec
    from hpo.store.storage import open_storage
    import yaml

    from hpo.search.study import create_study

    name = f"scale-{case.storage}-{case.workers}"
    spec = studies.CUSTOM_SPEC.format(name=name, job="x", n=case.n_trials).replace(
        "benchmarks.jobs:x", "benchmarks.scale:gated_sleep_job")
    gate = scratch / "gate"
    env = studies.environment(**{GATE_VAR: str(gate), SLEEP_VAR: str(case.trial_seconds),
                                 "HPO_CHECKPOINT_DIR": str(scratch / "checkpoints")})
    watched = open_storage(url)
    watcher = create_study(parse_spec(yaml.safe_load(spec), source=f"<{name}>"), watched)
    log = scratch / "launch.log"
    say(f"scale: {case.storage}, {case.workers} workers, {case.n_trials} trials of "
        f"{case.trial_seconds:g} s")
    with open(log, "w") as out:
        launch = subprocess.Popen([sys.executable, "-m", "hpo", "launch", name, "--storage", url,
                                   "--workers", str(case.workers)], cwd=scratch, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    meter = CpuMeter({
        "workers": lambda ps: _tree(launch.pid, ps),
        **({"postgresql": lambda ps: _postgres_pids(postmaster, ps)} if pg is not None else {}),
        **({"proxy": lambda ps: [proxy_pid]} if proxy_pid is not None else {}),
    })
    connections: list[int] = []
    stop = threading.Event()
    try:
        # The ramp: every worker claims its first trial and waits in it at the gate.
        running, last_change, deadline = 0, time.monotonic(), time.monotonic() + RAMP_TIMEOUT
        while launch.poll() is None and time.monotonic() < deadline:
            now_running = len(watcher.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if now_running != running:
                running, last_change = now_running, time.monotonic()
            if running >= case.workers or (
                    running and time.monotonic() - last_change > STALL_SECONDS):
                break
            time.sleep(0.5)
        case.started = running
        engine = getattr(watched, "engine", None)
        if engine is not None:  # its connection must not count among the workers'
            engine.dispose()
        if running < case.workers:
            case.errors.append(f"{running} of {case.workers} workers got a first trial")
        # The measurement.
        if pg is not None:
            with contextlib.suppress(Exception):
                pg.query("SELECT pg_stat_statements_reset() IS NULL")
            before = pg.counters()
        journal = Path(url.split("://", 1)[1]) if case.storage == "journal" else None
        records_before = _lines(journal) if journal else 0
        meter.sample(start=True)
        busy0, total0 = _cpu_jiffies()
        t0 = datetime.datetime.now()
        gate.touch()

        def sample() -> None:
            while not stop.is_set():
                meter.sample()
                if pg is not None:
                    with contextlib.suppress(Exception):
                        connections.append(pg.connections())
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # Reaped here, for its CPU time: the workers' that exited are in it (the launcher
        # waited for them), which sampling /proc misses after their last sample.
        code, launcher_cpu = None, None
        deadline = time.monotonic() + RAMP_TIMEOUT + 20 * case.n_trials * case.trial_seconds
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(launch.pid, os.WNOHANG)
            if pid:
                code = launch.returncode = os.waitstatus_to_exitcode(status)
                launcher_cpu = usage.ru_utime + usage.ru_stime
                break
            time.sleep(0.2)
        stop.set()
        sampler.join()
        busy1, total1 = _cpu_jiffies()
    finally:
        stop.set()
        if launch.poll() is None:
            launch.kill()
            launch.wait()
            case.errors.append("the launcher did not finish in time")
            code = None
    if code not in (0, None):
        case.errors.append(f"launcher exit {code}")
    trials = optuna.load_study(study_name=name,
                               storage=open_storage(url, create=False)).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(finished) != case.n_trials:
        case.errors.append(f"{len(finished)} finished of {case.n_trials}")
    for state in (TrialState.FAIL, TrialState.RUNNING):
        stuck = sum(t.state == state for t in trials)
        if stuck:
            case.errors.append(f"{stuck} {state.name}")
    lines = [ln for ln in log.read_text().splitlines() if ERROR_WORDS.search(ln)]
    if lines:
        case.errors.append(f"{len(lines)} log lines like: {lines[0].strip()[:160]}")
    # The window: from the gate to the budget's last claim; the trials completed in it.
    last_claim = max(t.datetime_start for t in trials if t.datetime_start is not None)
    case.window = max((last_claim - t0).total_seconds(), 1e-9)
    case.completed = sum(1 for t in finished if t.datetime_complete is not None
                         and t0 <= t.datetime_complete <= last_claim)
    elapsed_jiffies = total1 - total0
    case.busy = (busy1 - busy0) / elapsed_jiffies if elapsed_jiffies else 0.0
    done = len(finished) or 1
    used = meter.seconds()
    if launcher_cpu is not None:
        used["workers"] = launcher_cpu - meter.at_start("workers")
    case.cpu_ms = {k: 1000 * v / done for k, v in used.items()}
    if elapsed_jiffies:
        case.own = sum(used.values()) * os.sysconf("SC_CLK_TCK") / elapsed_jiffies
    if pg is not None:
        after = pg.counters()
        case.peak_connections = max(connections, default=0)
        case.mean_connections = sum(connections) / len(connections) if connections else 0.0
        key = "calls" if "calls" in after else "xact"
        case.statements = (after[key] - before[key]) / done
        case.statements_kind = "statements" if key == "calls" else "transactions"
        case.rows_read = (after["rows"] - before["rows"]) / done
    if journal is not None:
        case.journal_records = (_lines(journal) - records_before) / done
    say(f"scale: {case.storage}, {case.workers} workers: {case.rate:.2f} trials/s of "
        f"{case.ideal:.2f} ({case.efficiency:.0%}), machine busy {case.busy:.0%}"
        + (f", errors: {'; '.join(case.errors)}" if case.errors else ""))


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


# --------------------------------------------------------------------------------------------
# The table.

HEADER = ("storage", "workers", "trials/s", "ideal", "efficiency", "machine busy",
          "CPU ms/trial: workers + PostgreSQL + proxy", "peak PG connections",
          "statements/trial", "rows read/trial", "errors")


def markdown(cases: list[Case], context: list[str]) -> str:
    lines = [f"## {SECTION}", ""] + [f"- {c}" for c in context] + [""]
    lines.append("| " + " | ".join(HEADER) + " |")
    lines.append("|" + "|".join("---:" if i in (1, 2, 3, 4, 5, 7, 8, 9) else "---"
                                for i in range(len(HEADER))) + "|")
    for c in cases:
        if c.skipped:
            lines.append(f"| {c.storage} | {c.workers} | skipped: {c.skipped} |"
                         + " |" * (len(HEADER) - 3))
            continue
        cpu = " + ".join(f"{c.cpu_ms[k]:.0f}" for k in ("workers", "postgresql", "proxy")
                         if k in c.cpu_ms)
        total = sum(c.cpu_ms.values())
        statements = (f"{c.statements:.1f} {c.statements_kind}" if c.statements is not None
                      else f"{c.journal_records:.1f} journal records"
                      if c.journal_records is not None else "")
        lines.append("| " + " | ".join([
            c.storage, str(c.workers), f"{c.rate:.2f}", f"{c.ideal:.2f}",
            f"{c.efficiency:.0%}", f"{c.busy:.0%} (this case {c.own:.0%})",
            f"{cpu} = {total:.0f}",
            "" if c.peak_connections is None else
            f"{c.peak_connections} (mean {c.mean_connections:.0f})",
            statements, "" if c.rows_read is None else f"{c.rows_read:,.0f}",
            "; ".join(c.errors) or "none"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="16,64,128", help="worker counts (default "
                        "16,64,128)")
    parser.add_argument("--storages", default=",".join(STORAGES),
                        help=f"comma-separated (default {','.join(STORAGES)})")
    parser.add_argument("--trial-seconds", type=float, default=3.0,
                        help="seconds each trial sleeps (default 3)")
    parser.add_argument("--trials-per-worker", type=int, default=10,
                        help="trials per worker after the gate (default 10)")
    parser.add_argument("--postgres", choices=("private", "shared"),
                        help="a PostgreSQL server of the benchmark's own (default where initdb "
                             "is found) or the one at $HPO_BENCH_POSTGRES")
    parser.add_argument("--smoke", action="store_true",
                        help="2 workers, 0.2 s trials, 2 per worker, the shared server: seconds")
    parser.add_argument("--out", type=Path, nargs="?", const=DEFAULT_OUT, metavar="FILE",
                        help="write the table into FILE's scale section (default FILE: "
                             "benchmarks/RESULTS.md)")
    parser.add_argument("--workdir", type=Path, metavar="DIR",
                        help="keep the cases' files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workers, args.trial_seconds, args.trials_per_worker = "2", 0.2, 2
        args.postgres = args.postgres or "shared"
    counts = [int(n) for n in args.workers.split(",") if n.strip()]
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    for s in storages:
        if s not in STORAGES:
            parser.error(f"--storages: unknown storage {s!r} (expected {', '.join(STORAGES)})")
    postgres = args.postgres or ("private" if not can_run_private() else "shared")

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hpo-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    start = time.monotonic()
    server = ""
    try:
        with contextlib.ExitStack() as stack:
            admin, postmaster = ADMIN_URLS["postgresql"], None
            needs_pg = any(s != "journal" for s in storages)
            why = ""
            if needs_pg and postgres == "private":
                admin, postmaster = stack.enter_context(private_postgresql(say))
                server = "a private PostgreSQL 15 server (initdb defaults: max_connections 100)"
            elif needs_pg:
                with _env({"HPO_BENCH_POSTGRES": admin}):
                    why = unavailable("postgresql")
                server = "the shared PostgreSQL server at $HPO_BENCH_POSTGRES"
            for n in counts:
                for storage in storages:
                    if storage != "journal" and why:
                        cases.append(Case(storage, n, args.trial_seconds, skipped=why))
                        continue
                    cases.append(run_case(storage, n, trial_seconds=args.trial_seconds,
                                          per_worker=args.trials_per_worker, admin_url=admin,
                                          postmaster=postmaster, workdir=workdir, say=say))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    from benchmarks.table import machine

    when = datetime.datetime.now().astimezone().isoformat(timespec="minutes")
    command = " ".join(["python -m benchmarks.scale", *(argv if argv is not None
                                                        else sys.argv[1:])])
    context = [
        f"measured {when} on {machine()} ({time.monotonic() - start:.0f} s), hpo at "
        f"{revision()}: `{command}`",
        f"each case: `hpo launch --workers N` on this one machine, trials that sleep "
        f"{args.trial_seconds:g} s (no CPU), {args.trials_per_worker} per worker measured "
        f"after all N hold a first trial; heartbeat every 30 s (the default)"
        + (f"; PostgreSQL: {server}" if server else ""),
    ]
    text = markdown(cases, context)
    print(text)
    if args.out is not None:
        write_section(args.out, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
