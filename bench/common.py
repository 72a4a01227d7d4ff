"""Shared pieces of the bench/ scripts: building a run from an example config, bare PyTorch training loops,
test-set metrics, and timing helpers. Every script measures both sides in the same process run, so the
noise of this shared machine hits both, and prints a final ``ratio: <n>`` line (higher is better for
polytask)."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from polytask.config import Config, load_config  # noqa: E402
from polytask.data.features import collate, prepare_task_data, to_device  # noqa: E402
from polytask.evaluate.runner import autocast_context, evaluate_split  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a small run that finishes in under a minute")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def example_config(name: str, overrides: list[str], out: Path) -> Config:
    return load_config(ROOT / "examples" / f"{name}.yaml",
                       [*overrides, f"train.output_dir={out}", "train.progress=false", "train.tensorboard=false"])


def add_budget_args(p: argparse.ArgumentParser, name: str) -> None:
    """The reduced-budget options shared by the method-table scripts (``name``: their runs folder)."""
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick: 1)")
    p.add_argument("--train-samples", type=int, default=None, help="training examples per task (default 1024)")
    p.add_argument("--eval-samples", type=int, default=None, help="validation / test examples per task (500)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the example's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config override, e.g. --set model.max_length=64 (repeatable)")
    p.add_argument("--output", default=None, help=f"folder for the runs (default runs/{name}/<example>)")


def budget(args: argparse.Namespace, example: str, name: str, extra: list[str]) -> tuple[Path, list[str], Config]:
    """Runs folder, overrides and base config of a reduced-budget method table: the first ``--train-samples``
    / ``--eval-samples`` examples of each task, ``--epochs``, ``extra`` and ``--set`` overrides. A quick run
    gets a fresh folder (it never reuses an earlier one), batch 8 and one epoch."""
    import tempfile

    if args.output:
        out = Path(args.output)
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    else:
        out = ROOT / "runs" / name / example
    args.train_samples = args.train_samples or (16 if args.quick else 1024)
    args.eval_samples = args.eval_samples or (16 if args.quick else 500)
    args.seeds = args.seeds or (1 if args.quick else 3)
    overrides = list(extra)
    for t in example_config(example, [], out / "probe").tasks:
        overrides += [f"tasks.{t}.max_train_samples={args.train_samples}",
                      f"tasks.{t}.max_eval_samples={args.eval_samples}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    overrides += args.overrides
    if args.quick:
        overrides += ["train.batch_size=8", "train.epochs=1"]
    return out, overrides, example_config(example, overrides, out / "unused")


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def pad_batch(batch: dict[str, Any], features: list[dict[str, Any]], task, length: int, pad_id: int) -> dict:
    """Pad a collated batch out to ``length`` tokens, as a fixed ``padding='max_length'`` recipe does."""
    n, t = batch["input_ids"].shape
    if t >= length:
        return batch
    out = dict(batch)
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        full = torch.full((n, length), fill, dtype=torch.long)
        full[:, :t] = batch[key]
        out[key] = full
    if "labels" in batch and task.level == "token":
        out["labels"] = task.collate_labels([f["labels"] for f in features], length)
    return out


def random_batches(sizes: dict[str, int], batch_size: int, seed: int, epoch: int) -> list[tuple[str, list[int]]]:
    """A plain shuffled loader per task, the batches of all tasks shuffled together (one task per batch)."""
    rng = random.Random(f"bare-{seed}-{epoch}")
    plan = []
    for task, n in sizes.items():
        idx = list(range(n))
        rng.shuffle(idx)
        plan += [(task, idx[i:i + batch_size]) for i in range(0, n, batch_size)]
    rng.shuffle(plan)
    return plan


def bare_train(model, run, batches_per_epoch: list[list[tuple[str, list[int]]]], precision: str = "fp32",
               pad_to: int | None = None) -> dict[str, Any]:
    """A plain PyTorch loop: collate, forward, task loss, backward, clip, AdamW step — nothing else.

    Uses ``run``'s optimizer and scheduler (same hyperparameters as polytask). Returns timing and counts.
    """
    model.train()
    device = torch.device("cpu")
    examples = 0
    stamps = []  # time after each optimizer step
    start = time.perf_counter()
    for batches in batches_per_epoch:
        for task, idx in batches:
            feats = [run.data[task].features["train"][j] for j in idx]
            batch = collate(feats, run.tasks[task], run.pad_id)
            if pad_to:
                batch = pad_batch(batch, feats, run.tasks[task], pad_to, run.pad_id)
            batch = to_device(batch, device)
            with autocast_context(precision, device):
                logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], tasks=[task])
            loss = run.tasks[task].loss(logits[task], batch["labels"])
            loss.backward()
            if run.config.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.config.train.grad_clip)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            examples += len(idx)
            stamps.append(time.perf_counter())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "examples": examples, "examples_per_second": examples / seconds, "stamps": stamps}


def test_metrics(model, run, precision: str = "fp32", split: str = "test") -> dict[str, float]:
    """Main metric of each task on ``split`` (×100), plus their mean."""
    data = prepare_task_data(run.tasks, run.tokenizer, run.config.model.max_length, splits=(split,),
                             fit_labels=False)
    results = evaluate_split(model, data, split, 64, run.pad_id, torch.device("cpu"), precision)
    out = {t: 100 * results[t][run.tasks[t].main_metric] for t in run.tasks if t in results}
    out["mean"] = sum(out.values()) / len(out)
    return out


def fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.2f}" for k, v in metrics.items())


def ratio_line(value: float) -> str:
    return f"ratio: {value:.3f}" if math.isfinite(value) else "ratio: nan"
