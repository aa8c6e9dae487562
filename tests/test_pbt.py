"""Population-based training (``pruner: {name: pbt}``, hpo/search/schedulers/pbt.py): members pause every
interval; when a generation is complete the bottom quantile goes on from a top member's
checkpoint with explored params, the lineage on each trial; one-line errors for bad options.
"""

from __future__ import annotations

import math
import random

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from conftest import SUPPORT, run_hpo
from processes import one_line_error
from workers import epoch_log, fast_env, make_study, trials

from hpo.records import is_continuation
from hpo.search.schedulers.continuation import configuration
from hpo.search.schedulers.pbt import LINEAGE_ATTR, explore, quantiles, schedule

PBT = "pbt, interval: 1, quantile: 0.25, resample_probability: 0.0"
"""Four members pause after every epoch; one at each end of a generation of four."""
LRS = (10 ** -2.5, 1e-3, 1e-2, 1e-1)
"""The fast job's loss is (log10 lr + 2.5)**2 + 1/epoch: the first member leads every
generation, the last trails it (and so exploits the first from epoch 1 on)."""


def test_explore_perturbs_floats_within_their_range_and_keeps_the_rest():
    dists = {
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "dropout": FloatDistribution(0.0, 0.5, step=0.1),
        "batch_size": IntDistribution(8, 64),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
    }
    params = {"lr": 1e-3, "dropout": 0.2, "batch_size": 32, "optimizer": "adam"}
    seen = set()
    for seed in range(50):
        out = explore(params, dists, random.Random(seed), resample_probability=0.0)
        assert out["batch_size"] == 32 and out["optimizer"] == "adam"
        assert math.isclose(out["lr"], 8e-4) or math.isclose(out["lr"], 1.25e-3)
        assert round(out["dropout"] * 10) / 10 == pytest.approx(out["dropout"])  # on its step
        seen.add(round(out["lr"], 6))
    assert seen == {8e-4, 1.25e-3}
    # At the edge of its range a factor is clipped; a resample stays inside it.
    edge = explore({**params, "lr": 1e-1}, dists, random.Random(1), 0.0)["lr"]
    assert edge == pytest.approx(1e-1) or edge == pytest.approx(8e-2)
    for seed in range(50):
        drawn = explore(params, dists, random.Random(seed), resample_probability=1.0)
        assert 1e-5 <= drawn["lr"] <= 1e-1 and 0.0 <= drawn["dropout"] <= 0.5


def test_a_resume_trains_on_with_its_own_hyperparameters(tmp_path):
    """A checkpoint restored into an optimizer built with other params (PBT's explore) keeps
    its moments and the schedule's progress, and trains on at the new learning rate and weight
    decay (the optimizer's state dict alone would bring back the old ones)."""
    from hpo.job.checkpoint import restore_checkpoint, save_checkpoint
    from hpo.job.optim import lr_factor, make_scheduler

    params = {"warmup_fraction": 0.5, "schedule": "linear"}

    def built(lr, decay):
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=decay)
        return model, optimizer, make_scheduler(optimizer, 10, params)

    model, optimizer, scheduler = built(1e-2, 0.1)
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=optimizer, scheduler=scheduler,
                    scaler=scaler, epoch=1, progress={})
    again, optimizer2, scheduler2 = built(4e-3, 0.01)
    restore_checkpoint(tmp_path / "c.pt", model=again, optimizer=optimizer2,
                       scheduler=scheduler2, scaler=scaler)
    group = optimizer2.param_groups[0]
    assert scheduler2.last_epoch == 3
    assert group["lr"] == pytest.approx(4e-3 * lr_factor(3, 10, 0.5, "linear"))
    assert group["weight_decay"] == 0.01 and scheduler2.base_lrs == [4e-3]
    moments = optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], moments)
    scheduler2.step()  # and the schedule goes on from there, at the new base
    assert group["lr"] == pytest.approx(4e-3 * lr_factor(4, 10, 0.5, "linear"))


@pytest.mark.slow
def test_the_bottom_member_goes_on_from_the_top_members_checkpoint(storage_url, tmp_path):
    env = fast_env(tmp_path)
    name = make_study(tmp_path, storage_url, n=4, low=4, high=4, pruner=PBT, env=env)
    study = optuna.load_study(study_name=name, storage=storage_url)
    for lr in LRS:
        study.enqueue_trial({"lr": lr, "epochs": 4}, skip_if_exists=False)
    r = run_hpo("worker", name, "--storage", storage_url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ts = trials(name, storage_url)
    members: dict[int, list] = {}
    for t in ts:
        members.setdefault(configuration(t), []).append(t)
    # The budget counts the population: four members, however many continuations ran them.
    assert sorted(members) == [0, 1, 2, 3]
    assert not [t for t in ts if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    assert len([t for t in ts if not is_continuation(t)]) == 4
    log = epoch_log(tmp_path)
    for member, chain in members.items():
        # Every member trained epochs 1 to 4, each once, a segment a trial: paused after 1-3.
        epochs = sorted(e for n, e, _ in log if n in {t.number for t in chain})
        assert epochs == [1, 2, 3, 4], (member, epochs)
        ran = [t for t in chain if t.user_attrs.get("prune_reason") != "exploited"]
        assert [t.state for t in ran] == [TrialState.PRUNED] * 3 + [TrialState.COMPLETE], [(t.number, t.state.name, t.user_attrs.get("prune_reason"), sorted(t.intermediate_values), t.user_attrs.get("paused_at")) for t in chain]
        assert all(t.user_attrs["prune_reason"] == "paused" for t in ran[:3])
    # The worst member exploited the best one after epoch 1, and explored its lr by x0.8 or
    # x1.25; it went on from the best one's checkpoint (epoch 1), not its own.
    worst = members[3]
    exploited = [t for t in worst if t.user_attrs.get("prune_reason") == "exploited"]
    assert exploited and exploited[0].state == TrialState.PRUNED
    final = max(worst, key=lambda t: t.number)
    lineage = final.user_attrs[LINEAGE_ATTR]
    assert lineage[0]["step"] == 1 and lineage[0]["parent"] == 0
    assert lineage[0]["params"]["lr"] == pytest.approx(LRS[0] * 0.8) or \
        lineage[0]["params"]["lr"] == pytest.approx(LRS[0] * 1.25)
    first_after = min((t for t in worst if t.number > exploited[0].number
                       and t.user_attrs.get("prune_reason") != "exploited"),
                      key=lambda t: t.number)
    assert first_after.params["lr"] == pytest.approx(lineage[0]["params"]["lr"])
    assert first_after.user_attrs["resumed_from_epoch"] == 1
    assert str(first_after.user_attrs["checkpoint"]).endswith(f"trial-{first_after.number}.pt")
    # Its schedule of params: its own lr, then the explored one from step 1 on.
    steps = schedule(worst)
    assert steps[0] == (0, {"lr": LRS[3], "epochs": 4}) and steps[1][0] == 1
    # Exploiting paid: the worst member ends far better than its own lr could (>= 2.25).
    assert final.value < 0.5
    # The best member never exploited anyone.
    assert not any(LINEAGE_ATTR in t.user_attrs for t in members[0])
    # The report shows the population: each member's params over time, the exploits marked.
    report = run_hpo("report", name, "--storage", storage_url, "--out", "r.html",
                     cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "r.html").read_text()
    assert 'id="population"' in page and 'id="hpo-population"' in page
    row = page.split('id="population"')[1].split("<tr><td>#3</td>")[1].split("</tr>")[0]
    assert "step 0:" in row and "step 1, from #0:" in row


@pytest.mark.parametrize("pruner, budget, why", [
    ("{name: pbt, quantile: 0.75}", "", "pruner.quantile: expected a fraction in (0, 0.5]"),
    ("{name: pbt, resample_probability: 2}", "",
     "pruner.resample_probability: expected a probability in [0, 1]"),
    ("{name: pbt, interval: 0.5}", "", "pruner.interval: must fall on an evaluation"),
    ("{name: pbt}", "budget: {n_trials: 1}",
     "budget.n_trials: pbt's population is budget.n_trials: expected at least 2"),
    ("{name: pbt, period: 2}", "", "pruner.period: unknown option of the pbt pruner"),
    ("{name: patient, patience: 1, wrapped: {name: pbt}}", "", "cannot be wrapped"),
])
def test_bad_pbt_options_are_one_line_errors(tmp_path, pruner, budget, why):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"""
task: {{kind: custom, entrypoint: "fastjob:epochs_job"}}
search_space:
  lr: {{type: float, low: 1.0e-5, high: 1.0e-1, log: true}}
pruner: {pruner}
{budget}
""")
    r = run_hpo("create", str(spec), "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                cwd=tmp_path, env=fast_env(tmp_path))
    one_line_error(r, spec, why)


def test_an_exploit_takes_the_parents_conditional_params(tmp_path):
    """The worse member (sgd, so it has a momentum) exploits the better one (adamw, no
    momentum): its continuation runs with the parent's params and their distributions, not
    its own (Optuna refused a momentum-less trial with a momentum distribution, and the
    worker died at every exploit)."""
    url = f"sqlite:///{tmp_path / 'cond.db'}"
    spec = tmp_path / "cond.yaml"
    spec.write_text("""
study: {name: cond}
task: {kind: custom, entrypoint: "fastjob:epochs_job"}
search_space:
  lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
  epochs: 3
  optimizer: {type: categorical, choices: [adamw, sgd]}
  momentum: {type: float, low: 0.5, high: 0.99, when: {optimizer: [sgd]}}
sampler: {name: random, seed: 0}
pruner: {name: pbt, interval: 1, quantile: 0.5, resample_probability: 0.0}
budget: {n_trials: 2}
""")
    env = fast_env(tmp_path)
    assert run_hpo("create", str(spec), "--storage", url, cwd=tmp_path, env=env).returncode == 0
    study = optuna.load_study(study_name="cond", storage=url)
    study.enqueue_trial({"lr": 10 ** -2.5, "optimizer": "adamw"})  # the better member
    study.enqueue_trial({"lr": 1e-5, "optimizer": "sgd", "momentum": 0.9})  # the worse
    r = run_hpo("worker", "cond", "--storage", url, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ts = study.get_trials()
    assert not [t for t in ts if t.state in (TrialState.FAIL, TrialState.RUNNING,
                                             TrialState.WAITING)]
    worse = [t for t in ts if configuration(t) == 1 and t.state == TrialState.COMPLETE]
    assert len(worse) == 1 and worse[0].params["optimizer"] == "adamw"
    assert "momentum" not in worse[0].params and "momentum" not in worse[0].distributions


def test_a_sigterm_as_a_trial_pauses_never_requeues_it_beside_its_continuation(tmp_path,
                                                                               monkeypatch):
    """SIGTERM arrives while the worker queues a pause (held back until then): the trial is
    told PRUNED with its continuation queued, and the worker stops. (It was re-queued beside
    its continuation: the configuration ran twice, and the continuation resumed from a final
    checkpoint with an epoch's value missing; the chaos runner's kill9_launcher found it.)"""
    import os
    import signal

    import yaml

    import hpo.run.worker._trial as worker_trial
    from hpo.run.worker import Stop, run_worker
    from hpo.search.study import create_study, load_study
    from hpo.spec import parse_spec
    from hpo.store.storage import open_storage

    monkeypatch.syspath_prepend(str(SUPPORT))
    real = worker_trial.queue_continuation

    def queue_then_sigterm(*args, **kwargs):
        queued = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # held: it lands when the worker lets it
        return queued

    monkeypatch.setattr(worker_trial, "queue_continuation", queue_then_sigterm)
    spec = parse_spec(yaml.safe_load("""
study: {name: term}
task: {kind: custom, entrypoint: "fastjob:epochs_job"}
search_space: {lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}, epochs: 3}
sampler: {name: random, seed: 0}
pruner: {name: pbt, interval: 1}
budget: {n_trials: 2}
"""))
    storage = open_storage(f"sqlite:///{tmp_path / 't.db'}")
    study, spec = load_study(create_study(spec, storage).study_name, storage)
    report = run_worker(study, spec, worker="w", checkpoint_dir=tmp_path / "ckpt")
    assert report.stopped_because == Stop.PREEMPTED
    ts = study.get_trials()
    assert [(t.state, t.user_attrs.get("prune_reason")) for t in ts] == [
        (TrialState.PRUNED, "paused"), (TrialState.WAITING, None)]
    assert ts[1].user_attrs["paused_from"] == 0


def test_a_maximized_metric_exploits_the_highest_members():
    """``study.metric: val_accuracy`` (maximized): the top quantile is the highest values,
    the bottom (which copies a top member) the lowest; minimized, the other way round."""
    values = {0: 0.5, 1: 0.9, 2: 0.1, 3: 0.7}
    assert quantiles(values, 0.25, maximize=True) == ([1], {2})
    assert quantiles(values, 0.25) == ([2], {1})
    assert quantiles(values, 0.5, maximize=True) == ([1, 3], {0, 2})


def test_pbt_takes_the_direction_from_the_spec(tmp_path):
    from hpo.search.schedulers.pbt import PBT as Scheduler
    from hpo.spec import load_spec

    from specs import write_tiny_spec

    spec = load_spec(write_tiny_spec(tmp_path / "p.yaml", "p", pruner={"name": "pbt"},
                                     study={"metric": "val_accuracy"}))
    assert Scheduler.from_spec(spec).maximize and not Scheduler.from_spec(
        load_spec(write_tiny_spec(tmp_path / "q.yaml", "q", pruner={"name": "pbt"}))).maximize
