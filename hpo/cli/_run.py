"""The commands that run trials: create, run, launch, worker, reap, template, and the
storage proxy that serves them."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from hpo.cli._handle import EXIT_OK, Handle, say, warn
from hpo.errors import HpoError

if TYPE_CHECKING:
    from hpo.spec import Spec


def create(h: Handle) -> int:
    from hpo.run.preflight import load_checked_spec

    # Validate, and check this machine's files, before touching the database.
    spec = load_checked_spec(h.args.spec, preflight=not h.args.no_preflight)
    study = h.create(spec)
    _say_default_pruner(h.args.spec, spec)
    print(f"study {study.study_name} ready in {h.shown}")
    return EXIT_OK


def run(h: Handle) -> int:
    from hpo.run.preflight import load_checked_spec

    # Validate, and check this machine's files and GPUs, before touching the database.
    spec = load_checked_spec(h.args.spec, preflight=not h.args.no_preflight)
    gpus = _gpus(h.args)
    h.create(spec)
    _say_default_pruner(h.args.spec, spec)
    return _launch(h, spec.study.name, gpus)


def _say_default_pruner(path: str, spec: Spec) -> None:
    """One line where the spec file names no pruner: what hpo chose and stored."""
    import yaml

    with open(path, encoding="utf-8") as f:
        if "pruner" in (yaml.safe_load(f) or {}):
            return
    options = ", ".join(f"{k} {v}" for k, v in spec.pruner.options.items())
    print(
        f"hpo: the spec names no pruner: {spec.pruner.name}"
        + (f" ({options})" if options else "")
        + f", task.evals_per_epoch {spec.task.evals_per_epoch}; stored in the study's spec"
    )


def launch(h: Handle) -> int:
    gpus = _gpus(h.args)
    h.load()  # a clear error before any fork
    return _launch(h, h.args.study, gpus)


def _gpus(args: Any) -> list[str] | None:
    """``--gpus``, each GPU checked to exist here (one line and exit 2 if not, before the
    study is touched); None for CPU workers or where the default (every GPU here) applies."""
    from hpo.run.slots import check_gpus, gpu_count, parse_gpus, torch_has_cuda

    gpus = parse_gpus(args.gpus)
    if gpus is not None:
        check_gpus(gpus, gpu_count(), torch_has_cuda(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    return gpus


def _launch(h: Handle, name: str, gpus: list[str] | None) -> int:
    import socket

    from hpo.results.summary import best_text, format_status, status_record
    from hpo.run.launch import SQLITE_SAFE_WORKERS, Supervisor, WorkerOptions
    from hpo.run.memory import MemoryWatch, Packing
    from hpo.run.slots import Slot, assign_slots, gpu_count, idle_gpus, visible_gpus
    from hpo.run.worker import describe_exit, launched_worker_name, reap_process
    from hpo.store.url import ENV_VAR

    args = h.args
    devices = h.spec.resources.devices_per_trial
    if gpus is None and args.workers is None:
        # Every GPU here, else one CPU worker (also where CUDA_VISIBLE_DEVICES lists GPUs
        # that a machine without a driver does not have).
        gpus = (visible_gpus() if gpu_count() else None) or None
    auto = args.per_gpu == "auto"
    if auto and devices > 1:
        raise HpoError(
            f"--per-gpu auto: each trial has {devices} GPUs to itself "
            f"(resources.devices_per_trial: {devices}); use --per-gpu 1"
        )
    per_gpu = 1 if auto else args.per_gpu  # auto: one each until a trial's peak is known
    slots = assign_slots(gpus, per_gpu, args.workers, devices_per_trial=devices)
    idle = idle_gpus(gpus, slots)
    if idle:
        say(
            f"hpo: warning: GPU {','.join(idle)} left idle: {len(gpus or ())} GPUs make "
            f"{len(slots)} gang(s) of {devices} (resources.devices_per_trial)"
        )
    if h.url.kind == "sqlite" and len(slots) > SQLITE_SAFE_WORKERS:
        say(
            f"hpo: warning: {len(slots)} workers on one SQLite file will wait on its lock; "
            f"for more than {SQLITE_SAFE_WORKERS} workers use PostgreSQL or MySQL"
        )
    # The URL reaches the workers through their environment: a password in it must not show
    # in their command lines (``ps``).
    worker_args = WorkerOptions.from_args(args, study=name).to_argv()
    per_trial = f", {devices} devices per trial" if devices > 1 else ""
    say(
        f"hpo: study {name} in {h.shown}: {len(slots)} worker(s){per_trial} "
        + ", ".join(s.label for s in slots)
    )

    study = h.study
    host = socket.gethostname()
    gpu_of = {launched_worker_name(s.index): s.gpu for s in slots}

    def summary() -> str:
        return format_status(status_record(study), gpus=gpu_of)

    rebalance = None
    if auto and gpus:
        watch = MemoryWatch(study, Packing(list(gpus)), host, say=say)

        def rebalance(live: list[Slot]) -> dict[str, int]:
            gpu_of.update({launched_worker_name(s.index): s.gpu for s in live})
            return watch(live)

    def hand_on(slot: Slot, pid: int, code: int) -> None:
        # A dead worker's trial is failed and its retry queued now, not after the grace
        # period: a sibling (or the restarted worker) resumes it from its checkpoint.
        for number in reap_process(study, host, pid):
            say(
                f"[{slot.label}] trial {number} of the dead worker (exit "
                f"{describe_exit(code)}) failed; its retry resumes from its checkpoint"
            )

    code = Supervisor(
        worker_args,
        slots,
        env={ENV_VAR: str(h.url)},
        say=say,
        status=summary,
        on_exit=hand_on,
        rebalance=rebalance,
    ).run()
    best = best_text(study)
    if best is not None:
        say(best)
    return code


def worker(h: Handle) -> int:
    from hpo.run.slots import wait_briefly

    # Before torch loads: a worker started by hand waits as the launcher's workers do.
    wait_briefly(os.environ)

    from optuna.trial import TrialState

    from hpo.records import better, complete_val_loss, is_continuation, rank_key
    from hpo.results.summary import best_text, format_trial
    from hpo.run.launch import EXIT_GAVE_UP, EXIT_PREEMPTED, EXIT_RECYCLE, WorkerOptions
    from hpo.run.worker import (
        MAX_CONSECUTIVE_FAILURES,
        RESTART_SEED_STRIDE,
        WORKER_INDEX_VAR,
        checkpoint_root,
        run_worker,
        worker_identity,
    )
    from hpo.search.study import make_sampler
    from hpo.store.outage import outage_seconds

    options = WorkerOptions.from_args(h.args)
    worker, seed_offset = worker_identity()
    launched = WORKER_INDEX_VAR in os.environ
    # A launcher restarts its workers, also while the database restarts: they wait for it.
    study, spec = h.load(seed_offset=seed_offset, outage=outage_seconds() if launched else 0)
    joined = len(study.get_trials(deepcopy=False))
    if joined:
        # A worker joining a study under way (restarted, recycled, relaunched) must not draw
        # the same parameters as the process that held its slot before.
        study.sampler = make_sampler(spec, seed_offset + RESTART_SEED_STRIDE * joined)
    spec = spec.with_budget(options.n_trials, options.timeout)
    budget = spec.budget
    if not launched:
        say(
            f"hpo: study {options.study} in {h.shown}; worker {worker}; budget "
            + ", ".join(
                x
                for x in (
                    budget.n_trials and f"{budget.n_trials} trials",
                    budget.timeout and f"{budget.timeout:g}s",
                )
                if x
            )
        )

    def progress(trial: Any, trials: list[Any]) -> None:
        done = sum(
            t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not is_continuation(t)
            for t in trials
        )  # configurations, as the budget counts them
        maximize = spec.study.maximize
        ahead = min(
            (t for t in trials if t.state == TrialState.COMPLETE and t.number != trial.number),
            key=rank_key(maximize),
            default=None,
        )
        before = None if ahead is None else complete_val_loss(ahead)
        value = complete_val_loss(trial) if trial.state == TrialState.COMPLETE else None
        new_best = value is not None and better(value, before, maximize)
        best = value if new_best else before
        say(
            format_trial(
                trial, done, budget.n_trials, best, new_best=new_best, metric=spec.study.metric
            )
        )

    report = run_worker(
        study,
        spec,
        worker=worker,
        checkpoint_dir=checkpoint_root(options.checkpoint_dir),
        on_trial=progress,
        max_trials=options.max_trials_per_process,
        storage_url=h.url,
    )
    say(f"hpo: worker {worker} stopped ({report.stopped_because}) after {report.trials} trial(s)")
    if report.stopped_because == "failures":
        say(
            f"hpo: error: {MAX_CONSECUTIVE_FAILURES} trials failed in a row; last: "
            f"{report.last_failure}"
        )
        return EXIT_GAVE_UP
    if report.stopped_because == "recycle":
        return EXIT_RECYCLE
    if report.stopped_because == "preempted":
        return EXIT_PREEMPTED
    if not launched:
        best = best_text(study)
        if best is not None:
            say(best)
    return EXIT_OK


def reap(h: Handle) -> int:
    from hpo.run.worker import reap as reap_dead_workers

    failed = reap_dead_workers(h.study, everything=h.args.all)
    print(
        f"reaped {len(failed)} trial(s)"
        + (": " + ", ".join(f"#{n}" for n in failed) if failed else "")
    )
    return EXIT_OK


def template(h: Handle) -> int:
    from hpo.run.cluster import render

    args, url = h.args, h.url
    kind = url.kind
    if kind == "sqlite":
        raise HpoError(
            "a cluster needs a database server every machine reaches "
            "(--storage postgresql+psycopg2://..., mysql+pymysql://..., or "
            "grpc://HOST:PORT of an hpo storage-proxy), or a journal:// file on a "
            "filesystem they share; not SQLite"
        )
    h.load()  # the workers will need it
    if kind == "journal":
        if url.path is not None and not url.path.is_absolute():
            warn(
                f"the journal path {str(url.path)!r} is relative: each node "
                "reads it from its own working directory; give its absolute path on the "
                "shared filesystem (journal:///shared/...)"
            )
    else:
        host = url.address()[0] if kind == "grpc" else url.host
        if host in (None, "", "localhost", "::1") or host.startswith("127."):
            what = "storage proxy" if kind == "grpc" else "database"
            warn(
                f"the storage host {host or '(a local socket)'!r} is this machine as every "
                "node sees itself: the workers on other machines will not reach it; give the "
                f"{what}'s network name (--storage or HPO_STORAGE)"
            )
    print(
        render(
            args.kind,
            args.study,
            url,
            nodes=args.nodes,
            gpus=args.gpus_per_node,
            image=args.image,
            checkpoint_dir=args.checkpoint_dir,
            python=args.python or sys.executable,
            devices_per_trial=h.spec.resources.devices_per_trial,
            time=args.time,
            partition=args.partition,
            account=args.account,
            cpu=args.cpu,
            memory=args.memory,
            shm_size=args.shm_size,
        ),
        end="",
    )
    return EXIT_OK


def storage_proxy(h: Handle) -> int:
    import signal
    import socket
    import threading

    args = h.args
    server, bound = h.serve_proxy(host=args.host, port=args.port, threads=args.threads)
    local = args.host in ("127.0.0.1", "localhost", "::1")
    if not local:
        warn(
            f"listening on {args.host}: anyone who reaches this port can read and change the "
            "studies (the proxy has no login or TLS)"
        )
    # Every address (0.0.0.0): the workers reach it by this machine's name.
    reach = socket.gethostname() if args.host in ("0.0.0.0", "::") else args.host
    address = f"grpc://{reach}:{bound}"
    say(f"hpo: storage proxy for {h.shown} on {args.host}:{bound}, {args.threads} threads")
    say(f"hpo: workers: --storage {address}   (Ctrl-C stops it)")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.stop(grace=5).wait()
    say("hpo: storage proxy stopped")
    return EXIT_OK
