"""Loop overhead: polytask's training loop against a bare PyTorch loop fed the identical batches.

Both sides build the same run (``examples/atis.yaml``: same weights, optimizer, scheduler, precision — the
example's ``auto``, resolved for this CPU) and train on the same batch plan (under joint batches, the ATIS
intent and slot tasks share each batch). polytask runs ``polytask.train`` (Accelerate, loss weighting,
per-task loss bookkeeping, logging, progress bar); the bare loop runs collate → forward → losses → backward →
clip → step. Time is taken between the end of optimizer step ``W`` (warm-up: 10, --quick: 2) and the end of
the last step, so model loading, tokenisation and the final validation are outside the window on both sides
(polytask's step times come from the timestamps of its metrics log, written every ``W`` steps). The steps
must stay within the first epoch (ATIS has 129 joint batches per epoch), so that the epoch-end validation is
outside the window too. Sides alternate (and which goes first); each side's best repetition counts.

    python bench/loop_overhead.py            # 120 steps, 2 repetitions per side
    python bench/loop_overhead.py --quick    # 8 steps (6 timed) on 128 examples, 32 tokens, batch 8
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

from common import bare_train, example_config, machine, parser, ratio_line, scratch_dir, setup_threads, tiny_overrides


def polytask_window(config, first: int) -> float:
    import polytask

    shutil.rmtree(config.train.output_dir, ignore_errors=True)
    polytask.train(config)
    log = [json.loads(x) for x in (Path(config.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    times = {r["step"]: r["time"] for r in log if r["type"] == "train"}
    last = config.train.max_steps
    return times[last] - times[first]


def bare_window(config, first: int) -> float:
    from accelerate.utils import set_seed

    from polytask.train.setup import build_run

    set_seed(config.train.seed)
    run = build_run(config)
    batches = run.plan.epoch(0)
    if len(batches) < config.train.max_steps:
        raise SystemExit(f"--steps {config.train.max_steps} is more than the {len(batches)} batches of one epoch: "
                         "the epoch-end validation would fall inside polytask's timed window")
    res = bare_train(run.model, run, [batches[: config.train.max_steps]], precision=config.train.precision)
    return res["stamps"][-1] - res["stamps"][first - 1]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 120; --quick: 8)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions per side (default 2; --quick: 1)")
    args = p.parse_args()
    setup_threads(args.threads)
    first = 2 if args.quick else 10  # warm-up steps before the timed window; also the logging interval
    steps = args.steps or (8 if args.quick else 120)
    repeats = args.repeats or (1 if args.quick else 2)
    if steps % first or steps <= first:
        raise SystemExit(f"--steps must be a multiple of {first} above {first}")
    tmp = scratch_dir("bench-loop-")
    overrides = [f"train.max_steps={steps}", f"train.logging_steps={first}"]
    if args.quick:  # 16 batches of 8 per epoch: the 8 steps stay inside the first epoch
        overrides += tiny_overrides(example_config("atis", [], tmp / "unused"), train=128)
    config = example_config("atis", overrides, tmp / "run")
    print(f"machine: {machine()}")
    print(f"examples/atis.yaml, {steps} steps, timed steps {first + 1}-{steps}, batch {config.train.batch_size}, "
          f"max_length {config.model.max_length}, precision {config.train.precision}")
    bare, ours = [], []
    for r in range(repeats):
        if r % 2 == 0:  # alternate which side goes first
            bare.append(bare_window(config, first))
            ours.append(polytask_window(config, first))
        else:
            ours.append(polytask_window(config, first))
            bare.append(bare_window(config, first))
        print(f"repetition {r + 1}: bare loop {bare[-1]:.2f} s, polytask {ours[-1]:.2f} s "
              f"(ratio {bare[-1] / ours[-1]:.3f})")
    n = steps - first
    b, o = min(bare), min(ours)
    print(f"bare loop: {n / b:.2f} steps/s; polytask: {n / o:.2f} steps/s (best of {repeats})")
    if repeats > 1:
        print(f"median of the per-repetition ratios: {statistics.median(x / y for x, y in zip(bare, ours)):.3f}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(ratio_line(b / o))


if __name__ == "__main__":
    main()
