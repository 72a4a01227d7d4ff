"""Inference: one multi-task model answering k tasks against k single-task models on the same inputs.

Uses the k=3 tasks of ``examples/english3.yaml`` (ATIS intent, BBC topic, Rotten Tomatoes sentiment) with
the MiniLM encoder. Throughput does not depend on what the heads learned, so the checkpoints are saved
untrained (fresh heads on the pretrained encoder) — the code path is the user's: ``polytask.load`` then
``predict``. The inputs are test texts of the three tasks, taken in turn. Each side runs in its own
process, so its resident memory (Python and torch included) is measured alone: once the models are loaded,
and at its peak (loading transients and inference included); sides alternate and
each side's best repetition counts. Prints ``ratio: <multi inputs/s ÷ k single-task models' inputs/s>``
(goal: at least 0.9·k).

    python bench/infer_speed.py            # 768 inputs, 3 repetitions per side
    python bench/infer_speed.py --quick    # 24 inputs of up to 32 tokens, batch 8, 1 repetition (labels fitted on
                                           # 32 training examples per task)
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import example_config, machine, parser, ratio_line, scratch_dir, setup_threads, tiny_overrides


def build_checkpoints(folder: Path, precision: str | None, quick: bool) -> tuple[Path, dict[str, Path]]:
    from accelerate.utils import set_seed

    from polytask.catalog.encoders import resolve_encoder
    from polytask.compare.runner import variant_config
    from polytask.model.encoder import load_encoder
    from polytask.model.io import save_checkpoint
    from polytask.model.multitask import MultiTaskModel
    from polytask.train.setup import build_run

    overrides = [f"train.precision={precision}"] if precision else []
    if quick:  # read and tokenise a few dozen examples per task, and answer with 32-token inputs
        overrides += tiny_overrides(example_config("english3", [], folder / "unused"))
    config = example_config("english3", overrides, folder / "unused")
    set_seed(0)
    run = build_run(config)  # reads the data and fits every task's labels
    multi_dir = save_checkpoint(folder / "multi", run.model, run.tokenizer, config, run.tasks)
    singles = {}
    for name, task in run.tasks.items():
        cfg = variant_config(config, "single", name, 0, folder / name)
        model = MultiTaskModel(load_encoder(resolve_encoder(config.model.encoder)), {name: task},
                               pooling=cfg.model.pooling, dropout=cfg.model.dropout)
        singles[name] = save_checkpoint(folder / name, model, run.tokenizer, cfg, {name: task})
    return multi_dir, singles


def child(side: str, folder: Path, n: int, batch_size: int, threads: int | None) -> None:
    """Load one side's model(s), answer every task for the inputs, print seconds and peak memory as JSON."""
    setup_threads(threads)
    import polytask

    inputs = json.loads((folder / "inputs.json").read_text(encoding="utf-8"))[:n]
    names = ["multi"] if side == "multi" else json.loads((folder / "tasks.json").read_text())
    models = [polytask.load(folder / name) for name in names]
    loaded_mb = rss_mb()
    for m in models:  # warm-up
        m.predict(inputs[:batch_size], batch_size=batch_size)
    start = time.perf_counter()
    answered = [m.predict(inputs, batch_size=batch_size) for m in models]
    seconds = time.perf_counter() - start
    tasks = sorted({t for preds in answered for t in preds[0]})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"side": side, "seconds": seconds, "inputs": len(inputs), "tasks": tasks,
                      "models": len(models), "peak_mb": peak_mb, "loaded_mb": loaded_mb}))


def rss_mb() -> float:
    """Resident memory now (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--inputs", type=int, default=None, help="inputs answered per side (default 768; --quick: 24)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per side (default 3; --quick: 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 32; --quick: 8")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="default: the example's (auto)")
    p.add_argument("--child", nargs=2, metavar=("SIDE", "FOLDER"), help=argparse_hidden())
    args = p.parse_args()
    n = args.inputs or (24 if args.quick else 768)
    args.batch_size = args.batch_size or (8 if args.quick else 32)
    if args.child:
        child(args.child[0], Path(args.child[1]), n, args.batch_size, args.threads)
        return
    repeats = args.repeats or (1 if args.quick else 3)
    folder = scratch_dir("bench-infer-")
    multi_dir, singles = build_checkpoints(folder, args.precision, args.quick)
    (folder / "tasks.json").write_text(json.dumps(list(singles)))
    import polytask
    from polytask.compare.cost import sample_inputs

    inputs = sample_inputs(polytask.load(multi_dir), n)  # read here, so no child counts the datasets' memory
    (folder / "inputs.json").write_text(json.dumps(inputs, ensure_ascii=False), encoding="utf-8")
    k = len(singles)
    print(f"machine: {machine()}")
    cmd = [sys.executable, __file__, "--child", "", str(folder), "--inputs", str(n),
           "--batch-size", str(args.batch_size)] + (["--threads", str(args.threads)] if args.threads else [])
    best: dict[str, dict] = {}
    for r in range(repeats):
        for side in ("multi", "single"):
            cmd[3] = side
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            res = json.loads(out)
            if side not in best or res["seconds"] < best[side]["seconds"]:
                best[side] = res
            print(f"repetition {r + 1} {side}: {res['models']} model(s), {res['inputs']} inputs x "
                  f"{len(res['tasks'])} tasks in {res['seconds']:.2f} s, memory with models loaded "
                  f"{res['loaded_mb']:.0f} MB, peak {res['peak_mb']:.0f} MB")
    m, s = best["multi"], best["single"]
    assert m["tasks"] == s["tasks"], "both sides must answer the same tasks"
    m_rate, s_rate = n / m["seconds"], n / s["seconds"]
    print(f"multi-task model: {m_rate:.1f} inputs/s (every one of {k} tasks); memory loaded "
          f"{m['loaded_mb']:.0f} MB, peak {m['peak_mb']:.0f} MB")
    print(f"{k} single-task models: {s_rate:.1f} inputs/s; memory loaded {s['loaded_mb']:.0f} MB, "
          f"peak {s['peak_mb']:.0f} MB")
    print(f"goal: ratio >= 0.9 x k = {0.9 * k:.1f}")
    shutil.rmtree(folder, ignore_errors=True)
    print(ratio_line(m_rate / s_rate))


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
