"""LoRA (peft): one shared adapter, an adapter per task, and full fine-tuning, side by side.

For one example config, per seed, three runs with the example's data, epochs and batches: ``full`` (the example
as shipped), ``lora-shared`` and ``lora-per_task`` (``model.peft: {method: lora, r: --r}``, learning rate
``--lora-lr`` for adapter and heads — adapters want a larger step than full fine-tuning). Per variant: test
scores (main metric per task, mean ± std over seeds), trainable encoder parameters (and their share of the
encoder), checkpoint MB (``best/model.safetensors``), training step time (wall time of training / optimizer
steps), and inference examples/s answering every task, measured side by side on the same inputs in this
process (variants interleaved, best of 5), plus lora-shared merged into the encoder by ``polytask export
--merge``.

``ratio`` = lora-shared's mean score / full fine-tuning's (mean over seeds).

    python bench/lora.py --example atis --seeds 3
    python bench/lora.py --example english3 --seeds 3
    python bench/lora.py --quick          # atis, 1 seed: 32 examples/task, 32 tokens, 1 epoch
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import add_seed_args, example_config, machine, parser, ratio_line, seed_runs, setup_threads

VARIANTS = ("full", "lora-shared", "lora-per_task")


def finished(run: Path) -> bool:
    state = run / "last" / "training_state" / "trainer_state.json"
    return (run / "best" / "polytask.json").is_file() and state.is_file() and json.loads(state.read_text())["finished"]


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    add_seed_args(p, "bench-lora")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (8)")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="learning rate of the LoRA runs (1e-3)")
    p.add_argument("--inference-samples", type=int, default=None, help="inputs timed per variant (256; --quick 32)")
    args = p.parse_args()
    setup_threads(args.threads)
    import polytask
    from polytask.compare.cost import sample_inputs, timed
    from polytask.compare.runner import mean_std
    from polytask.evaluate.report import evaluate_checkpoint
    from polytask.export import export_merged
    from polytask.model.adapters import parameter_counts

    out, seeds, overrides = seed_runs(args, "bench-lora")
    print(f"machine: {machine()}")
    print(f"example: {args.example}; LoRA r {args.r}, lr {args.lora_lr}; full fine-tuning as the example ships")
    extra = {"full": [], **{f"lora-{s}": ["model.peft.method=lora", f"model.peft.r={args.r}", f"model.peft.sharing={s}",
                                          f"train.lr={args.lora_lr}", f"train.head_lr={args.lora_lr}"]
                            for s in ("shared", "per_task")}}
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in seeds:
        for v in VARIANTS:
            run = out / f"seed{seed}" / v
            if not finished(run) or args.quick:
                start = time.perf_counter()
                result = polytask.train(example_config(args.example, [*overrides, f"train.seed={seed}", *extra[v]],
                                                       run), overwrite=True)
                (run / "timing.json").write_text(json.dumps({"seconds": time.perf_counter() - start,
                                                             "steps": result.global_step}))
            timing = json.loads((run / "timing.json").read_text())
            model = polytask.load(run / "best")
            scores = evaluate_checkpoint(model, "test")
            c = parameter_counts(model.model)
            frozen = c["encoder"] - c["encoder_trainable"] if v != "full" else c["encoder"]
            rows[v].append({
                "scores": {t: scores[t][task.main_metric] for t, task in model.tasks.items()}, "mean": scores["mean"],
                "trainable": c["encoder_trainable"] if v != "full" else c["encoder"], "encoder": frozen,
                "heads": c["heads"], "mb": (run / "best" / "model.safetensors").stat().st_size / 1e6,
                "step_s": timing["seconds"] / max(timing["steps"], 1), "run": run})
            print(f"seed {seed} {v}: mean {100 * scores['mean']:.2f} ({timing['seconds']:.0f} s, "
                  f"{timing['steps']} steps)", flush=True)

    # inference side by side: every variant of the first seed on the same inputs, interleaved, best of 5 (shared CPU)
    first = {v: polytask.load(rows[v][0]["run"] / "best") for v in VARIANTS}
    merged = export_merged(rows["lora-shared"][0]["run"], rows["lora-shared"][0]["run"] / "merged", overwrite=True)
    first["lora-shared, merged"] = polytask.load(merged)  # polytask export --merge: the adapter folded in
    inputs = sample_inputs(first["full"], args.inference_samples or (32 if args.quick else 256))
    for pred in first.values():  # warm-up
        pred.predict(inputs, batch_size=32)
    speed = {v: float("inf") for v in first}
    for _ in range(5):
        for v, pred in first.items():
            speed[v] = min(speed[v], timed(lambda pred=pred: pred.predict(inputs, batch_size=32)))

    tasks = list(rows["full"][0]["scores"])
    print(f"\ntest split, {len(seeds)} seed(s), mean ± std over seeds; inference: {len(inputs)} inputs, every task, "
          "batch 32\n")
    print("| variant | " + " | ".join(tasks) + " | mean | trainable encoder params | checkpoint MB | step s | "
          "inference ex/s |")
    print("|---|" + "---|" * (len(tasks) + 5))
    for v in VARIANTS:
        r = rows[v]
        cells = []
        for t in [*tasks, "mean"]:
            m, s = mean_std([100 * (x["scores"][t] if t != "mean" else x["mean"]) for x in r])
            cells.append(f"{m:.2f} ± {s:.2f}")
        share = 100 * r[0]["trainable"] / max(r[0]["encoder"], 1)
        step, step_sd = mean_std([x["step_s"] for x in r])
        print(f"| {v} | " + " | ".join(cells) + f" | {r[0]['trainable']:,} ({share:.2f}%) | {r[0]['mb']:.2f} | "
              f"{step:.3f} ± {step_sd:.3f} | {len(inputs) / speed[v]:.1f} |")
    cells = ["–"] * (len(tasks) + 2) + [f"{(merged / 'model.safetensors').stat().st_size / 1e6:.2f}", "–",
                                        f"{len(inputs) / speed['lora-shared, merged']:.1f}"]
    print("| lora-shared, merged (polytask export --merge; inference only) | " + " | ".join(cells) + " |")
    print()
    for v in VARIANTS[1:]:  # per seed (same seed, same data order), then mean ± std over seeds
        diffs = {t: [100 * (a["scores"][t] - b["scores"][t]) for a, b in zip(rows[v], rows["full"])] for t in tasks}
        print(f"{v} − full, points: " + ", ".join(
            "{} {:+.2f} ± {:.2f} ({})".format(t, *mean_std(d), " / ".join(f"{x:+.2f}" for x in d))
            for t, d in diffs.items()))
    ratios = [a["mean"] / b["mean"] for a, b in zip(rows["lora-shared"], rows["full"]) if b["mean"]]
    print(ratio_line(sum(ratios) / len(ratios) if ratios else float("nan")))


if __name__ == "__main__":
    main()
