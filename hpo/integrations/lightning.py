"""A Lightning ``Trainer`` under hpo: ``HpoCallback`` saves a checkpoint after each validation,
reports the logged metrics with it (at the end of each training epoch, after its
validation), and stops the Trainer on a pause or a preemption::

    from hpo import session
    from hpo.integrations.lightning import HpoCallback, resume_checkpoint

    params = session.params({"lr": 1e-3, "epochs": 4})
    trainer = lightning.Trainer(max_epochs=params["epochs"], callbacks=[HpoCallback()],
                                enable_checkpointing=False, ...)
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume_checkpoint())

The report's step is the epoch (1, 2, ...) whose validation it follows; its metrics are the
Trainer's ``callback_metrics`` (what ``self.log`` logged: name the objective with
``study.metric``, e.g. ``val_loss``). A report that says stop (pruned, paused) sets
``trainer.should_stop``; a paused trial resumes from that epoch's checkpoint. When the worker
asks the trial to stop (a preemption), the callback saves a checkpoint after the batch in
flight, reports it and stops the Trainer; the next attempt resumes from it (Lightning restarts
that epoch's loop from the checkpoint's state).
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from hpo import session


class HpoCallback(Callback):
    """Reports a Lightning ``Trainer``'s validations and checkpoints to hpo
    (``hpo.session``)."""

    def __init__(self) -> None:
        self._stopped = False

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the epoch's validation (Lightning 2 validates before this hook), and a
        # checkpoint saved here is the epoch's end: a resume starts the next epoch.
        if self._stopped:
            return
        epoch = trainer.current_epoch + 1
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if getattr(value, "numel", lambda: 1)() == 1
        }
        path = os.path.join(session.checkpoint_dir(), f"epoch-{epoch}.ckpt")
        trainer.save_checkpoint(path)  # every rank calls it; rank 0 writes
        if not session.report(metrics, step=epoch, checkpoint=path):
            trainer.should_stop = True
            self._stopped = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        if self._stopped or not session.should_stop():
            return
        path = os.path.join(session.checkpoint_dir(), "preempted.ckpt")
        trainer.save_checkpoint(path)
        session.report(checkpoint=path)
        trainer.should_stop = True
        self._stopped = True


def resume_checkpoint() -> str | None:
    """The checkpoint this attempt resumes from (``fit(ckpt_path=...)``), or None."""
    path = session.resume_from()
    return str(path) if path is not None else None
