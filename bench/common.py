"""Shared pieces of the bench/ scripts: building a run from an example config, bare PyTorch training loops,
test-set metrics, and timing helpers. Every script measures both sides in the same process run, so the
noise of this shared machine hits both, and prints a final ``ratio: <n>`` line (higher is better for
polytask)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import subprocess
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
from polytask.tasks.base import IGNORE_INDEX  # noqa: E402


def cached(folder: Path, key: dict[str, Any], make) -> dict[str, Any]:
    """``folder/result.json`` when it was measured with these settings (``key``: what the result depends on —
    method, seed, overrides, the polytask defaults it ran under), else ``make()``'s result, written there with
    its key. A rerun continues an interrupted benchmark; a changed setting or default measures the cell again
    instead of reusing a stale figure."""
    key = json.loads(json.dumps(key))  # as it reads back (tuples as lists)
    path = folder / "result.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("key") == key:
            return old
        print(f"{path}: measured with other settings; measuring again", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    result = {**make(), "key": key}
    path.write_text(json.dumps(result, indent=2))
    return result


def scratch_dir(prefix: str) -> Path:
    """A fresh temporary folder that is removed when the script ends well (a quick run's checkpoints are a few
    hundred MB each, and nothing reads them afterwards); after an uncaught exception it is kept, and said so, for
    the logs in it."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))

    def clean() -> None:
        if getattr(sys, "last_value", None) is not None:  # set when an uncaught exception was printed
            print(f"kept {folder} (the script failed)", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(clean)
    return folder


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (a few steps on a few dozen examples per task) that checks the script works")
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
    gets a fresh folder (it never reuses an earlier one), 16 examples per task, 32-token inputs, batch 8 and
    one epoch."""

    if args.output:
        out = Path(args.output)
    elif args.quick:
        out = scratch_dir(f"{name}-")
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
        overrides += ["train.batch_size=8", "train.epochs=1", "model.max_length=32"]
    return out, overrides, example_config(example, overrides, out / "unused")


def tiny_overrides(config: Config, train: int = 32, evaluate: int = 16) -> list[str]:
    """The overrides of a ``--quick`` run: a few dozen examples per task, 32-token inputs, batch 8. Tiny on
    purpose — on an AVX2-only CPU (no native bf16, fp32 ~2x slower than here) a quick run must stay small."""
    out = ["model.max_length=32", "train.batch_size=8"]
    for t in config.tasks:
        out += [f"tasks.{t}.max_train_samples={train}", f"tasks.{t}.max_eval_samples={evaluate}"]
    return out


def precision_decision(device: str = "cpu") -> str:
    """What ``precision: auto`` resolves to on this machine's ``device``, and why."""
    from polytask.precision import resolve_precision

    choice = resolve_precision("auto", device)
    return f"precision auto -> {choice.precision} ({choice.reason})"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def keyed_result(folder: Path, key: dict[str, Any], make) -> dict[str, Any]:
    """``folder/result.json`` when a run finished there with this ``key`` (its config and whatever else decides its
    scores), marked ``reused``; else ``make()``'s result, written there under the key."""
    path = folder / "result.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("key") == key:
            return {**old, "reused": True}
    out = {"key": key, **make()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def machine() -> str:
    """The ``machine:`` line's text: CPU, cores, torch, threads and the ``auto`` precision decision."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f", ONEDNN_MAX_CPU_ISA={isa}" if isa else "") + f"; {precision_decision()}")


# Run in a fresh interpreter with ONEDNN_VERBOSE=1: one bf16 product (the op whose dispatch we want to see),
# then one fp32 product through oneDNN directly, so oneDNN prints its ISA line even when torch kept the bf16
# product away from it. Last, the best of 5 timings of the bf16 and fp32 product (a 256x384 @ 384x1536
# linear, the shape of a MiniLM feed-forward layer at batch 8 x 32 tokens).
_ONEDNN_PROBE = """
import json, time, torch
x, w = torch.randn(256, 384), torch.randn(1536, 384)
xb, wb = x.bfloat16(), w.bfloat16()
torch.nn.functional.linear(xb, wb)
try:
    torch._C._nn.mkldnn_linear(x.to_mkldnn(), w)
except Exception:  # a torch without oneDNN (or without this private op): no ISA line then
    pass
def best(a, b):
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.nn.functional.linear(a, b)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)
print("PROBE " + json.dumps({"bf16_ms": best(xb, wb), "fp32_ms": best(x, w)}), flush=True)
"""


def onednn_report(timeout: float = 120) -> dict[str, Any]:
    """What oneDNN itself says about bf16 on this CPU (a subprocess with ``ONEDNN_VERBOSE=1``).

    Returns ``isa`` (oneDNN's ``isa:`` info line, e.g. "Intel AVX-512 with Intel DL Boost and bfloat16
    support"; ``ONEDNN_MAX_CPU_ISA`` is honoured since the environment is inherited), ``bf16_impl`` (the
    implementation the bf16 matmul was dispatched to, e.g. ``brg_matmul:avx512_core_bf16``; None when torch
    did not hand the bf16 product to oneDNN at all — its own fallback kernel then converts to fp32 around the
    product, i.e. bf16 is emulated), ``native`` (the implementation is a bf16/AMX kernel) and the product's
    ``bf16_ms`` / ``fp32_ms`` timings."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], capture_output=True, text=True, env=env,
                              timeout=timeout)
        text = proc.stdout + proc.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        text = f"probe failed: {e}"
    report: dict[str, Any] = {"isa": None, "bf16_impl": None, "native": False, "bf16_ms": None, "fp32_ms": None}
    for line in text.splitlines():
        if line.startswith("PROBE "):
            report.update(json.loads(line[6:]))
        elif line.startswith("onednn_verbose") and ",isa:" in line:
            report["isa"] = line.split(",isa:", 1)[1].strip()
        elif line.startswith("onednn_verbose") and ",exec," in line and "src:bf16" in line \
                and report["bf16_impl"] is None:
            fields = line.split(",")
            at = fields.index("exec")  # onednn_verbose[,v1],primitive,exec,cpu,<operation>,<implementation>,...
            report["bf16_impl"] = f"{fields[at + 2]} {fields[at + 3]}"
    impl = report["bf16_impl"] or ""
    report["native"] = any(k in impl for k in ("bf16", "amx"))
    if report["isa"] is None and report["bf16_ms"] is None:
        report["error"] = text.strip().splitlines()[-1] if text.strip() else "no output"
    return report


def onednn_lines(report: dict[str, Any]) -> list[str]:
    """``onednn_report()`` as printable lines."""
    if report.get("error"):
        return [f"oneDNN: could not be probed ({report['error']})"]
    impl = report["bf16_impl"]
    how = (f"{impl} ({'a native bf16 kernel' if report['native'] else 'not a bf16 kernel: emulated'})" if impl
           else "not dispatched to oneDNN (torch ran it in its own fallback kernel: bf16 emulated via fp32)")
    lines = [f"oneDNN isa: {report['isa'] or 'not reported (oneDNN never ran)'}",
             f"oneDNN bf16 matmul: {how}"]
    if report["bf16_ms"] is not None:
        lines.append(f"256x384 @ 384x1536 product: bf16 {report['bf16_ms']:.2f} ms, fp32 {report['fp32_ms']:.2f} ms "
                     f"(bf16 {report['fp32_ms'] / report['bf16_ms']:.2f}x the speed of fp32)")
    return lines


def pad_batch(batch: dict[str, Any], length: int, pad_id: int, tasks) -> dict[str, Any]:
    """Pad a step batch (see ``step_batch``) out to ``length`` tokens, as a fixed ``padding='max_length'``
    recipe does; token labels get the ignore index."""
    n, t = batch["input_ids"].shape
    if t >= length:
        return batch
    out = dict(batch)
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
        out[key] = torch.nn.functional.pad(batch[key], (0, length - t), value=fill)
    out["parts"] = {name: (pos, torch.nn.functional.pad(labels, (0, length - t), value=IGNORE_INDEX)
                           if tasks[name].level == "token" else labels)
                    for name, (pos, labels) in batch["parts"].items()}
    return out


def step_batch(run, name: str, idx: list[int]) -> dict[str, Any]:
    """The inputs of one batch and, per task, ``(its rows in the batch, its labels)``. ``name`` is a source of
    ``run.plan`` (a task, or under joint batches the tasks that share inputs) or a task's name (one-task batch
    of that task's own training examples, as a plain per-task loader makes)."""
    sources = getattr(run, "sources", None)
    if sources is not None and name in sources:
        return run.collate(name, idx)
    batch = collate([run.data[name].features["train"][j] for j in idx], run.tasks[name], run.pad_id)
    batch["parts"] = {name: (torch.arange(len(idx)), batch["labels"])}
    return batch


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
    """A plain PyTorch loop: collate, forward, task losses (weighted sum), backward, clip, AdamW step — nothing
    else. Batches are ``(source or task, rows)`` (see ``step_batch``).

    Uses ``run``'s optimizer and scheduler (same hyperparameters as polytask). Returns timing and counts.
    """
    model.train()
    device = torch.device("cpu")
    weights = {t: c.weight for t, c in run.config.tasks.items()}
    examples = 0
    stamps = []  # time after each optimizer step
    start = time.perf_counter()
    for batches in batches_per_epoch:
        for name, idx in batches:
            batch = step_batch(run, name, idx)
            if pad_to:
                batch = pad_batch(batch, pad_to, run.pad_id, run.tasks)
            inputs = to_device(batch, device)
            with autocast_context(precision, device):
                logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                               tasks=list(batch["parts"]))
            loss = sum(weights[t] * run.tasks[t].loss(logits[t][pos], labels)
                       for t, (pos, labels) in batch["parts"].items())
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


def add_seed_args(p: argparse.ArgumentParser, name: str) -> None:
    """The options of a seeds x example benchmark (``name``: its runs folder under runs/)."""
    p.add_argument("--example", default="atis", help="example config (default atis)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; --quick: 1)")
    p.add_argument("--seed-list", default=None, metavar="S,S,...",
                   help="these seeds instead of --seeds consecutive ones from the example's, e.g. 42,44")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (repeatable)")
    p.add_argument("--output", default=None, help=f"folder for the runs (default runs/{name}/<example>)")


def seed_runs(args: argparse.Namespace, name: str) -> tuple[Path, list[int], list[str]]:
    """Runs folder, seeds (from the example's ``train.seed`` on) and overrides of a seeds x example benchmark.
    A quick run gets a fresh folder, 32 training / 16 evaluation examples per task, 32 tokens and one epoch."""

    out = Path(args.output) if args.output else (scratch_dir(f"{name}-") if args.quick
                                                 else ROOT / "runs" / name / args.example)
    overrides = list(args.overrides)
    if args.quick:
        overrides += tiny_overrides(example_config(args.example, [], out / "unused"), train=32, evaluate=16)
        overrides += ["train.epochs=1"]
    if getattr(args, "seed_list", None):
        return out, [int(x) for x in args.seed_list.split(",")], overrides
    first = example_config(args.example, overrides, out / "unused").train.seed
    return out, list(range(first, first + (args.seeds or (1 if args.quick else 3)))), overrides
