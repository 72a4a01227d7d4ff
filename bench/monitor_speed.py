"""Throughput of ``polytask monitor`` against ``predict`` on the same texts (goal: at least 0.9).

The model is the English news monitor (``examples/recipes/news_monitor/config.yaml``: BBC topic + sentiment on
MiniLM), saved with fresh heads (throughput does not depend on what the heads learned). The stream is BBC
validation and test articles, one JSON line each with a time field; the monitor groups by the predicted topic
with the recipe's window and alert rule. Both sides run in this process, alternating, best of ``--repeats``. The
monitor's rate is the one it reports itself: from opening the stream to its last line accounted (reading and
parsing lines, micro-batched prediction, windows, alerts, writing alerts.jsonl and predictions.jsonl); the closing
report and plot, written once at the end, are not in it. Prints ``ratio: <monitor items/s ÷ predict items/s>``.

    python bench/monitor_speed.py            # 418 articles x 3 repeats
    python bench/monitor_speed.py --quick    # 32 articles of 32 tokens, 1 repeat
"""

from __future__ import annotations

import json
import time

from common import ROOT, machine, parser, ratio_line, scratch_dir, setup_threads


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="repetitions per side (default 3; --quick 1)")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    setup_threads(args.threads)
    from accelerate.utils import set_seed

    import polytask
    from polytask.catalog.datasets import DATASETS
    from polytask.config import load_config
    from polytask.model.io import save_checkpoint
    from polytask.recipes.monitor import monitor
    from polytask.train.setup import build_run

    folder = scratch_dir("bench-monitor-")
    overrides = [f"train.output_dir={folder / 'unused'}", "train.progress=false", "train.tensorboard=false"]
    if args.quick:
        overrides += ["model.max_length=32", "tasks.topic.max_train_samples=32", "tasks.sentiment.max_train_samples=32",
                      "tasks.topic.max_eval_samples=16", "tasks.sentiment.max_eval_samples=16"]
    config = load_config(ROOT / "examples" / "recipes" / "news_monitor" / "config.yaml", overrides)
    set_seed(0)
    run = build_run(config)
    ckpt = save_checkpoint(folder / "model", run.model, run.tokenizer, config, run.tasks)
    model = polytask.load(ckpt)
    texts = [r["text"] for split in ("validation", "test") for _, r in DATASETS.get("bbc_news").rows(split)]
    texts = texts[:32] if args.quick else texts
    stream = folder / "stream.jsonl"
    stream.write_text("".join(json.dumps({"ts": f"2025-01-01T00:{i // 60:02d}:{i % 60:02d}", "text": t}) + "\n"
                              for i, t in enumerate(texts)), encoding="utf-8")
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"machine: {machine()}")
    print(f"{len(texts)} BBC articles, max_length {config.model.max_length}, batch {args.batch_size}, "
          f"best of {repeats}")
    model.predict([{"text": t} for t in texts[: args.batch_size]], batch_size=args.batch_size)  # warm-up
    best = {"predict": float("inf"), "monitor": float("inf")}  # seconds
    for r in range(repeats):
        start = time.perf_counter()
        model.predict([{"text": t} for t in texts], batch_size=args.batch_size)
        best["predict"] = min(best["predict"], time.perf_counter() - start)
        s = monitor(model, str(stream), folder / f"monitor{r}", window=100, alert="z=3,min_count=20",
                    time_field="ts", group_by="topic", batch_size=args.batch_size, progress=False)
        best["monitor"] = min(best["monitor"], s["seconds"])
        assert s["read"] == len(texts)
    rates = {k: len(texts) / v for k, v in best.items()}
    print(f"predict {rates['predict']:.1f} items/s, monitor {rates['monitor']:.1f} items/s "
          f"({rates['monitor'] / rates['predict']:.3f}x; goal >= 0.9)")
    print(ratio_line(rates["monitor"] / rates["predict"]))


if __name__ == "__main__":
    main()
