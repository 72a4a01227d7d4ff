"""Build a replayed news stream in which one group's sentiment turns, for `polytask monitor`.

Both streams replay real articles of the datasets' validation and test splits (never their training split),
one per minute from 2025-01-01 00:00 UTC, each line {"ts": ISO time, "text": ..., [the group field]}.

--lang zh (CCF news, gold labels; no model needed): every line gets an "outlet" (A, B or C, in turn). Before the
  turn each outlet draws articles at random from all of them (the data's own label mix); from the turn on, outlet
  B draws with probability --turned from the articles labelled negative and otherwise from all. The turn is in
  the gold labels: the monitor sees it only as far as the model reads the articles right.
--lang en (BBC articles; there is no sentiment label): the groups are the topics the model predicts (`--group-by
  topic`). The script asks the model (--run) which articles of --topic it reads as negative; before the turn every
  topic is drawn at random, from the turn on, --topic's draws come with probability --turned from those. The turn
  is in what the model reads (a demonstration of the monitor, not a measurement of the sentiment model on news).

    python examples/recipes/news_monitor/make_stream.py --lang zh --output runs/stream_zh.jsonl
    python examples/recipes/news_monitor/make_stream.py --lang en --run runs/news_monitor --output runs/stream_en.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lang", choices=["en", "zh"], required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--run", help="--lang en: the trained news monitor (topic + sentiment)")
    p.add_argument("--items", type=int, default=3000, help="lines in the stream (default 3000)")
    p.add_argument("--turn", type=int, default=2000, help="line at which the sentiment turns (default 2000)")
    p.add_argument("--turned", type=float, default=0.6,
                   help="share of the turning group's draws taken from negative articles after the turn (0.6)")
    p.add_argument("--topic", default="tech", help="--lang en: the topic that turns (default tech)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    from polytask.catalog.datasets import DATASETS

    rng = random.Random(args.seed)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    lines = []
    if args.lang == "zh":
        ds = DATASETS.get("ccf_news_sentiment")
        pool = [r for split in ("validation", "test") for _, r in ds.rows(split)]
        negative = [r for r in pool if r["sentiment"] == "negative"]
        for i in range(args.items):
            outlet = "ABC"[i % 3]
            turned = i >= args.turn and outlet == "B" and rng.random() < args.turned
            r = rng.choice(negative if turned else pool)
            lines.append({"ts": (start + timedelta(minutes=i)).isoformat(), "outlet": outlet, "text": r["text"],
                          "gold": r["sentiment"]})
        desc = f"outlet B: {args.turned:.0%} of draws from negative articles from line {args.turn + 1}"
    else:
        if not args.run:
            p.error("--lang en needs --run (the trained news monitor)")
        import polytask

        ds = DATASETS.get("bbc_news")
        pool = [r for split in ("validation", "test") for _, r in ds.rows(split)]
        model = polytask.load(args.run)
        preds = model.predict([{"text": r["text"]} for r in pool])
        topic = [q for r, q in zip(pool, preds) if q["topic"]["label"] == args.topic]
        negative = [r for r, q in zip(pool, preds) if q["topic"]["label"] == args.topic and
                    q["sentiment"]["label"] == "negative"]
        base = len(negative) / max(1, len(topic))
        if not negative or base > 0.5:
            sys.exit(f"the model reads {len(negative)} of {len(topic)} {args.topic} articles as negative: no turn can "
                     "show there; choose another --topic")
        for i in range(args.items):
            r = rng.choice(pool)
            if i >= args.turn and r["topic"] == args.topic and rng.random() < args.turned:
                r = rng.choice(negative)
            lines.append({"ts": (start + timedelta(minutes=i)).isoformat(), "text": r["text"],
                          "gold_topic": r["topic"]})
        desc = (f"topic {args.topic} ({base:.0%} of its articles read as negative): {args.turned:.0%} of its draws "
                f"from those {len(negative)} from line {args.turn + 1}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"wrote {len(lines)} lines to {out}; the turn: {desc}")


if __name__ == "__main__":
    main()
