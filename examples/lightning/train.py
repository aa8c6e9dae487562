"""A Lightning module, tuned by hpo: a small network on scikit-learn's digits.

Alone, it trains once with its defaults::

    python examples/lightning/train.py

Under hpo (``examples/lightning/spec.yaml``), ``hpo.integrations.lightning.HpoCallback``
reports each epoch's ``val_loss`` with a checkpoint saved there, stops the Trainer on a pause
or a preemption, and ``resume_checkpoint()`` resumes it. It logs ``trial N epoch E trained``
per epoch.
"""

from __future__ import annotations

import sys

import lightning
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hpo import session
from hpo.integrations.lightning import HpoCallback, resume_checkpoint

DEFAULTS = {"lr": 1e-2, "batch_size": 64, "epochs": 4, "dropout": 0.1, "weight_decay": 0.0}


class Digits(lightning.LightningModule):
    def __init__(self, lr: float, dropout: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, 10)
        )

    def training_step(self, batch, index):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, index):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())

    def on_train_epoch_end(self) -> None:
        print(f"trial {session.trial_number()} epoch {self.current_epoch + 1} trained",
              file=sys.stderr, flush=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)


def main() -> None:
    params = session.params(DEFAULTS)
    lightning.seed_everything(0, verbose=False)
    x, y = load_digits(return_X_y=True)
    inputs, labels = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]
    train_loader = DataLoader(TensorDataset(inputs[train], labels[train]),
                              batch_size=params["batch_size"], shuffle=True)
    val_loader = DataLoader(TensorDataset(inputs[val], labels[val]), batch_size=360)
    trainer = lightning.Trainer(
        max_epochs=params["epochs"],
        callbacks=[HpoCallback()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="auto",
        devices=1,
    )
    model = Digits(params["lr"], params["dropout"], params["weight_decay"])
    trainer.fit(model, train_loader, val_loader, ckpt_path=resume_checkpoint())


if __name__ == "__main__":
    main()
