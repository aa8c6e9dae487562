"""A Hugging Face ``Trainer`` under hpo: ``HpoCallback`` reports its evaluations, saves and
resumes through the Trainer's own checkpoints, and stops it on a pause or a preemption::

    from hpo import session
    from hpo.integrations.transformers import HpoCallback, resume_checkpoint

    params = session.params({"lr": 5e-5, "epochs": 3})
    args = TrainingArguments(output_dir=str(session.checkpoint_dir()),
                             eval_strategy="epoch", save_strategy="epoch", ...)
    trainer = Trainer(model, args, ..., callbacks=[HpoCallback()])
    trainer.train(resume_from_checkpoint=resume_checkpoint())

Each evaluation's numeric metrics (``eval_loss``, ``eval_accuracy``, ...: name the objective
with ``study.metric``) go to ``hpo.session.report`` with the checkpoint the Trainer saves at
that step, where ``save_strategy`` saves at the evaluations (the same strategy and steps);
the report's step is the evaluation's count: the epoch with ``eval_strategy="epoch"``. A
report that says stop (pruned, paused) ends ``trainer.train``; a paused trial resumes from
that checkpoint. When the worker asks the trial to stop (a preemption), the Trainer saves a
checkpoint at the step it is at, reports it and stops: the next attempt resumes at that step.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hpo import session


class HpoCallback(TrainerCallback):
    """Reports a ``Trainer``'s evaluations and checkpoints to hpo (``hpo.session``)."""

    def __init__(self) -> None:
        self._pending: tuple[dict[str, float], int] | None = None  # reported with the save
        self._stopping = False

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        numbers = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        step = _evaluation_step(args, state)
        if control.should_save:  # the checkpoint of this step comes next: report with it
            self._pending = (numbers, step)
        elif not session.report(numbers, step=step):
            control.should_training_stop = True

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not self._stopping and session.should_stop():  # save here, then stop
            self._stopping = True
            control.should_save = True
            control.should_training_stop = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if self._pending is not None:
            numbers, step = self._pending
            self._pending = None
            go_on = session.report(numbers, step=step, checkpoint=checkpoint)
        else:
            go_on = session.report(checkpoint=checkpoint)
        if not go_on or self._stopping:
            control.should_training_stop = True


def resume_checkpoint() -> str | None:
    """The Trainer checkpoint this attempt resumes from (``resume_from_checkpoint``), or None."""
    path = session.resume_from()
    return str(path) if path is not None else None


def _evaluation_step(args: TrainingArguments, state: TrainerState) -> int:
    """The evaluation's count: the epoch with ``eval_strategy="epoch"``, else the global step
    over ``eval_steps`` (the same after a resume)."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "epoch":
        return max(1, round(state.epoch or 0))
    every = args.eval_steps or args.logging_steps or 1
    every = every if every >= 1 else max(1, round(every * state.max_steps))
    return max(1, state.global_step // int(every))
