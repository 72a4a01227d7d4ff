"""Step-time overhead of each loss-weighting / gradient method against static weighting, in one run.

One model is built from an example config with ``sampling: all_tasks`` (every step holds one batch of every
task, which the gradient methods need; using it for every method keeps the steps comparable), in the
example's precision (``auto``: bf16 only where this CPU runs it natively). A first
untimed round warms every method up; then rounds alternate the methods (and their order): in each round
every method runs the same number of full training steps (forward, its backward, clip, AdamW step). Each
method's median seconds per step over the rounds is compared with static weighting's.
``ratio`` = static's time / the slowest method's time.

    python bench/weighting_overhead.py                 # english3, 6 rounds of 5 steps
    python bench/weighting_overhead.py --quick         # atis, 1 round of 1 step: 32 examples, 32 tokens, batch 8
"""

from __future__ import annotations

import statistics
import time

from common import example_config, machine, parser, ratio_line, scratch_dir, setup_threads, tiny_overrides


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--example", default=None, help="example config (default english3; --quick: atis)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per method per round")
    args = p.parse_args()
    setup_threads(args.threads)
    from accelerate import Accelerator

    from polytask.precision import runtime_precision
    from polytask.train.loop import train_step
    from polytask.train.setup import build_run
    from polytask.weighting import WEIGHTINGS

    example = args.example or ("atis" if args.quick else "english3")
    rounds = args.rounds or (1 if args.quick else 6)
    steps = args.steps or (1 if args.quick else 5)
    overrides = ["train.sampling=all_tasks"]
    tmp = scratch_dir("bench-weighting-")
    if args.quick:  # a few dozen examples per task, 32 tokens, batch 8
        overrides += tiny_overrides(example_config(example, [], tmp / "unused"))
    config = example_config(example, overrides, tmp / "run")
    run = build_run(config)
    precision = runtime_precision(config.train.precision, "cpu")
    acc = Accelerator(cpu=True, mixed_precision="bf16" if precision == "bf16" else "no")
    model, optimizer = acc.prepare(run.model, run.optimizer)  # prepared: the forward runs in `precision`
    model.train()
    names = sorted(WEIGHTINGS, key=lambda n: (n != "static", n))
    methods = {n: WEIGHTINGS.get(n)({t: c.weight for t, c in config.tasks.items()}) for n in names}
    k = run.plan.tasks_per_step
    plan = run.plan.epoch(0)
    times: dict[str, list[float]] = {n: [] for n in names}
    pos = 0
    print(f"machine: {machine()}")
    print(f"{example}: {len(config.tasks)} tasks, sampling all_tasks, {rounds} rounds x {steps} steps per method, "
          f"batch {config.train.batch_size}, max_length {config.model.max_length}, precision {precision}")
    for r in range(-1, rounds):  # round -1 warms every method up and is not timed
        order = names if r % 2 == 0 else list(reversed(names))
        for n in order:
            run.weighting = methods[n]
            start = time.perf_counter()
            for s in range(steps):
                if pos + k > len(plan):
                    pos = 0
                window = plan[pos:pos + k]
                pos += k
                train_step(acc, model, run, window, step=(r + 1) * steps + s)
                run.weighting.end_step(lambda t: t)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r >= 0:
                times[n].append((time.perf_counter() - start) / steps)
    static = statistics.median(times["static"])
    print(f"{'method':10s} {'s/step':>8s} {'vs static':>10s}")
    for n in names:
        med = statistics.median(times[n])
        print(f"{n:10s} {med:8.3f} {med / static:9.2f}x")
    slowest = max(statistics.median(v) for v in times.values())
    print(ratio_line(static / slowest))


if __name__ == "__main__":
    main()
