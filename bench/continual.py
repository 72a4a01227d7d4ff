"""Continual learning: ATIS intent + slots, then + BBC topic, then + RT sentiment, per protection method, against
joint training on all four tasks from scratch.

Per seed, on a reduced budget (the first ``--train-samples`` training examples of each task, ``--eval-samples``
validation and test examples; ATIS's 64-token inputs for every task, so an article is read from its first ~50
words):

- ``base``: ``examples/atis.yaml`` (intent + slots), the example's epochs and batches;
- per method (``none``, ``replay``, ``ewc``, ``l2sp``, ``freeze``): ``polytask add-task`` of BBC topic onto the base
  run, then of RT sentiment onto that run, ``--new-epochs`` epochs each, the method's default settings;
- ``joint``: all four tasks trained together from the pretrained encoder, the example's epochs.

Test split, main metric per task, in points. Per method: the old tasks' mean change over each step (backward
transfer, from the step's own forgetting report: step 1 protects intent + slots, step 2 intent + slots + topic),
ATIS's change from the base after both steps, each new task's score when added and at the end, and the new
tasks' scores as a share of the joint run's; cost = seconds of the two add-task steps (training, the Fisher
estimate of ewc, and the forgetting report) vs seconds of the joint run (its training and a final test scoring).
Mean ± std over seeds.

Every finished run keeps its ``result.json`` (with the settings it was measured under) under ``--output``; running
again reuses it when the settings match, so an interrupted benchmark continues where it stopped.

    python bench/continual.py --seeds 3
    python bench/continual.py --quick      # 1 seed, none + replay: 16 examples/task, 32 tokens, 1 epoch
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import yaml
from common import ROOT, add_budget_args, budget, cached, machine, parser, ratio_line, setup_threads

METHODS = ("none", "replay", "ewc", "l2sp", "freeze")
NEW_TASKS = {
    "topic": {"type": "classification", "dataset": "bbc_news", "text": "text", "label": "topic"},
    "sentiment": {"type": "classification", "dataset": "rotten_tomatoes", "text": "text", "label": "sentiment"},
}
QUIET = ["train.progress=false", "train.tensorboard=false"]


def test_scores(run: Path) -> dict[str, float]:
    import polytask
    from polytask.evaluate.report import evaluate_checkpoint

    model = polytask.load(run / "best")
    s = evaluate_checkpoint(model, "test")
    return {t: 100 * s[t][task.main_metric] for t, task in model.tasks.items()}


def train_fresh(run: Path, overrides: list[str], extra_tasks: dict) -> dict:
    """Train examples/atis.yaml, plus ``extra_tasks``, from the pretrained encoder into ``run``; its test scores."""
    import polytask
    from polytask.config import load_config

    data = load_config(ROOT / "examples" / "atis.yaml", [*overrides, f"train.output_dir={run}"]).to_dict()
    data["tasks"].update(extra_tasks)
    start = time.perf_counter()
    polytask.train(load_config(data=data), overwrite=True)
    return {"scores": test_scores(run), "seconds": time.perf_counter() - start}


def add_step(previous: Path, task_file: Path, run: Path, overrides: list[str], method: str) -> dict:
    """``polytask add-task previous task_file --output run --method method``; the new run's test scores."""
    from polytask.continual.runner import add_task

    start = time.perf_counter()
    r = add_task(previous, task_file, overrides=overrides, output=str(run), method=method, overwrite=True)
    return {"scores": test_scores(run), "seconds": time.perf_counter() - start,
            "backward_transfer": r.report["backward_transfer"]}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default {','.join(METHODS)}; "
                                                   "--quick: none,replay)")
    p.add_argument("--new-epochs", type=int, default=None, help="epochs of each add-task step (default 2; --quick 1)")
    add_budget_args(p, "bench-continual")
    args = p.parse_args()
    setup_threads(args.threads)
    from polytask.compare.runner import mean_std

    methods = args.methods.split(",") if args.methods else (["none", "replay"] if args.quick else list(METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"--methods: unknown method '{bad[0]}'; choose from {', '.join(METHODS)}")
    new_epochs = args.new_epochs or (1 if args.quick else 2)
    out, overrides, base_cfg = budget(args, "atis", "bench-continual", [])
    seeds = [base_cfg.train.seed + i for i in range(args.seeds)]
    limits = {"max_train_samples": args.train_samples, "max_eval_samples": args.eval_samples}
    print(f"machine: {machine()}")
    print(f"atis, then + topic, then + sentiment: {args.train_samples} training / {args.eval_samples} test examples "
          f"per task, {base_cfg.model.max_length} tokens, batch {base_cfg.train.batch_size}; base and joint "
          f"{base_cfg.train.epochs} epochs, each added task {new_epochs}; methods {', '.join(methods)}; "
          f"seeds {seeds}", flush=True)

    rows: dict[str, list[dict]] = {m: [] for m in methods}
    joint_rows: list[dict] = []
    for seed in seeds:
        folder = out / f"seed{seed}"
        seed_set = [*QUIET, *overrides, f"train.seed={seed}"]

        base = folder / "base"
        base_key = {"run": "base", "overrides": seed_set}
        base_result = cached(base, base_key, partial(train_fresh, base, seed_set, {}))
        print(f"seed {seed} base: " + ", ".join(f"{t} {v:.2f}" for t, v in base_result["scores"].items())
              + f" ({base_result['seconds']:.0f} s)", flush=True)

        new_specs = {t: {**spec, **limits} for t, spec in NEW_TASKS.items()}
        task_files = {}
        for t in NEW_TASKS:
            task_files[t] = folder / f"add-{t}.yaml"
            task_files[t].parent.mkdir(parents=True, exist_ok=True)
            task_files[t].write_text(yaml.safe_dump({"tasks": {t: new_specs[t]},
                                                     "train": {"epochs": new_epochs}}))
        for m in methods:
            steps, previous, key = [], base, base_key
            for t in NEW_TASKS:
                run = folder / m / f"+{t}"
                key = {"add": t, "method": m, "task_file": task_files[t].read_text(), "onto": key}
                steps.append(cached(run, key, partial(add_step, previous, task_files[t], run, seed_set, m)))
                previous = run
            final = steps[-1]["scores"]
            atis = [final[t] - base_result["scores"][t] for t in base_result["scores"]]
            row = {"final": final, "bwt": [s["backward_transfer"] for s in steps],
                   "atis_change": sum(atis) / len(atis), "added": [steps[0]["scores"]["topic"], final["sentiment"]],
                   "topic_change": final["topic"] - steps[0]["scores"]["topic"],
                   "seconds": sum(s["seconds"] for s in steps)}
            rows[m].append(row)
            print(f"seed {seed} {m}: " + ", ".join(f"{t} {v:.2f}" for t, v in final.items())
                  + f"; ATIS change {row['atis_change']:+.2f}, backward transfer "
                  + " / ".join(f"{b:+.2f}" for b in row["bwt"]) + f" ({row['seconds']:.0f} s)", flush=True)
        joint = folder / "joint"
        joint_rows.append(cached(joint, {"run": "joint", "overrides": seed_set, "tasks": new_specs},
                                 partial(train_fresh, joint, seed_set, new_specs)))
        print(f"seed {seed} joint: " + ", ".join(f"{t} {v:.2f}" for t, v in joint_rows[-1]["scores"].items())
              + f" ({joint_rows[-1]['seconds']:.0f} s)", flush=True)

    def ms(values, signed=False):
        m, s = mean_std(values)
        return f"{m:+.2f} ± {s:.2f}" if signed else f"{m:.2f} ± {s:.2f}"

    tasks = list(joint_rows[0]["scores"])
    n = len(seeds)
    print(f"\nTest split, main metric per task (points), mean ± std over {n} seed{'s' * (n > 1)}:\n")
    print("| method | " + " | ".join(tasks) + " | ATIS change from base | backward transfer: +topic / +sentiment "
          "| topic when added → change by +sentiment | new tasks / joint | seconds (2 steps; joint: whole run) |")
    print("|---" * (len(tasks) + 6) + "|")
    joint_new = [[j["scores"][t] for t in NEW_TASKS] for j in joint_rows]
    share_of: dict[str, float] = {}
    for m in methods:
        r = rows[m]
        shares = [100 * sum(x["added"]) / sum(j) for x, j in zip(r, joint_new)]
        share_of[m] = mean_std(shares)[0]
        print(f"| {m} | " + " | ".join(ms([x["final"][t] for x in r]) for t in tasks)
              + f" | {ms([x['atis_change'] for x in r], True)} | {ms([x['bwt'][0] for x in r], True)} / "
              f"{ms([x['bwt'][1] for x in r], True)} | {ms([x['added'][0] for x in r])} → "
              f"{ms([x['topic_change'] for x in r], True)} | {ms(shares)}% | {ms([x['seconds'] for x in r])} |")
    print("| joint (all four from scratch) | " + " | ".join(ms([j["scores"][t] for j in joint_rows]) for t in tasks)
          + " | – | – | – | 100% | " + ms([j["seconds"] for j in joint_rows]) + " |")
    print("\nnew tasks / joint: (topic when added + sentiment when added) / (the joint run's topic + sentiment), "
          "per seed. Backward transfer: the step's mean change of the tasks it protects.")
    best = "replay" if "replay" in share_of else methods[0]
    print(f"{best}: new tasks reach {share_of[best]:.1f}% of the joint run's scores")
    print(ratio_line(share_of[best] / 100))


if __name__ == "__main__":
    main()
