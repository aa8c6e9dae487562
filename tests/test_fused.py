"""Fused trials (hpo.job.fused): members trained as one batched model learn as they would alone."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from hpo.job import JobContext, run_job
from hpo.job.fused import CannotFuse, Member, MemberDropout, fusion_key, run_fused
from hpo.job.trial import FixedTrial
from hpo.spec import HYPERPARAMETERS, TaskSpec

EPS = torch.finfo(torch.float32).eps


def make_params(**overrides):
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(batch_size=32, epochs=2, dropout=0.0)
    params.update(overrides)
    return params


def small_digits(**overrides) -> TaskSpec:
    """Digits on squeezenet1_1 (no batch norm: it fuses), two evaluations per epoch."""
    fields = dict(kind="image_classification", model="squeezenet1_1",
                  dataset={"name": "digits"}, image_size=24, max_samples=200, evals_per_epoch=2)
    fields.update(overrides)
    return TaskSpec(**fields)


class PrunedFrom(FixedTrial):
    """A trial whose pruner says stop at every report from ``step`` on."""

    def __init__(self, number: int, step: int) -> None:
        super().__init__(number)
        self.step = step

    def should_prune(self) -> bool:
        return max(self.reports) >= self.step


def trial_for(number: int, pruned_from: int | None) -> FixedTrial:
    return FixedTrial(number) if pruned_from is None else PrunedFrom(number, pruned_from)


def curves(trial: FixedTrial) -> dict[int, tuple[float, float]]:
    """Report step -> (train loss, val loss) of a trial's learning curve."""
    history = trial.attrs["metrics"]
    return {step: (history[str(step)]["train_loss"], value)
            for step, value in trial.reports.items()}


@pytest.mark.slow
def test_fused_members_learn_as_each_alone_and_a_pruned_one_leaves():
    """Three configurations (AdamW, SGD with momentum, Adam with a warmup and cosine
    schedule and a third epoch) trained fused report the learning curves each has alone, to
    within the float noise measured here: the same member alone with its convolutions in
    channels_last, which sums in another order. The second member is pruned at its second
    report, alone and fused: it leaves the group, and the others go on as alone."""
    task = small_digits()
    members = [
        (make_params(lr=1e-3, optimizer="adamw", weight_decay=1e-2), None),
        (make_params(lr=3e-2, optimizer="sgd", momentum=0.9, weight_decay=1e-4), 2),
        (make_params(lr=3e-4, optimizer="adam", epochs=3, warmup_fraction=0.2,
                     schedule="cosine"), None),
    ]
    assert len({fusion_key(p) for p, _ in members}) == 1
    cache: dict = {}
    alone, reordered = [], []
    for number, (params, pruned_from) in enumerate(members):
        for runs, spec in ((alone, task), (reordered, dataclasses.replace(task,
                                                                           channels_last=True))):
            trial = trial_for(number, pruned_from)
            try:
                run_job(trial, spec, params, JobContext(cache=cache))
            except optuna.TrialPruned:
                assert pruned_from is not None
            runs.append(trial)
    group = [Member(trial_for(n, pruned), params, JobContext(cache=cache))
             for n, (params, pruned) in enumerate(members)]
    run_fused(group, task)

    assert isinstance(group[1].outcome, optuna.TrialPruned)
    assert group[1].trial.attrs["prune_reason"] == "pruned"
    assert group[0].outcome == min(group[0].trial.reports.values())
    assert group[2].trial.attrs["epochs_run"] == 3
    for member, one, other in zip(group, alone, reordered):
        fused, by_itself, noise_run = curves(member.trial), curves(one), curves(other)
        assert sorted(fused) == sorted(by_itself) == sorted(noise_run)
        noise = max(abs(a - b) for s in by_itself
                    for a, b in zip(by_itself[s], noise_run[s]))
        for step in by_itself:
            for got, want in zip(fused[step], by_itself[step]):
                # Four times the noise over the curve, floored at a few roundings of the value
                # (the history keeps 4-5 digits of the train loss).
                assert abs(got - want) <= 4 * noise + 16 * EPS * abs(want) + 1e-5, (
                    member.trial.number, step, got, want, noise)
        assert member.trial.attrs["fused_with"] == [0, 1, 2]
    assert sorted(group[1].trial.reports) == [1, 2]
    assert sorted(group[2].trial.reports) == [1, 2, 3, 4, 5, 6]


def test_member_dropout_draws_each_members_mask_at_its_own_rate():
    """Under vmap each member drops its own share of the units, with its own draws; in
    eval mode nothing is dropped."""
    dropout = MemberDropout()
    x = torch.ones(4096)
    p = torch.tensor([0.0, 0.3, 0.3, 0.6])
    out = torch.vmap(lambda tensors, v: torch.func.functional_call(dropout, tensors, (v,)),
                     in_dims=(0, None), randomness="different")({"p": p}, x)
    dropped = (out == 0).float().mean(dim=1)
    assert dropped[0] == 0 and torch.equal(out[0], x)
    assert dropped[1:].tolist() == pytest.approx([0.3, 0.3, 0.6], abs=0.04)
    assert not torch.equal(out[1], out[2])  # two members, two masks
    kept = out[3][out[3] != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.4))  # scaled as nn.Dropout scales
    dropout.eval()
    assert torch.equal(dropout(x), x)


@pytest.mark.slow
def test_a_members_dropout_changes_its_curve_and_no_other():
    """Two groups of two, alike but for the second member's dropout (0 and 0.5): the first
    member's curve is the same, to the bit, whatever its neighbour's dropout; with dropout 0
    the neighbour's curve is the first's, with 0.5 it learns another one from the first
    report on (where the float noise between fused and alone is ~1e-7)."""
    task = small_digits(evals_per_epoch=1)
    plain = make_params(lr=1e-3, optimizer="adamw")
    cache: dict = {}
    groups = []
    for dropout in (0.0, 0.5):
        group = [Member(FixedTrial(0), plain, JobContext(cache=cache)),
                 Member(FixedTrial(1), {**plain, "dropout": dropout}, JobContext(cache=cache))]
        run_fused(group, task)
        groups.append([curves(m.trial) for m in group])
    (first, twin), (first_again, with_dropout) = groups
    assert first == first_again == twin
    assert abs(with_dropout[1][0] - first[1][0]) > 1e-3  # the first epoch's train loss
    assert with_dropout != first
    assert all(v == v for _, v in with_dropout.values())  # not NaN: it trained


def test_batch_norm_in_training_mode_cannot_fuse():
    """ResNet-18 trains its batch norms: the group refuses, with why, before any report."""
    task = small_digits(model="resnet18", image_size=16, max_samples=100)
    group = [Member(FixedTrial(n), make_params(lr=lr), JobContext(cache={}))
             for n, lr in enumerate((1e-3, 1e-2))]
    with pytest.raises(CannotFuse, match="cannot fuse: batch norm in training mode"):
        run_fused(group, task)
    assert all(not m.trial.reports for m in group)


def test_members_differ_only_in_per_member_params():
    base = make_params(lr=1e-3)
    assert fusion_key(base) == fusion_key({**base, "lr": 0.1, "optimizer": "sgd",
                                           "dropout": 0.2, "epochs": 5})
    assert fusion_key(base) != fusion_key({**base, "batch_size": 64})
    assert fusion_key(base) != fusion_key({**base, "freeze": "head_only"})


# ------------------------------------------------------------------------------------------
# The worker: resources.fuse

STUDY = """
study: {{name: {name}}}
task: {{kind: image_classification, model: {model}, dataset: {{name: digits}},
        image_size: {size}, max_samples: {samples}, evals_per_epoch: {evals}}}
search_space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
  weight_decay: {{type: float, low: 1.0e-6, high: 1.0e-2, log: true}}
  optimizer: {{type: categorical, choices: [adamw, sgd]}}
  batch_size: 32
  epochs: 1
sampler: {{name: random, seed: 0}}
pruner: {pruner}
budget: {{n_trials: {n}}}
resources: {{fuse: {fuse}}}
"""


def run_study(tmp_path, **fields):
    """A real study in this process (SQLite), its one worker to the end of the budget."""
    import yaml

    from hpo.run.worker import run_worker
    from hpo.search.study import create_study
    from hpo.spec import parse_spec
    from hpo.store.storage import open_storage

    values = dict(name="fused", model="squeezenet1_1", size=24, samples=200, evals=2, n=3,
                  fuse=3, pruner="{name: none}")
    values.update(fields)
    spec = parse_spec(yaml.safe_load(STUDY.format(**values)), source="<fused>")
    study = create_study(spec, open_storage(f"sqlite:///{tmp_path / 'fused.db'}"))
    report = run_worker(study, spec, worker="w", checkpoint_dir=tmp_path / "ckpt")
    return study.get_trials(), report


@pytest.mark.slow
def test_a_worker_with_fuse_3_trains_three_trials_as_one_each_with_its_own_record(tmp_path):
    trials, report = run_study(tmp_path)
    assert report.trials == 3 and report.stopped_because == "budget"
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3
    curves_seen = set()
    for t in trials:
        assert t.user_attrs["fused_with"] == [0, 1, 2]
        assert sorted(t.intermediate_values) == [1, 2]  # its own reports
        assert t.value == min(t.intermediate_values.values())
        assert t.user_attrs["epochs_run"] == 1 and sorted(t.user_attrs["metrics"]) == ["1", "2"]
        assert (tmp_path / "ckpt" / "fused" / f"trial-{t.number}.pt").is_file()
        assert t.user_attrs["checkpoint"].endswith(f"trial-{t.number}.pt")
        curves_seen.add(tuple(t.intermediate_values.values()))
    assert len(curves_seen) == 3  # three learning curves, not one copied



@pytest.mark.slow
def test_a_paused_member_leaves_its_group_with_a_checkpoint_and_resumes_alone(tmp_path,
                                                                             caplog):
    """The promotion scheduler at half an epoch: a member it pauses leaves the group with its
    checkpoint (the others train on), and its continuation resumes it alone, from there."""
    from hpo.records import is_continuation

    caplog.set_level("INFO", logger="hpo")
    trials, _ = run_study(tmp_path, pruner="{name: promotion, min_resource: 0.5, "
                                           "reduction_factor: 2}")
    assert caplog.text.count("train fused") == 1 and "trials 0, 1, 2 train fused" in caplog.text
    group = [t for t in trials if not is_continuation(t)]
    assert [t.number for t in group] == [0, 1, 2]
    assert all(t.user_attrs["fused_with"] == [0, 1, 2] for t in group)
    paused = [t for t in group if t.user_attrs.get("prune_reason") == "paused"]
    assert paused  # the first at the rung pauses (alone there), and those behind it
    for t in paused:
        assert sorted(t.intermediate_values) == [1]
        assert t.user_attrs["checkpoint"].endswith(f"trial-{t.number}.pt")
    for t in group:
        if t not in paused:  # it went on in the group after the others left
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert sorted(t.intermediate_values) == [1, 2]
    resumed = [t for t in trials if t.user_attrs.get("resumed_from") in {p.number for p in paused}
               and t.state == optuna.trial.TrialState.COMPLETE]
    assert resumed
    for t in resumed:  # alone, from the fused member's checkpoint: its step 1, then the rest
        first = next(p for p in paused if p.number == t.user_attrs["resumed_from"])
        assert f"trial {t.number}: resumed from {first.user_attrs['checkpoint']}" in caplog.text
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.intermediate_values[1] == first.intermediate_values[1]


@pytest.mark.slow
def test_a_model_that_cannot_fuse_runs_its_trials_one_at_a_time_and_says_why(tmp_path,
                                                                              caplog):
    caplog.set_level("INFO", logger="hpo")
    trials, report = run_study(tmp_path, model="resnet18", size=16, samples=100, evals=1,
                               n=2, fuse=2)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert all("fused_with" not in t.user_attrs for t in trials)
    assert "cannot fuse: batch norm in training mode" in caplog.text
    assert "trials 0, 1 run one at a time" in caplog.text


@pytest.mark.parametrize(("resources", "task", "error"), [
    ({"fuse": 0}, None, "resources.fuse"),
    ({"fuse": 2}, {"kind": "custom", "entrypoint": "fastjob:epochs_job"},
     "fused trials are of the built-in job"),
    ({"fuse": 2, "devices_per_trial": 2}, None, "fused trials train on one device"),
])
def test_fuse_is_refused_where_it_cannot_hold(resources, task, error):
    from hpo.errors import SpecError
    from hpo.spec import parse_spec

    raw = {"study": {"name": "f"},
           "task": task or {"kind": "image_classification", "model": "squeezenet1_1",
                            "dataset": {"name": "digits"}},
           "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
           "resources": resources}
    with pytest.raises(SpecError, match=error):
        parse_spec(raw, source="<fuse>", check_environment=False)


def test_a_claimed_trial_that_differs_in_a_shared_param_is_named_with_it():
    from hpo.run.worker._fused import _differences

    first = make_params(lr=1e-3)
    assert _differences(first, {**first, "lr": 0.1, "dropout": 0.3}) == []
    assert _differences(first, {**first, "batch_size": 64, "freeze": "head_only"}) == [
        "batch_size", "freeze"]


def test_fuse_round_trips_in_the_stored_spec():
    from hpo.spec import parse_spec

    raw = {"study": {"name": "f"}, "task": {"kind": "image_classification",
                                           "model": "squeezenet1_1", "dataset": {"name": "digits"}},
           "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
           "resources": {"fuse": 3}}
    spec = parse_spec(raw, source="<fuse>", check_environment=False)
    assert spec.resources.fuse == 3 and spec.to_dict()["resources"] == {"fuse": 3}
    assert parse_spec(spec.to_dict(), check_environment=False) == spec
