"""bf16 against fp32 on this CPU: training speed, inference speed and the metric difference.

Trains ``examples/atis.yaml`` twice with ``polytask.train`` — identical except ``train.precision`` — from the
same seed, then evaluates each final model on the test split at its own precision. Training time is the
wall time of ``polytask.train`` (validation and checkpoints included); inference time is the best of
two passes over the test split per precision, alternating. Prints both speed ratios, the metrics and
``ratio: <fp32 training time ÷ bf16 training time>`` (goal: at least 1.5 at no more than 0.5 points lost).

First it says which bf16 path it measures on which hardware: the CPU model, what ``precision: auto`` decides
here and why (``polytask.precision``), and what oneDNN itself reports (its ISA, and the kernel a bf16 matmul
is dispatched to: ``brg_matmul:avx512_core_bf16`` / ``..._amx`` run bf16 natively; anything else, or no
oneDNN kernel at all, means bf16 is emulated and many times slower than fp32 on a real AVX2-only CPU).

    python bench/precision.py            # full ATIS, the example's 5 epochs (about 10 minutes on 2 cores)
    python bench/precision.py --quick    # 32 examples per task, 32 tokens, batch 8, 1 epoch (seconds)
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from common import (
    cpu_model,
    example_config,
    fmt,
    machine,
    onednn_lines,
    onednn_report,
    parser,
    precision_decision,
    ratio_line,
    scratch_dir,
    setup_threads,
    test_metrics,
    tiny_overrides,
)


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the example's; --quick: 1)")
    args = p.parse_args()
    setup_threads(args.threads)
    import torch

    import polytask
    from polytask.evaluate.runner import autocast_context
    from polytask.precision import resolve_precision
    from polytask.train.setup import build_run

    print(f"machine: {machine()}")
    print(f"CPU: {cpu_model()}")
    print(precision_decision())
    report = onednn_report()
    for line in onednn_lines(report):
        print(line)
    native = resolve_precision("auto", "cpu").precision == "bf16"
    if native != report["native"] and not report.get("error"):
        print(f"note: polytask's decision ({'native' if native else 'emulated'} bf16) and oneDNN's dispatch "
              f"({'native' if report['native'] else 'emulated'}) disagree on this machine")
    if not native:
        print("bf16 is emulated here: the bf16 side measures the slow path that precision: auto avoids"
              + (" (kept tiny in --quick)" if args.quick else ""))

    overrides = ["train.early_stopping.patience=null", "train.eval_batch_size=64"]
    if args.quick:  # a few steps on a few dozen examples (half that where bf16 is emulated): seconds
        overrides += tiny_overrides(example_config("atis", [], Path(tempfile.gettempdir()) / "unused"),
                                    *((32, 16) if native else (16, 8)))
    if args.epochs or args.quick:
        overrides.append(f"train.epochs={args.epochs or 1}")
    tmp = scratch_dir("bench-precision-")
    train_s, metrics, models = {}, {}, {}
    run = None
    for precision in ("fp32", "bf16"):
        config = example_config("atis", [*overrides, f"train.precision={precision}"], tmp / precision)
        start = time.perf_counter()
        result = polytask.train(config)
        train_s[precision] = time.perf_counter() - start
        run = run or build_run(config)  # data and label vocabularies for test metrics (same for both)
        models[precision] = result.model
        metrics[precision] = test_metrics(result.model, run, precision)
        print(f"{precision}: trained {result.global_step} steps in {train_s[precision]:.1f} s; "
              f"test: {fmt(metrics[precision])}")

    from polytask.data.features import collate, prepare_task_data

    data = prepare_task_data(run.tasks, run.tokenizer, run.config.model.max_length, splits=("test",),
                             fit_labels=False)
    batches = []
    for name, d in data.items():
        feats = sorted(d.features["test"], key=lambda f: len(f["input_ids"]))
        batches += [(name, collate(feats[i:i + 64], d.task, run.pad_id)) for i in range(0, len(feats), 64)]
    infer = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(2):
        for precision, model in models.items():
            model.eval()
            start = time.perf_counter()
            with torch.no_grad(), autocast_context(precision, torch.device("cpu")):
                for name, b in batches:
                    model(b["input_ids"], b["attention_mask"], b["token_type_ids"], tasks=[name])
            infer[precision] = min(infer[precision], time.perf_counter() - start)
    n_test = sum(len(d.features["test"]) for d in data.values())
    print(f"inference over {n_test} test examples: fp32 {infer['fp32']:.2f} s, bf16 {infer['bf16']:.2f} s "
          f"-> bf16 {infer['fp32'] / infer['bf16']:.2f}x")
    diff = {k: metrics["bf16"][k] - metrics["fp32"][k] for k in metrics["fp32"]}
    print("metric difference (bf16 − fp32, points): " + fmt(diff))
    print(f"training: bf16 {train_s['fp32'] / train_s['bf16']:.2f}x faster")
    shutil.rmtree(tmp, ignore_errors=True)
    print(ratio_line(train_s["fp32"] / train_s["bf16"]))


if __name__ == "__main__":
    main()
