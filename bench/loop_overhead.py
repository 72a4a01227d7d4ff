"""Loop overhead: polytask's training loop against a bare PyTorch loop fed the identical batches.

Both sides build the same run (``examples/atis.yaml``: same weights, optimizer, scheduler, precision) and
train on the same batch plan. polytask runs ``polytask.train`` (Accelerate, loss weighting, per-task loss
bookkeeping, logging, progress bar); the bare loop runs collate → forward → loss → backward → clip → step.
Time is taken between the end of optimizer step 10 and the end of the last step, so model loading,
tokenisation and the final validation are outside the window on both sides (polytask's step times come
from the timestamps of its metrics log). Sides alternate (and which goes first); each side's best repetition counts.

    python bench/loop_overhead.py            # 200 steps, 2 repetitions per side
    python bench/loop_overhead.py --quick    # 40 steps, 1 repetition
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from common import bare_train, example_config, machine, parser, ratio_line, setup_threads

FIRST = 10  # steps before the timed window (warm-up)


def polytask_window(config) -> float:
    import polytask

    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    polytask.train(config)
    log = [json.loads(x) for x in (Path(config.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time"] for r in log if r["type"] == "train"}
    last = config.train.max_steps
    return times[last] - times[FIRST]


def bare_window(config) -> float:
    from accelerate.utils import set_seed

    from polytask.train.setup import build_run

    set_seed(config.train.seed)
    run = build_run(config)
    batches = run.plan.epoch(0)[: config.train.max_steps]
    res = bare_train(run.model, run, [batches], precision=config.train.precision)
    return res["stamps"][-1] - res["stamps"][FIRST - 1]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 200; --quick: 40)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per side (default 2; --quick: 1)")
    args = p.parse_args()
    setup_threads(args.threads)
    steps = args.steps or (40 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    config = example_config("atis", [f"train.max_steps={steps}", "train.logging_steps=10"], tmp / "run")
    if steps % 10 or steps <= FIRST:
        raise SystemExit("--steps must be a multiple of 10 above 10")
    print(f"machine: {machine()}")
    print(f"examples/atis.yaml, {steps} steps, timed steps {FIRST + 1}-{steps}, precision {config.train.precision}")
    bare, ours = [], []
    for r in range(repeats):
        if r % 2 == 0:  # alternate which side goes first
            bare.append(bare_window(config))
            ours.append(polytask_window(config))
        else:
            ours.append(polytask_window(config))
            bare.append(bare_window(config))
        print(f"repetition {r + 1}: bare loop {bare[-1]:.2f} s, polytask {ours[-1]:.2f} s "
              f"(ratio {bare[-1] / ours[-1]:.3f})")
    n = steps - FIRST
    b, o = min(bare), min(ours)
    print(f"bare loop: {n / b:.2f} steps/s; polytask: {n / o:.2f} steps/s (best of {repeats})")
    if repeats > 1:
        print(f"median of the per-repetition ratios: {statistics.median(x / y for x, y in zip(bare, ours)):.3f}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(ratio_line(b / o))


if __name__ == "__main__":
    main()
