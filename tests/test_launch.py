"""The launcher: which worker gets which GPU; a dead child's trial is handed on at once, no
secret in a command line, no race with the main loop when stopping, no worker outlives its
launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import server_url
from hpo.cli import build_parser
from hpo.errors import HpoError
from hpo.run.launch import WorkerOptions
from hpo.run.memory import Packing, trials_per_gpu
from hpo.run.slots import (
    Slot,
    assign_slots,
    check_gpus,
    gpu_count,
    idle_gpus,
    parse_gpus,
    usable_cores,
)
from processes import ROOT, SUPPORT, run_hpo, start_hpo, wait_for
from workers import FAST, epoch_log, fast_env, finished, make_study, trials


# --------------------------------------------------------------------------------------------
# GPU slots: the one place that maps GPUs to workers.


def test_assign_slots_round_robin_over_gpus():
    assert assign_slots(["0", "1"], per_gpu=2, cpus=16) == [
        Slot(0, "0", 4), Slot(1, "1", 4), Slot(2, "0", 4), Slot(3, "1", 4)]
    assert [s.threads for s in assign_slots(["0", "1", "2"], per_gpu=2, cpus=4)] == [1] * 6
    assert assign_slots(None, workers=3, cpus=8) == [Slot(0, threads=2), Slot(1, threads=2),
                                                     Slot(2, threads=2)]
    assert assign_slots(None, cpus=2) == [Slot(0, threads=2)]
    assert assign_slots(None, workers=4, cpus=2)[3] == Slot(3, threads=1)
    assert Slot(0, threads=2).env({})["OMP_NUM_THREADS"] == "2"
    env = Slot(2, "3").env({"PATH": "/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["HPO_WORKER_INDEX"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in Slot(0).env({})


def test_gpus_make_gangs_of_devices_per_trial():
    """``resources.devices_per_trial`` N: consecutive GPUs make a worker's gang; a remainder
    is left idle (and said), too few GPUs or GPUs shared by gangs are refused."""
    gpus = [str(i) for i in range(8)]
    slots = assign_slots(gpus, devices_per_trial=2)
    assert slots == [Slot(0, "0,1"), Slot(1, "2,3"), Slot(2, "4,5"), Slot(3, "6,7")]
    assert slots[1].env({})["CUDA_VISIBLE_DEVICES"] == "2,3" and slots[1].label == "w1/gpu2,3"
    odd = assign_slots(["0", "1", "2"], devices_per_trial=2)
    assert odd == [Slot(0, "0,1")] and idle_gpus(["0", "1", "2"], odd) == ["2"]
    assert idle_gpus(gpus, slots) == []
    with pytest.raises(HpoError, match="--gpus: 1 GPU.*cannot hold a trial on 2"):
        assign_slots(["0"], devices_per_trial=2)
    with pytest.raises(HpoError, match="--per-gpu 2: each trial has 2 GPUs to itself"):
        assign_slots(gpus, per_gpu=2, devices_per_trial=2)
    # CPU workers: the cores are split among every rank of every worker.
    assert assign_slots(None, workers=1, cpus=8, devices_per_trial=2) == [Slot(0, threads=4)]
    assert assign_slots(None, workers=2, cpus=2, devices_per_trial=2)[1] == Slot(1, threads=1)


def test_every_worker_spins_briefly_unless_told_otherwise():
    """OpenMP's threads spin a few microseconds when they wait, then sleep
    (``benchmarks/threads.py``: OpenMP's long default spin on shared cores made a training up
    to 10x slower); a policy the user set stays."""
    assert Slot(0, threads=2).env({})["GOMP_SPINCOUNT"] == "3000"
    assert Slot(0, "0").env({})["GOMP_SPINCOUNT"] == "3000"
    # A user's wait policy or spin count stands, and the other is left alone.
    mine = Slot(0, threads=2).env({"OMP_WAIT_POLICY": "ACTIVE"})
    assert mine["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in mine
    mine = Slot(0, threads=2).env({"GOMP_SPINCOUNT": "0"})
    assert mine["GOMP_SPINCOUNT"] == "0" and "OMP_WAIT_POLICY" not in mine


def test_workers_share_the_cores_this_process_may_use():
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert assign_slots(None, workers=1)[0].threads == usable_cores()


@pytest.mark.parametrize("given", [None, "ACTIVE"])
def test_a_worker_started_by_hand_spins_briefly_too(given, tmp_path):
    """``hpo worker`` outside a launcher: the job sees OpenMP's short spin (set before torch
    loads), unless the user chose a policy."""
    (tmp_path / "envjob.py").write_text(
        "import os\n\n"
        "def job(trial, params, context):\n"
        "    trial.set_user_attr('policy', os.environ.get('OMP_WAIT_POLICY'))\n"
        "    trial.set_user_attr('spin', os.environ.get('GOMP_SPINCOUNT'))\n"
        "    return 1.0\n")
    spec = tmp_path / "policy.yaml"
    spec.write_text(FAST.format(name="policy", n=1, low=1, high=1, pruner="none").replace(
        "fastjob:epochs_job", "envjob:job"))
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    env = fast_env(tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{SUPPORT}")
    if given:
        env["OMP_WAIT_POLICY"] = given
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_WAIT_POLICY", raising=False)  # a policy of the test run's own
        mp.delenv("GOMP_SPINCOUNT", raising=False)
        assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path,
                       env=env).returncode == 0
        r = run_hpo("worker", "policy", "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    attrs = trials("policy", url)[0].user_attrs
    assert (attrs["policy"], attrs["spin"]) == ((given, None) if given else (None, "3000"))


@pytest.mark.parametrize("given, expected", [
    ({}, {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}),
    ({"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    ({"MKL_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}),
    ({"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "1"},
     {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "1"}),
])
def test_a_cpu_workers_thread_count_is_one_for_both_math_libraries(given, expected):
    """The launcher splits the cores among CPU workers; a count the user set for one library
    holds for the other, whose default would otherwise win (torch takes the larger)."""
    env = Slot(0, threads=2).env({"PATH": os.environ["PATH"], **given})
    assert {k: env[k] for k in expected} == expected
    if given == {"OMP_NUM_THREADS": "1"}:  # what torch then runs with, in a real process
        probe = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
            env=env, capture_output=True, text=True, check=True)
        assert probe.stdout.strip() == "1"


def test_parse_gpus():
    assert parse_gpus("0,1, 3") == ["0", "1", "3"]
    assert parse_gpus(None) is None
    for bad in ("0,0", "a,b", "", "1;2"):
        with pytest.raises(HpoError, match="--gpus"):
            parse_gpus(bad)


def test_gpus_all_without_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(HpoError, match="no GPU is visible"):
        parse_gpus("all")


@pytest.mark.parametrize("gpus, count, torch_cuda, visible, error", [
    (["0", "1"], 2, True, None, None),
    (["GPU-8f2e"], 1, True, None, None),
    (["2", "3"], 8, True, "2,3", None),
    (["0", "1"], None, True, None, "--gpus 0,1: this machine has no CUDA GPU (no NVIDIA driver)"),
    (["0"], 0, True, None, "--gpus 0: this machine has no CUDA GPU (the driver lists no GPU)"),
    (["0"], 1, False, None, "--gpus 0: the torch installed here is built without CUDA"),
    (["0", "2", "3"], 2, True, None, "--gpus 0,2,3: GPU 2,3 does not exist; this machine has "
                                     "2 (GPUs 0-1)"),
    (["1"], 1, True, None, "--gpus 1: GPU 1 does not exist; this machine has 1 (GPU 0)"),
    (["0", "1"], 4, True, "2,3", "--gpus 0,1: GPU 0,1 is not among CUDA_VISIBLE_DEVICES=2,3"),
])
def test_gpus_that_do_not_exist_are_refused(gpus, count, torch_cuda, visible, error):
    """The driver's GPU count (simulated here), the torch build and the launcher's own
    ``CUDA_VISIBLE_DEVICES`` decide which ``--gpus`` lists can run."""
    if error is None:
        check_gpus(gpus, count, torch_cuda, visible)
    else:
        with pytest.raises(HpoError) as e:
            check_gpus(gpus, count, torch_cuda, visible)
        assert str(e.value).startswith(error) and "\n" not in str(e.value)


@pytest.mark.skipif(gpu_count() is not None, reason="needs a machine without an NVIDIA driver")
@pytest.mark.parametrize("command", ["launch", "run"])
def test_gpus_on_a_machine_without_cuda_exits_2_with_one_line_and_starts_nothing(
    command, tmp_path
):
    """The real check, through the CLI: no driver here, so ``--gpus 0,1`` is bad input, said
    before the study is created or any worker starts."""
    url = f"sqlite:///{tmp_path / 'gpus.db'}"
    env = fast_env(tmp_path, PYTHONPATH=f"{ROOT}{os.pathsep}{SUPPORT}")
    if command == "launch":
        name = make_study(tmp_path, url, n=2, env=env)
        target = name
    else:
        target = str(tmp_path / "never.yaml")
        (tmp_path / "never.yaml").write_text(FAST.format(name="never", n=2, low=1, high=1,
                                                         pruner="none"))
    r = run_hpo(command, target, "--storage", url, "--gpus", "0,1", cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "hpo: error: --gpus 0,1: this machine has no CUDA GPU (no NVIDIA driver); use "
        "--workers N for CPU workers"
    ]
    assert "worker" not in r.stdout and not (tmp_path / "epochs.log").exists()
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    assert names == ([target] if command == "launch" else [])
    if command == "launch":
        assert trials(target, url) == []


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_count(), reason="needs an NVIDIA GPU")
def test_the_driver_counts_the_gpus_torch_sees_and_one_past_them_is_refused(tmp_path):
    """Where GPUs exist: NVML's count (no torch in the launcher) is torch's, each GPU's memory
    is known, and ``--gpus N`` with N the count is bad input through the CLI."""
    from hpo.run.slots import gpu_memory_mb

    count = gpu_count()
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
        env={k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"},
        capture_output=True, text=True, check=True)
    assert int(probe.stdout) == count
    assert (gpu_memory_mb("0") or 0) > 1_000
    url = f"sqlite:///{tmp_path / 'gpus.db'}"
    env = fast_env(tmp_path, PYTHONPATH=f"{ROOT}{os.pathsep}{SUPPORT}")
    name = make_study(tmp_path, url, n=1, env=env)
    r = run_hpo("launch", name, "--storage", url, "--gpus", f"0,{count}", cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"hpo: error: --gpus 0,{count}: GPU {count} does not exist; this machine has {count} "
        f"({'GPU 0' if count == 1 else f'GPUs 0-{count - 1}'})"]


@pytest.mark.skipif(gpu_count() is not None, reason="needs a machine without an NVIDIA driver")
def test_run_without_gpus_runs_a_cpu_worker_whatever_cuda_visible_devices_says(tmp_path):
    """``hpo run`` picks every GPU here by default: none without a driver, even where
    ``CUDA_VISIBLE_DEVICES`` names some (it used to pin a worker to a GPU that is not
    there)."""
    url = f"sqlite:///{tmp_path / 'cpu.db'}"
    spec = tmp_path / "cpu.yaml"
    spec.write_text(FAST.format(name="cpu", n=1, low=1, high=1, pruner="none"))
    env = fast_env(tmp_path, CUDA_VISIBLE_DEVICES="0,1")
    r = run_hpo("run", str(spec), "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"hpo: study cpu in {url}: 1 worker(s) w0\n" in r.stdout
    assert len(finished(trials("cpu", url))) == 1


# --------------------------------------------------------------------------------------------
# --per-gpu auto: as many trials on a GPU as its memory holds (a simulated memory probe: the
# numbers an H100's driver and a first trial would give).

H100_MB = 81_559.0


def test_trials_per_gpu_fill_85_percent_of_the_memory():
    # 0.85 * 81,559 MB = 69,325 MB over (peak + 600 MB of CUDA context per process)
    assert trials_per_gpu(9_000, H100_MB) == 7
    assert trials_per_gpu(9_000, H100_MB, overhead_mb=0) == 7
    assert trials_per_gpu(30_000, H100_MB) == 2
    assert trials_per_gpu(70_000, H100_MB) == 1  # too big to share: alone, not zero
    assert trials_per_gpu(100, H100_MB) == 8  # the cap: more would only queue
    assert trials_per_gpu(100, H100_MB, most=32) == 32
    assert trials_per_gpu(11_000, 24_576, fraction=0.9) == 1  # a 24 GB card
    with pytest.raises(ValueError):
        trials_per_gpu(1_000, 0)


def test_packing_follows_the_measured_peak_and_backs_off_after_an_out_of_memory():
    peaks: dict[str, float | None] = {"0": None, "1": None}

    def probe(gpu: str) -> tuple[float | None, float]:
        return peaks[gpu], H100_MB

    packing = Packing(["0", "1"])
    assert packing.measure(probe) == {"0": 1, "1": 1}  # nothing measured: one each
    peaks.update({"0": 9_000, "1": 20_000})
    assert packing.measure(probe) == {"0": 7, "1": 3}
    assert packing.out_of_memory("0") and packing.counts == {"0": 6, "1": 3}
    peaks["0"] = 2_000  # smaller trials later: the GPU that ran out stays at its ceiling
    assert packing.measure(probe)["0"] == 6
    peaks["0"] = 30_000  # bigger ones: fewer
    assert packing.measure(probe)["0"] == 2
    assert packing.out_of_memory("0") and packing.counts["0"] == 1
    assert not packing.out_of_memory("0") and packing.counts["0"] == 1  # alone: no lower


def test_an_out_of_memory_on_a_packed_gpu_lowers_the_count_and_retries_the_trial():
    """A simulated GPU: trials of a true peak of 14 GB, measured at 9 GB by a first, smaller
    trial, run beside ``count - 1`` others until the memory they all need exceeds the GPU.
    Each out-of-memory lowers the count and the trial runs again, as the launcher does."""
    true_peak, overhead = 14_000.0, 600.0
    packing = Packing(["0"])
    packing.measure(lambda gpu: (9_000.0, H100_MB))
    assert packing.counts["0"] == 7

    def trial(count: int) -> float:
        if count * (true_peak + overhead) > H100_MB:
            raise MemoryError(f"{count} trials of {true_peak} MB")
        return 0.25

    tries = []
    while True:
        tries.append(packing.counts["0"])
        try:
            assert trial(packing.counts["0"]) == 0.25
            break
        except MemoryError:
            assert packing.out_of_memory("0")
    assert tries == [7, 6, 5] and packing.counts == {"0": 5} == packing.ceilings
    # Later measurements cannot pack it tighter again; a GPU run alone is not lowered.
    packing.measure(lambda gpu: (1_000.0, H100_MB))
    assert packing.counts["0"] == 5
    alone = Packing(["1"])
    assert not alone.out_of_memory("1") and alone.counts == {"1": 1}


def test_per_gpu_takes_auto_or_a_count():
    parse = build_parser().parse_args
    assert parse(["launch", "s", "--gpus", "0", "--per-gpu", "auto"]).per_gpu == "auto"
    assert parse(["launch", "s", "--gpus", "0", "--per-gpu", "3"]).per_gpu == 3
    with pytest.raises(SystemExit):
        parse(["launch", "s", "--per-gpu", "many"])


def test_the_memory_watch_reads_peaks_and_out_of_memory_failures_from_the_study(tmp_path):
    """The launcher's side of ``--per-gpu auto``: a complete trial's peak on a GPU sets the
    count; a trial of this machine's worker that failed out of memory lowers its GPU's count
    and is retried from its checkpoint."""
    from optuna.trial import TrialState

    from hpo.run.memory import MemoryWatch
    from hpo.run.worker import launched_worker_name
    from hpo.store.storage import open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'watch.db'}")
    study = optuna.create_study(study_name="watch", storage=storage)
    said: list[str] = []
    watch = MemoryWatch(study, Packing(["0", "1"]), "node-a", total_mb=lambda g: H100_MB,
                        say=said.append)
    slots = [Slot(0, "0"), Slot(1, "1")]
    assert watch(slots) == {"0": 1, "1": 1}

    first = study.ask()
    for key, value in {"device": "cuda:NVIDIA H100 80GB HBM3", "peak_memory_mb": 9_000.0,
                       "host": "node-a", "worker": launched_worker_name(0)}.items():
        first.set_user_attr(key, value)
    study.tell(first, 0.5)
    assert watch(slots) == {"0": 7, "1": 7}

    slots += [Slot(2 + i, gpu) for i, gpu in enumerate(["0", "1"] * 6)]
    oom = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)})
    for key, value in {"host": "node-a", "worker": launched_worker_name(3),
                       "fail_reason": "oom", "checkpoint": "ckpt/3"}.items():
        oom.set_user_attr(key, value)
    study.tell(oom, state=TrialState.FAIL)
    elsewhere = study.ask()
    for key, value in {"host": "node-b", "worker": launched_worker_name(3),
                       "fail_reason": "oom"}.items():
        elsewhere.set_user_attr(key, value)
    study.tell(elsewhere, state=TrialState.FAIL)

    assert watch(slots) == {"0": 7, "1": 6}  # worker 3 runs on GPU 1; node-b is not ours
    assert watch(slots) == {"0": 7, "1": 6}  # each failure counts once
    retry = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == oom.params
    assert said == [f"hpo: trial {oom.number} ran out of memory on GPU 1 beside others: 6 "
                    "worker(s) there from now on; the trial is retried"]


def test_the_supervisor_starts_and_retires_workers_of_a_gpu_as_rebalance_says(tmp_path):
    """Real workers (of the fast job: a GPU slot runs it on the CPU here): the GPU's count
    goes 1 -> 3 -> 1 as a memory watch would say it; the retired workers re-queue their
    trials, which the others finish, and the launch ends well."""
    from hpo.run.launch import Supervisor

    url = f"sqlite:///{tmp_path / 'pack.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.3, PYTHONPATH=f"{ROOT}{os.pathsep}{SUPPORT}")
    name = make_study(tmp_path, url, n=8, low=3, high=3, env=env)
    asked: list[int] = []

    def rebalance(live: list[Slot]) -> dict[str, int]:
        asked.append(len(live))
        return {"0": 3 if len(asked) < 4 else 1}

    said: list[str] = []
    sup = Supervisor([name], [Slot(0, "0", threads=1)], env={**env, "HPO_STORAGE": url},
                     say=said.append, rebalance=rebalance, rebalance_seconds=1.0)
    assert sup.run() == 0, "\n".join(said)
    assert "hpo: GPU 0: 3 workers (was 1)" in said and "hpo: GPU 0: 1 workers (was 3)" in said
    share = max(1, usable_cores() // 3)  # the new workers' share of the cores
    assert [c.slot for c in sup.children] == [Slot(0, "0", 1), Slot(1, "0", share),
                                              Slot(2, "0", share)]
    assert [c.retiring for c in sup.children] == [False, True, True]
    assert len(finished(trials(name, url))) == 8


def test_the_supervisor_starts_no_worker_once_one_found_the_budget_met(tmp_path):
    """A GPU's worker that finished (exit 0: the budget is met) is not replaced while its
    siblings finish their last trials: a new one would only start and stop."""
    from hpo.run.launch import Supervisor

    url = f"sqlite:///{tmp_path / 'end.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.5, PYTHONPATH=f"{ROOT}{os.pathsep}{SUPPORT}")
    name = make_study(tmp_path, url, n=2, low=1, high=6, env=env)
    said: list[str] = []
    sup = Supervisor([name], [Slot(0, "0", 1), Slot(1, "0", 1)],
                     env={**env, "HPO_STORAGE": url}, say=said.append,
                     rebalance=lambda live: {"0": 2}, rebalance_seconds=0.2)
    assert sup.run() == 0, "\n".join(said)
    assert len(sup.children) == 2 and len(finished(trials(name, url))) == 2


# --------------------------------------------------------------------------------------------
# A worker's orders: one options object, written by the launcher, read by ``hpo worker``.


@pytest.mark.parametrize("options", [
    WorkerOptions("s"),
    WorkerOptions("my-study", n_trials=7, timeout=0.1, checkpoint_dir="/tmp/check points",
                  max_trials_per_process=2),
    WorkerOptions("s", timeout=3600.0),
])
def test_worker_options_round_trip_through_the_worker_command_line(options):
    argv = options.to_argv()
    assert WorkerOptions.from_args(build_parser().parse_args(["worker", *argv])) == options


def test_the_launcher_hands_its_workers_every_worker_flag_and_never_the_storage():
    args = build_parser().parse_args([
        "launch", "s", "--storage", "postgresql://bob:pw@db/x", "--n-trials", "9", "--timeout",
        "60", "--checkpoint-dir", "ck", "--max-trials-per-process", "3", "--workers", "2"])
    argv = WorkerOptions.from_args(args).to_argv()
    assert argv == ["s", "--n-trials", "9", "--timeout", "60.0", "--checkpoint-dir", "ck",
                    "--max-trials-per-process", "3"]
    assert WorkerOptions.from_args(build_parser().parse_args(["worker", *argv])) == \
        WorkerOptions("s", 9, 60.0, "ck", 3)
    run = build_parser().parse_args(["run", "spec.yaml", "--n-trials", "2"])
    assert WorkerOptions.from_args(run, study="from-spec").to_argv() == [
        "from-spec", "--n-trials", "2"]


# --------------------------------------------------------------------------------------------
# The supervisor.


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_kill_9_while_the_rest_of_the_budget_runs_ends_with_the_budget_finished(
        round_, storage_url, tmp_path):
    """The issue's scenario: three workers, three trials, one worker killed after its trial's
    first epoch. The heartbeat grace period is far longer than the study, so only the launcher
    can hand the dead trial on; the surviving workers must wait for it, not leave."""
    import random

    env = fast_env(tmp_path, epoch_seconds=0.4, HPO_GRACE_PERIOD="600")
    name = make_study(tmp_path, storage_url, n=3, low=4, high=4, env=env)
    launch = start_hpo("launch", name, "--workers", "3", cwd=tmp_path,
                       env={**env, "HPO_STORAGE": storage_url})
    try:
        def victim():
            first = [(n, pid) for n, e, pid in epoch_log(tmp_path) if e == 1]
            return first[0] if len(first) >= 1 else None
        time.sleep(random.Random(round_).uniform(0, 0.3))
        number, pid = wait_for(victim, what="a trial's first epoch")
        os.kill(pid, signal.SIGKILL)
        out, _ = launch.communicate(timeout=120)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    ts = trials(name, storage_url)
    assert len(finished(ts)) == 3, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    dead = ts[number]
    assert dead.state == TrialState.FAIL and dead.user_attrs["fail_reason"] == "worker died"
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == number]
    assert retry.state == TrialState.COMPLETE and "fail_reason" not in retry.user_attrs
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert f"trial {number} of the dead worker" in out


@pytest.mark.slow
def test_no_password_in_any_command_line(server_urls, tmp_path):
    url = server_url(server_urls, "postgresql")
    secret = "pw-s3cr3t-9f2"
    with_password = url.replace("postgres@", f"postgres:{secret}@")  # trust auth ignores it
    env = fast_env(tmp_path, epoch_seconds=0.3)
    name = make_study(tmp_path, with_password, n=4, low=3, high=3, env=env)
    launch = start_hpo("launch", name, "--workers", "2", cwd=tmp_path,
                       env={**env, "HPO_STORAGE": with_password})
    try:
        wait_for(lambda: len(_children(launch.pid)) == 2 and epoch_log(tmp_path),
                 what="two workers training")
        args = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
        out, _ = launch.communicate(timeout=120)
    finally:
        launch.kill()
    assert launch.returncode == 0, out[-3000:]
    assert "hpo worker" in args or "-m hpo worker" in args
    assert secret not in args
    assert secret not in out


def test_stopping_never_reads_a_child_the_main_loop_clears(monkeypatch):
    """Ctrl-C's grace-period killer runs in a thread while the main loop sets a child's
    ``proc`` to None when it exits; it must work from its own list of processes."""
    import hpo.run.launch as launch

    monkeypatch.setattr(launch, "STOP_GRACE", 1.0)
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "up\n"

    class Child(launch._Child):
        reads = 0

        @property
        def proc(self):  # the main loop clears it between any two reads of another thread
            if threading.current_thread() is threading.main_thread():
                return stubborn
            Child.reads += 1
            return stubborn if Child.reads % 2 else None

        @proc.setter
        def proc(self, value):
            pass

    supervisor = launch.Supervisor([], [], say=lambda text: None)
    supervisor.children = [Child(launch.Slot(0))]
    errors = []
    monkeypatch.setattr("threading.excepthook", lambda args: errors.append(args.exc_value))
    try:
        supervisor._on_signal(signal.SIGTERM, None)
        assert stubborn.wait(timeout=10) == -signal.SIGKILL
    finally:
        stubborn.kill()
    assert errors == []


@pytest.mark.slow
def test_workers_of_a_killed_launcher_requeue_their_trials_and_exit(tmp_path):
    url = f"sqlite:///{tmp_path / 'orphans.db'}"
    env = fast_env(tmp_path, epoch_seconds=0.5, HPO_GRACE_PERIOD="600")
    name = make_study(tmp_path, url, n=4, low=8, high=8, env=env)
    launch = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path,
                       env=env)
    try:
        wait_for(lambda: len({n for n, _, _ in epoch_log(tmp_path)}) >= 2, what="two trials")
        workers = _children(launch.pid)
        assert len(workers) == 2, workers
        os.kill(launch.pid, signal.SIGKILL)
        launch.wait()

        def gone():
            return all(not os.path.exists(f"/proc/{p}") or
                       open(f"/proc/{p}/stat").read().split()[2] == "Z" for p in workers)
        wait_for(gone, timeout=30, what="the orphaned workers to exit")
    finally:
        launch.kill()
    ts = trials(name, url)
    assert not [t for t in ts if t.state == TrialState.RUNNING], launch.stdout.read()
    assert len([t for t in ts if t.state == TrialState.WAITING]) == 2
    r = start_hpo("launch", name, "--storage", url, "--workers", "2", cwd=tmp_path, env=env)
    out, _ = r.communicate(timeout=120)
    assert r.returncode == 0, out[-3000:]
    ts = trials(name, url)
    assert len(finished(ts)) == 4 and not [t for t in ts if t.state == TrialState.FAIL]
