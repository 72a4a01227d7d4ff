"""``sampling: all_tasks`` step time against its tasks' batches run one at a time, on the same batches.

Under ``all_tasks`` a training step holds one batch of every task. Padding them all to one length would make a
step on ``examples/english3.yaml`` (BBC articles at 128 tokens beside ATIS utterances at ~15) cost three times
the long batch; polytask runs batches of different lengths as separate segments of one model call instead.
This script builds the example's run once and times, side by side on the same batches (forward + backward,
no optimizer update, so the model never changes):

- ``all_tasks``: ``train_step`` on the step's window — one model call over its segments, one backward;
- ``separate``: ``train_step`` on each task's batch alone, one after the other (the sum is reported);
- ``padded``: the old way for reference — the batches stacked and padded to the longest, one forward/backward.

Order alternates per round. Prints the per-step medians and ``ratio: <separate ÷ all_tasks>`` (goal: all_tasks
at most 1.2x the separate sum, i.e. a ratio of at least 0.83).

    python bench/all_tasks_step.py              # 12 steps x 3 rounds
    python bench/all_tasks_step.py --quick      # 2 steps x 1 round, max_length 32, batch 4
"""

from __future__ import annotations

import statistics
import time

from common import example_config, machine, parser, ratio_line, scratch_dir, setup_threads


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=None, help="steps timed per round (default 12; --quick: 2)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick: 1)")
    args = p.parse_args()
    setup_threads(args.threads)
    import torch
    from accelerate import Accelerator

    from polytask.data.features import to_device
    from polytask.data.joint import stack_sources
    from polytask.precision import runtime_precision
    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    steps = args.steps or (2 if args.quick else 12)
    rounds = args.rounds or (1 if args.quick else 3)
    overrides = ["train.sampling=all_tasks"]
    if args.quick:
        overrides += ["model.max_length=32", "train.batch_size=4"] + [
            f"tasks.{t}.max_train_samples=16" for t in ("intent", "topic", "sentiment")]
    config = example_config("english3", overrides, scratch_dir("bench-all-tasks-") / "run")
    precision = runtime_precision(config.train.precision, "cpu")
    print(f"machine: {machine()}")
    print(f"examples/english3.yaml, sampling all_tasks, batch {config.train.batch_size}, "
          f"max_length {config.model.max_length}, precision {precision}")
    run = build_run(config)
    acc = Accelerator(cpu=True, mixed_precision="bf16" if precision == "bf16" else "no")
    model = acc.prepare(run.model)
    model.train()
    k = run.plan.tasks_per_step
    plan = run.plan.epoch(0)
    windows = [plan[s * k:(s + 1) * k] for s in range(steps + 1)]  # the first one warms up

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    def padded(window):
        inputs, parts = stack_sources([run.collate(s, r) for s, r in window], run.pad_id, run.tasks)
        inputs = to_device(inputs, acc.device)
        logits = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], tasks=list(parts))
        acc.backward(sum(run.tasks[t].loss(logits[t][pos], lab) for t, (pos, lab) in parts.items()))

    def together(window):
        train_step(acc, model, run, window, step=0)

    def separate(window):
        run.plan.tasks_per_step = 1
        try:
            for one in window:
                train_step(acc, model, run, [one], step=0)
        finally:
            run.plan.tasks_per_step = k

    sides = {"all_tasks": together, "separate": separate, "padded": padded}
    times: dict[str, list[float]] = {name: [] for name in sides}
    lengths = []
    for r in range(rounds):
        for i, window in enumerate(windows):
            order = list(sides) if (r + i) % 2 == 0 else list(reversed(sides))
            for name in order:
                t = timed(lambda w=window, f=sides[name]: f(w))
                if i > 0:
                    times[name].append(t)
            if r == 0 and i > 0:
                lengths.append([run.collate(s, rows)["input_ids"].shape[1] for s, rows in window])
    tasks = [s for s, _ in windows[0]]
    print("tasks in a step: " + ", ".join(tasks) + "; their batches' lengths (tokens), first steps: "
          + "; ".join("/".join(map(str, x)) for x in lengths[:4]))
    med = {name: statistics.median(v) for name, v in times.items()}
    for name in sides:
        print(f"{name:>9}: {1000 * med[name]:7.1f} ms per step (median of {len(times[name])})")
    print(f"all_tasks / separate sum: {med['all_tasks'] / med['separate']:.3f}  (goal <= 1.2)")
    print(f"padded to one length / separate sum: {med['padded'] / med['separate']:.3f}  (what segments avoid)")
    torch.set_grad_enabled(True)
    print(ratio_line(med["separate"] / med["all_tasks"]))


if __name__ == "__main__":
    main()
