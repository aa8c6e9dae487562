"""The ``l1`` hyperparameter: the loss gets ``l1 * sum |w|`` over the trainable weights (not
biases, not normalization parameters), once per optimizer step, whatever the micro-batches
and the ranks. What a user would check: a step with it is the hand-computed step, whole or in
micro-batches, on one rank or two; 0 changes nothing; the search space may name it; a real
trial trains smaller weights with it."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import hpo.job.step as step_module
from hpo.job.device import pick_device
from hpo.job.loss import penalized
from hpo.job.ranks import Ranks
from hpo.spec import HYPERPARAMETERS, parse_spec

L1 = 0.05
N = 12


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.ReLU(), nn.Linear(4, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 5, generator=g), torch.randint(0, 3, (N,), generator=g)


def _step(model, x, y, micro_batch, l1, criterion=nn.functional.cross_entropy,
          ranks=Ranks(), net=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss = step_module.train_step(
        net or model, x, y, micro_batch, criterion, pick_device(amp=False),
        torch.amp.GradScaler("cpu", enabled=False), opt, sched, list(model.parameters()),
        0.0, ranks, l1=l1)
    return float(loss), [p.detach().clone() for p in model.parameters()]


def _by_hand(l1):
    """The loss and the SGD step computed by hand: the mean cross-entropy plus l1 times the
    absolute sum of the two Linear weight matrices (the biases and LayerNorm's scale and
    shift left out)."""
    model = _model()
    x, y = _batch()
    first, second = model[0].weight, model[3].weight
    loss = nn.functional.cross_entropy(model(x), y) + l1 * (first.abs().sum()
                                                            + second.abs().sum())
    loss.backward()
    with torch.no_grad():
        after = [p - 0.5 * p.grad for p in model.parameters()]
    return loss.item(), after


def test_the_penalty_sums_the_weights_alone():
    model = _model()
    assert [tuple(p.shape) for p in penalized(list(model.parameters()))] == [(4, 5), (3, 4)]


@pytest.mark.parametrize("micro_batch", [N, 4, 5])
def test_a_step_with_l1_is_the_hand_computed_one_whole_or_in_micro_batches(micro_batch):
    x, y = _batch()
    loss, after = _step(_model(), x, y, micro_batch, L1)
    reference, expected = _by_hand(L1)
    assert loss == pytest.approx(reference, rel=1e-6)
    for got, want in zip(after, expected):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    # The penalty moved the weights (not the biases and norms) by l1 * lr * sign(w).
    _, plain = _step(_model(), x, y, micro_batch, 0.0)
    start = list(_model().parameters())
    for i, (a, b, w) in enumerate(zip(after, plain, start)):
        shift = a - b
        if w.ndim >= 2:
            assert torch.allclose(shift, -L1 * 0.5 * torch.sign(w.detach()), atol=1e-6), i
        else:
            assert torch.allclose(shift, torch.zeros_like(shift), atol=1e-7), i


def test_l1_zero_is_the_plain_loss():
    x, y = _batch()
    loss, _ = _step(_model(), x, y, N, 0.0)
    reference, _ = _by_hand(0.0)
    assert loss == pytest.approx(reference, rel=1e-6)


def _rank_step(rank: int, world: int, store: str, out: str) -> None:
    """Rank ``rank`` of two (gloo, CPU): its half of the batch in DDP, as the fit loop does
    (the criterion weighted by the rank's share, ``hpo.job.state.start_fit``)."""
    from functools import partial

    import torch.distributed as dist

    from hpo.job.state import _weighted

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ranks = Ranks(rank, world)
        model = _model()
        net = ranks.wrap(model, torch.device("cpu"))
        x, y = _batch()
        part = ranks.shard(N)
        criterion = partial(_weighted, nn.functional.cross_entropy, ranks.loss_weight(N))
        loss, after = _step(model, x[part], y[part], 3, L1, criterion, ranks, net)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"loss": loss, "after": [p.flatten().tolist() for p in after]}, f)
        dist.barrier()  # leave together: a rank torn down while another talks may abort
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_take_the_hand_computed_step(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_step, args=(2, str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    reference, expected = _by_hand(L1)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got["loss"] == pytest.approx(reference, rel=1e-6)
        for a, want in zip(got["after"], expected):
            assert torch.allclose(torch.tensor(a), want.flatten(), rtol=1e-5, atol=1e-7)


def test_l1_is_a_searchable_hyperparameter_defaulting_to_off():
    assert HYPERPARAMETERS["l1"].default == 0.0
    spec = parse_spec({
        "study": {"name": "l1"},
        "task": {"kind": "image_classification", "model": "resnet18",
                 "dataset": {"name": "digits"}},
        "search_space": {"l1": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True}},
    })
    (param,) = [p for p in spec.search_space if p.name == "l1"]
    assert param.distribution().log and param.distribution().high == 1e-3
    from hpo.errors import SpecError

    with pytest.raises(SpecError, match="l1"):
        parse_spec({
            "study": {"name": "l1"},
            "task": {"kind": "image_classification", "model": "resnet18",
                     "dataset": {"name": "digits"}},
            "search_space": {"l1": -0.1},
        })


def test_a_trial_with_l1_trains_smaller_weights():
    """Digits, head only, the same seed: l1 = 0.01 leaves the head's weights smaller in
    absolute sum than l1 = 0, and its training loss (penalty included) is larger."""
    from test_job import digits, make_params

    from hpo.job import JobContext
    from hpo.job.fit import fit
    from hpo.job.run import build
    from hpo.job.trial import FixedTrial

    sums, losses = {}, {}
    for l1 in (0.0, 0.01):
        params = make_params(epochs=2, l1=l1, freeze="head_only", lr=1e-2)
        task = digits(max_samples=200)
        torch.manual_seed(task.seed)
        setup = build(task, params, {})
        trial = FixedTrial()
        fit(trial, setup, params, task, JobContext(cache={}))
        sums[l1] = sum(p.abs().sum().item() for p in setup.head if p.ndim >= 2)
        losses[l1] = trial.attrs["metrics"]["2"]["train_loss"]
    assert sums[0.01] < 0.8 * sums[0.0], sums
    assert losses[0.01] > losses[0.0], losses
