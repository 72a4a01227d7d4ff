"""Robustness training: clean metric, noisy metric and the noise drop per method, plus step-time cost.

Quality. For one example config on a reduced budget (the first ``--train-samples`` training examples of each
task, ``--eval-samples`` validation / test examples, ``--epochs``), per seed and per method it trains a model,
then runs ``polytask robustness`` on the test split (rate ``--rate``, noise seed 0): ``clean`` is the mean over
tasks of each task's main metric, ``noisy`` the same under noise (mean over the noises that apply), ``drop`` =
clean − noisy, in points. ``drop cut`` is how much smaller a method's drop is than no robustness training's
(mean over seeds; the goal: ≥ 30 %), ``clean cost`` how many points of clean metric it gives up (goal: ≤ 0.5).

Methods: ``none``; the adversarial ones (fgm, pgd, freelb, smart, with their default options or ``--option``);
``augment`` (``train.augment`` at polytask's defaults: noisy copies of the training rows, or ``--augment-prob``,
``--augment-rate``, ``--augment-consistency``) and ``augment-consistency`` (the same with consistency weight
``--consistency``). The augmentation trains
on every noise of the suite but ``--held-out`` (default typo_keyboard), whose drop is reported on its own: does
robustness carry over to a noise family never seen in training? Training noise is drawn from (train.seed, step,
row), the evaluation's from noise seed 0 and the test row: the two never coincide.

Speed. In the same process, one model and one plan: rounds alternate the methods (and their order), each
running the same full training steps; each method's median seconds per step is compared with no
adversarial training's. ``ratio`` = none's step time / the slowest method's.

Finished runs keep ``result.json`` under ``--output`` and are reused when their config is unchanged.

    python bench/adversarial.py --example atis --seeds 3
    python bench/adversarial.py --example english3 --seeds 3
    python bench/adversarial.py --example atis --seeds 3 --methods augment,augment-consistency
    python bench/adversarial.py --quick           # atis, none + fgm + augment, 1 seed: 16 examples/task, 32 tokens
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import yaml
from common import (
    add_budget_args,
    budget,
    example_config,
    keyed_result,
    machine,
    parser,
    ratio_line,
    scratch_dir,
    setup_threads,
)

AUGMENT = ("augment", "augment-consistency")


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--example", default=None, help="example config (default atis)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: none and every method)")
    p.add_argument("--rate", type=float, default=0.1, help="noise rate of the robustness suite")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 4; --quick: 1)")
    p.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option for every adversarial method, e.g. --option epsilon=0.2 (repeatable)")
    p.add_argument("--held-out", default="typo_keyboard", help="the noise the augmentation never trains on")
    p.add_argument("--augment-prob", type=float, default=None, help="train.augment.prob (default: polytask's)")
    p.add_argument("--augment-rate", type=float, default=None, help="train.augment.rate (default: polytask's)")
    p.add_argument("--augment-consistency", type=float, default=None,
                   help="augment's train.augment.consistency (default: polytask's)")
    p.add_argument("--consistency", type=float, default=1.0, help="augment-consistency's weight (1.0)")
    add_budget_args(p, "bench-adversarial")
    args = p.parse_args()
    setup_threads(args.threads)
    from polytask.adversarial import ADVERSARIAL
    from polytask.compare.runner import mean_std
    from polytask.robustness import NOISES

    example = args.example or "atis"
    methods = args.methods.split(",") if args.methods else (["none", "fgm", "augment"] if args.quick
                                                             else ["none", *sorted(ADVERSARIAL.names()), *AUGMENT])
    options = {}
    for item in args.options:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    if args.held_out not in NOISES:
        raise SystemExit(f"--held-out: unknown noise {args.held_out!r}; choose from {', '.join(NOISES)}")
    from polytask.config import AugmentConfig

    default = AugmentConfig()
    augment = {"noise": [n for n in NOISES if n != args.held_out],
               "prob": default.prob if args.augment_prob is None else args.augment_prob,
               "rate": default.rate if args.augment_rate is None else args.augment_rate}
    plain = default.consistency if args.augment_consistency is None else args.augment_consistency
    for m in methods:
        if m != "none" and m not in AUGMENT:
            ADVERSARIAL.get(m, where="--methods").check_options(options, "--option")
    if "none" not in methods:
        methods.insert(0, "none")
    method_config = {m: ({"augment": {**augment, "consistency": args.consistency if m == AUGMENT[1] else plain}}
                         if m in AUGMENT else {"adversarial": {"method": m, **(options if m != "none" else {})}})
                     for m in methods}
    out, overrides, base = budget(args, example, "bench-adversarial", [])
    train_n, eval_n, seeds_n = args.train_samples, args.eval_samples, args.seeds
    print(f"machine: {machine()}")
    seeds = [base.train.seed + i for i in range(seeds_n)]
    print(f"{example}: tasks {', '.join(base.tasks)}; {train_n} training / {eval_n} test examples per task, "
          f"{base.train.epochs} epochs, batch {base.train.batch_size}, noise rate {args.rate}, seeds {seeds}")
    if any(m in AUGMENT for m in methods):
        print(f"augment: {', '.join(augment['noise'])} at rate {augment['rate']}, prob {augment['prob']}; "
              f"held out: {args.held_out}")

    results: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in seeds:
        for m in methods:
            res = run_one(base, m, seed, out / f"seed{seed}" / m, args.rate, method_config[m])
            results[m].append(res)
            shown = "  ".join(f"{t}={e['clean'] * 100:.2f}/{e['noisy'] * 100:.2f}" for t, e in res["tasks"].items())
            took = "reused" if res.get("reused") else f"{res['train_seconds']:.0f} s"
            print(f"seed {seed} {m}: clean/noisy {shown}  ({took})", flush=True)

    timing = step_times(example, overrides, methods, args.rounds or (1 if args.quick else 4),
                        1 if args.quick else 3, method_config)

    def summary(rs: list[dict], key: str) -> list[float]:
        return [100 * sum(e[key] for e in r["tasks"].values()) / len(r["tasks"]) for r in rs]

    def held_out_drop(rs: list[dict]) -> list[float]:
        """Clean − noisy under the held-out noise, mean over the tasks it applies to."""
        out_ = []
        for r in rs:
            es = [e for e in r["tasks"].values() if args.held_out in e["noises"]]
            sign = [1 if e.get("higher_is_better", True) else -1 for e in es]
            out_.append(100 * sum(s_ * (e["clean"] - e["noises"][args.held_out]) for s_, e in zip(sign, es))
                        / max(len(es), 1))
        return out_

    none_clean, none_drop = summary(results["none"], "clean"), summary(results["none"], "drop")
    none_held = held_out_drop(results["none"])
    rows = []
    print()
    print(f"| method | clean | noisy | drop | drop cut | clean cost | {args.held_out} drop (held out) | its cut | "
          "step time vs none |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in methods:
        clean, noisy, drop = (summary(results[m], k) for k in ("clean", "noisy", "drop"))
        cut = [1 - d / nd if nd else float("nan") for d, nd in zip(drop, none_drop)]  # paired by seed
        cost = [nc - c for c, nc in zip(clean, none_clean)]
        held = held_out_drop(results[m])
        held_cut = [1 - d / nd if nd else float("nan") for d, nd in zip(held, none_held)]
        row = {"method": m, "clean": mean_std(clean), "noisy": mean_std(noisy), "drop": mean_std(drop),
               "drop_cut": mean_std(cut), "clean_cost": mean_std(cost), "step_ratio": timing[m] / timing["none"],
               "held_out": args.held_out, "held_out_drop": mean_std(held), "held_out_cut": mean_std(held_cut)}
        rows.append(row)
        f = "{0[0]:.2f} ± {0[1]:.2f}".format
        extra = ("—", "—", "—") if m == "none" else (
            f"{100 * row['drop_cut'][0]:+.0f}% ± {100 * row['drop_cut'][1]:.0f}",
            f"{row['clean_cost'][0]:+.2f} ± {row['clean_cost'][1]:.2f}",
            f"{100 * row['held_out_cut'][0]:+.0f}% ± {100 * row['held_out_cut'][1]:.0f}")
        print(f"| {m} | {f(row['clean'])} | {f(row['noisy'])} | {f(row['drop'])} | {extra[0]} | {extra[1]} | "
              f"{f(row['held_out_drop'])} | {extra[2]} | {row['step_ratio']:.2f}x |")
    print()
    print("Per task, clean / noisy (mean over seeds):")
    for m in methods:
        per = {t: (sum(r["tasks"][t]["clean"] for r in results[m]) / len(seeds),
                   sum(r["tasks"][t]["noisy"] for r in results[m]) / len(seeds)) for t in results[m][0]["tasks"]}
        print(f"  {m}: " + "  ".join(f"{t} {100 * c:.2f} / {100 * n:.2f}" for t, (c, n) in per.items()))
    print()
    winners = [r for r in rows if r["method"] != "none" and r["drop_cut"][0] >= 0.30 and r["clean_cost"][0] <= 0.5]
    if winners:
        best = max(winners, key=lambda r: r["drop_cut"][0])
        print(f"goal met by {', '.join(r['method'] for r in winners)}; best {best['method']}: drop cut "
              f"{100 * best['drop_cut'][0]:.0f}%, clean cost {best['clean_cost'][0]:+.2f} pt, "
              f"{best['step_ratio']:.2f}x step time")
    else:
        best = max((r for r in rows if r["method"] != "none"), key=lambda r: r["drop_cut"][0])
        print(f"goal (drop cut >= 30% at <= 0.5 pt clean cost) not met; largest drop cut: {best['method']} "
              f"{100 * best['drop_cut'][0]:+.0f}% at clean cost {best['clean_cost'][0]:+.2f} pt")
    (out / "adversarial.json").write_text(json.dumps({"example": example, "seeds": seeds, "rows": rows,
                                                      "timing": timing}, indent=2), encoding="utf-8")
    if args.quick and not args.output:  # a quick run's fresh temporary folder
        shutil.rmtree(out, ignore_errors=True)
    print(ratio_line(timing["none"] / max(timing.values())))


def run_one(base, method: str, seed: int, folder: Path, rate: float, train_config: dict) -> dict:
    """Train one (method, seed) model and measure its robustness; reuse a finished run with the same config.
    ``train_config``: the method's ``train.adversarial`` or ``train.augment`` section."""
    from polytask.adversarial import ADVERSARIAL
    from polytask.config import Config
    from polytask.predict import Predictor
    from polytask.robustness import robustness
    from polytask.train.loop import train

    d = base.to_dict()
    d["train"]["seed"] = seed
    d["train"]["output_dir"] = str(folder)
    d["train"].update(train_config)
    cfg = Config.from_dict(d).validate()
    adversarial = train_config.get("adversarial", {}).get("method", "none")
    wanted = {"config": cfg.to_dict(), "rate": rate, "options": ADVERSARIAL.get(adversarial).options
              if adversarial != "none" else {}}  # the defaults too: a changed default is a different run

    def make() -> dict:
        start = time.perf_counter()
        res = train(cfg, overwrite=True)
        seconds = time.perf_counter() - start
        rob = robustness(Predictor(res.best_dir), "test", rate=rate, seed=0, progress=False)
        for sub in ("best", "last"):  # ~250 MB each; the scores are in result.json
            shutil.rmtree(folder / sub, ignore_errors=True)
        return {"tasks": rob["tasks"], "train_seconds": round(seconds, 1), "steps": res.global_step}

    return keyed_result(folder, wanted, make)


def step_times(example: str, overrides: list[str], methods: list[str], rounds: int, steps: int,
               method_config: dict[str, dict]) -> dict[str, float]:
    """Median seconds per full training step of each method, measured side by side on one model."""
    from accelerate import Accelerator

    from polytask.adversarial import ADVERSARIAL
    from polytask.augment import NoiseAugmentation
    from polytask.config import AugmentConfig
    from polytask.precision import runtime_precision
    from polytask.train.loop import train_step
    from polytask.train.setup import build_run

    config = example_config(example, overrides, scratch_dir("bench-adv-") / "run")
    run = build_run(config)
    acc = Accelerator(cpu=True, mixed_precision=runtime_precision(config.train.precision, "cpu").replace("fp32", "no"))
    model, optimizer = acc.prepare(run.model, run.optimizer)
    model.train()

    def instance(m: str):
        """(adversarial method, augmentation) of method ``m``."""
        if m in AUGMENT:
            aug = AugmentConfig(**method_config[m]["augment"])
            return None, NoiseAugmentation(aug, run.tasks, run.data, run.sources, run.tokenizer,
                                           config.model.max_length, config.train.seed)
        adv = method_config[m]["adversarial"]
        return (None if m == "none" else ADVERSARIAL.get(m)({k: v for k, v in adv.items() if k != "method"},
                                                             list(config.tasks))), None

    instances = {m: instance(m) for m in methods}
    plan = run.plan.epoch(0)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(-1, rounds):  # round -1 warms up and is not timed
        order = methods if r % 2 == 0 else list(reversed(methods))
        batches = [plan[((r + 1) * steps + s) % len(plan)] for s in range(steps)]  # the same for every method
        for m in order:
            run.adversarial, run.augment = instances[m]
            start = time.perf_counter()
            for b in batches:
                train_step(acc, model, run, [b], step=0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if r >= 0:
                times[m].append((time.perf_counter() - start) / steps)
    return {m: statistics.median(v) for m, v in times.items()}


if __name__ == "__main__":
    main()
