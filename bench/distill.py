"""Distillation: a multi-task teacher, the same small student from labels only, and the distilled student.

Quality. For one example config, per seed: the teacher is the example trained as shipped (or an existing run
given with ``--teacher-runs``, ``{seed}`` standing for the seed, e.g. the ``multi`` runs of ``polytask
compare``); then ``polytask distill`` trains the student (``--layers`` of the teacher's layers, evenly spaced
from the first, initialised from the teacher) from labels only and from the teacher, with the example's
training settings. Test metrics per task (main metric), the share of the teacher's mean score the distilled
student keeps, and inference examples/s of teacher and student measured side by side — mean ± std over seeds.

Speed of the teacher outputs. In the same process, one distillation run with ``teacher_outputs: cache`` and
one with ``fly`` (same seed, ``--speed-epochs`` epochs), timed whole: which is faster here.

``ratio`` = the distilled student's share of the teacher's mean score (mean over seeds).

    python bench/distill.py --example atis --seeds 3 --teacher-runs 'runs/compare-atis/seed{seed}/multi'
    python bench/distill.py --example chinese --layers 6 --seeds 3
    python bench/distill.py --quick          # atis, 1 seed: 32 examples/task, 32 tokens, a 1-layer student
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common import add_seed_args, example_config, machine, parser, ratio_line, seed_runs, setup_threads


def finished(run: Path) -> bool:
    state = run / "last" / "training_state" / "trainer_state.json"
    return (run / "best" / "polytask.json").is_file() and state.is_file() and json.loads(state.read_text())["finished"]


def percent(values: list[float | None]) -> str:
    """``mean ± std`` in percent of the values given (``–`` when there are none)."""
    from polytask.compare.runner import mean_std

    values = [v for v in values if v is not None]
    if not values:
        return "–"
    m, sd = mean_std(values)
    return f"{100 * m:.2f} ± {100 * sd:.2f}"


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    add_seed_args(p, "bench-distill")
    p.add_argument("--layers", type=int, default=None, help="student layers (default 3; --quick: 1)")
    p.add_argument("--alpha", type=float, default=0.5, help="share of the soft loss (default 0.5)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature (default 2)")
    p.add_argument("--teacher-runs", default=None,
                   help="existing teacher run folders, '{seed}' standing for the seed (default: train them)")
    p.add_argument("--speed-epochs", type=int, default=1, help="epochs of the cache-vs-fly timing runs (0: skip)")
    args = p.parse_args()
    setup_threads(args.threads)
    import polytask
    from polytask.distill.runner import distill

    out, seeds, overrides = seed_runs(args, "bench-distill")
    layers = args.layers or (1 if args.quick else 3)
    print(f"machine: {machine()}")
    print(f"example: {args.example}; student: {layers} layers; alpha {args.alpha}, temperature {args.temperature}")
    summaries = []
    first = seeds[0]
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        if args.teacher_runs:
            teacher = Path(args.teacher_runs.format(seed=seed))
        else:
            teacher = seed_dir / "teacher"
            if not finished(teacher):
                start = time.perf_counter()
                polytask.train(example_config(args.example, [*overrides, f"train.seed={seed}"], teacher),
                               overwrite=True)
                print(f"seed {seed}: teacher trained in {time.perf_counter() - start:.0f} s", flush=True)
        student_dir = seed_dir / "student"
        report = student_dir / "distill.json"
        if report.is_file() and not args.quick:
            summaries.append(json.loads(report.read_text()))
            continue
        cfg = example_config(args.example, [*overrides, f"train.seed={seed}", f"train.distill.teacher={teacher}",
                                            f"train.distill.student.layers={layers}",
                                            f"train.distill.alpha={args.alpha}",
                                            f"train.distill.temperature={args.temperature}"], student_dir)
        start = time.perf_counter()
        summaries.append(distill(cfg, overwrite=True, inference_samples=64 if args.quick else 256).summary)
        print(f"seed {seed}: students trained and scored in {time.perf_counter() - start:.0f} s", flush=True)

    tasks = list(summaries[0]["tasks"])
    print(f"\ntest split, {len(seeds)} seed(s); main metric per task, mean ± std over seeds\n")
    print("| task | metric | teacher | student, labels only | distilled student | kept |")
    print("|---|---|---|---|---|---|")
    for t in tasks:
        rows = [s["tasks"][t] for s in summaries]
        print(f"| {t} | {rows[0]['metric']} | " + " | ".join(percent([r.get(k) for r in rows]) for k in
                                                                ("teacher", "labels_only", "distilled", "kept")) + " |")
    print("| mean | | " + " | ".join(percent([s["mean"].get(k) for s in summaries]) for k in
                                       ("teacher", "labels_only", "distilled")) + " | "
          + percent([s["kept"] for s in summaries]) + " |")
    sp = [s["speed"] for s in summaries if s["speed"]]
    if sp:
        print(f"\nparameters: teacher {sp[0]['teacher_parameters'] / 1e6:.1f}M, student "
              f"{sp[0]['student_parameters'] / 1e6:.1f}M ({sp[0]['teacher_layers']} -> {sp[0]['student_layers']} "
              f"layers); inference examples/s (every task, {sp[0]['inputs']} test inputs, batch "
              f"{sp[0]['batch_size']}, {sp[0]['threads']} threads): teacher "
              f"{statistics.mean(s['teacher_per_second'] for s in sp):.1f}, student "
              f"{statistics.mean(s['student_per_second'] for s in sp):.1f} (speed-up "
              + ", ".join(f"{s['speedup']:.2f}x" for s in sp) + ")")
    wins = sum(s["mean"]["distilled"] > s["mean"]["labels_only"] for s in summaries if "labels_only" in s["mean"])
    print(f"distilled beats labels-only on the mean in {wins} of {len(summaries)} seed(s)")

    if args.speed_epochs > 0:
        teacher = Path(args.teacher_runs.format(seed=first)) if args.teacher_runs else out / f"seed{first}" / "teacher"
        times = {}
        for mode in ("cache", "fly"):
            cfg = example_config(args.example, [*overrides, f"train.seed={first}", f"train.distill.teacher={teacher}",
                                                f"train.distill.student.layers={layers}",
                                                f"train.distill.teacher_outputs={mode}",
                                                f"train.epochs={args.speed_epochs}"], out / f"speed-{mode}")
            start = time.perf_counter()
            polytask.train(cfg, overwrite=True)
            times[mode] = time.perf_counter() - start
        print(f"\nteacher outputs, {args.speed_epochs} epoch(s) of distillation: cache {times['cache']:.1f} s "
              f"(one teacher pass first), fly {times['fly']:.1f} s: cache {times['fly'] / times['cache']:.2f}x "
              "the speed of fly")
    kept = [s["kept"] for s in summaries if s["kept"] is not None]
    print(ratio_line(statistics.mean(kept) if kept else float("nan")))


if __name__ == "__main__":
    main()
