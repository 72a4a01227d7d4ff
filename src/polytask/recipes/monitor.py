"""``polytask monitor``: sentiment monitoring of a stream, with alerts when a group's negative share turns.

The stream is JSONL (a file, or ``-`` for stdin read line by line): one object per line with the model's text
column(s), optionally a time field and a group field. Lines are predicted in micro-batches (every task of the
model in one encoder pass per batch). Each item is put in a group: the label the model predicts for a task named
by ``--group-by`` (e.g. ``topic``), or the value of that field in the line, or ``all``.

Per group, the last ``window`` items form the current window; the items before it (up to ten windows' worth)
are the group's history. When a new item arrives, the window's negative share p_w (n_w items) is compared with
the history's p_h (n_h items) by the two-proportion z statistic ``z = (p_w - p_h) / sqrt(p (1 - p) (1/n_w +
1/n_h))``, p the pooled share (smoothed by one negative and one other): how many standard deviations the window
sits above the history, counting the uncertainty of both. An alert fires when z ≥ ``z`` with at least
``min_count`` items in both the window and the history; the group then stays quiet until z falls back below half
the threshold and at least one window of new items has passed (one alert per turn, not one per item).

Bad lines (not JSON, not an object, a missing or empty text column, a missing time field) are reported on
stderr with their line number, skipped and counted; they never stop the monitor.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from polytask.errors import UserError


@dataclass
class AlertRule:
    z: float = 3.0
    min_count: int = 20

    @classmethod
    def parse(cls, text: str | None) -> AlertRule:
        """``"z=3,min_count=20"`` (either may be left out)."""
        rule = cls()
        if not text:
            return rule
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("z", "min_count"):
                raise UserError(f"--alert {text!r}: expected z=NUMBER,min_count=INTEGER (e.g. z=3,min_count=20)")
            try:
                if key == "z":
                    rule.z = float(value)
                else:
                    rule.min_count = int(value)
            except ValueError:
                raise UserError(f"--alert {text!r}: {key} must be a number, got {value!r}") from None
        if rule.z <= 0 or rule.min_count < 1:
            raise UserError(f"--alert {text!r}: z must be > 0 and min_count at least 1")
        return rule


@dataclass
class Group:
    window: deque = field(default_factory=deque)  # 1 = negative, 0 = not
    history: deque = field(default_factory=deque)  # the items before the window, the latest HISTORY_WINDOWS windows
    history_neg: int = 0
    alerting: bool = False
    quiet_until: int = 0  # no new alert before the group's item count reaches this (one window after an alert)
    count: int = 0
    negatives: int = 0
    series: list[tuple[int, Any, float]] = field(default_factory=list)  # (item index, time, window share)

    @property
    def history_n(self) -> int:
        return len(self.history)


HISTORY_WINDOWS = 10


class Monitor:
    """Rolling windows and z-score alerts per group; feed it ``(index, time, group, negative)``."""

    def __init__(self, window: int = 200, rule: AlertRule | None = None):
        if window < 2:
            raise UserError(f"--window must be at least 2, got {window}")
        self.size = window
        self.rule = rule or AlertRule()
        self.groups: dict[str, Group] = {}

    def add(self, index: int, when: Any, group: str, negative: bool, line: int | None = None) -> dict | None:
        """Account one item; returns the alert it raises, if any."""
        g = self.groups.setdefault(group, Group())
        g.window.append(1 if negative else 0)
        g.count += 1
        g.negatives += bool(negative)
        if len(g.window) > self.size:
            old = g.window.popleft()
            g.history.append(old)
            g.history_neg += old
            if len(g.history) > HISTORY_WINDOWS * self.size:
                g.history_neg -= g.history.popleft()
        n_w = len(g.window)
        share = sum(g.window) / n_w
        g.series.append((index, when, share))
        z = self.z_score(g)
        if z is None or z < self.rule.z:
            if z is None or z < self.rule.z / 2:  # hysteresis: a turn that lingers near the threshold fires once
                g.alerting = False
            return None
        if g.alerting or g.count < g.quiet_until:
            return None
        g.alerting = True
        g.quiet_until = g.count + self.size
        return {"group": group, "index": index, "time": when, "line": line, "window_share": round(share, 4),
                "history_share": round(g.history_neg / g.history_n, 4), "z": round(z, 2), "window_count": n_w,
                "history_count": g.history_n}

    def z_score(self, g: Group) -> float | None:
        """Two-proportion z of the window's negative share against the history's (both estimated, pooled)."""
        n_w, n_h = len(g.window), g.history_n
        if n_w < self.rule.min_count or n_h < self.rule.min_count:
            return None
        neg_w = sum(g.window)
        pooled = (neg_w + g.history_neg + 1) / (n_w + n_h + 2)  # smoothed: never exactly 0 or 1
        return (neg_w / n_w - g.history_neg / n_h) / math.sqrt(pooled * (1 - pooled) * (1 / n_w + 1 / n_h))


def read_stream(lines: Iterable[str], name: str, text_columns: list[str], time_field: str | None,
                errors: TextIO | None = None) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """``(line number, record)`` per line; ``record`` is None for a bad line (reported on ``errors``, default
    stderr)."""
    errors = errors or sys.stderr
    for number, raw in enumerate(lines, start=1):
        line = raw.strip() if raw is not None else None
        if line == "":
            continue
        problem, record = None, None
        if line is None:
            problem = "not UTF-8"
        else:
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as e:
                problem = f"not JSON ({getattr(e, 'msg', 'nested too deeply')})"
        if problem is None and not isinstance(record, dict):
            problem = "not a JSON object"
        if problem is None:
            present = [c for c in text_columns if isinstance(record.get(c), (str, list)) and record.get(c)]
            if not present:
                problem = f"no text in column {' or '.join(repr(c) for c in text_columns)}"
            elif isinstance(record[present[0]], str) and not record[present[0]].strip():
                problem = f"empty text in column {present[0]!r}"
            elif time_field and time_field not in record:
                problem = f"no time field {time_field!r}"
        if problem:
            print(f"polytask monitor: {name}:{number}: {problem}; line skipped", file=errors, flush=True)
            yield number, None
        else:
            yield number, record


def open_lines(path: str) -> tuple[Iterable[str | None], str, int | None]:
    """The stream's lines, read one at a time (stdin for ``-``; None for a line that is not UTF-8), its name for
    messages, and its line count when known (a file: counted up front for the progress bar)."""
    if path == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        return (_decoded(stdin) if stdin is not None else sys.stdin), "<stdin>", None
    p = Path(path)
    if not p.is_file():
        raise UserError(f"input file not found: {p}")
    with p.open("rb") as f:
        total = sum(1 for _ in f)

    def lines() -> Iterator[str | None]:
        with p.open("rb") as f:
            yield from _decoded(f)

    return lines(), str(p), total


def _decoded(binary) -> Iterator[str | None]:
    for raw in binary:
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError:
            yield None


def sentiment_task(predictor, name: str | None, negative: str) -> str:
    if name:
        if name not in predictor.tasks:
            raise UserError(f"--sentiment-task {name}: the model has no such task ({', '.join(predictor.tasks)})")
        if negative not in predictor.tasks[name].labels:
            raise UserError(f"--negative-label {negative!r} is not a label of task '{name}' "
                            f"({', '.join(predictor.tasks[name].labels)})")
        return name
    found = [t for t, task in predictor.tasks.items() if task.type_name == "classification" and negative in task.labels]
    if len(found) != 1:
        raise UserError(f"cannot tell which task is the sentiment: {len(found)} classification task(s) have the label "
                        f"{negative!r}; name it with --sentiment-task")
    return found[0]


def monitor(predictor, input_path: str, output: Path, window: int = 200, alert: str | None = None,
            time_field: str | None = None, group_by: str | None = None, sentiment: str | None = None,
            negative: str = "negative", batch_size: int = 32, progress: bool = True,
            errors: TextIO | None = None) -> dict[str, Any]:
    """Run the monitor over a stream and write ``alerts.jsonl``, ``predictions.jsonl``, ``monitor.json``,
    ``monitor.md`` and ``monitor.png`` into ``output``. Returns the summary."""
    from tqdm import tqdm

    errors = errors or sys.stderr
    rule = AlertRule.parse(alert)
    mon = Monitor(window, rule)
    sent = sentiment_task(predictor, sentiment, negative)
    group_task = group_by if group_by in predictor.tasks else None
    if group_task and predictor.tasks[group_task].type_name != "classification":
        raise UserError(f"--group-by {group_by}: task '{group_by}' is {predictor.tasks[group_task].type_name}; "
                        "group by a classification task or by a field of the stream")
    columns = list(dict.fromkeys(c for t in predictor.tasks.values() for c in (t.cfg.text,) if c)) + ["text"]
    lines, name, total = open_lines(input_path)
    output.mkdir(parents=True, exist_ok=True)
    alerts_path, preds_path = output / "alerts.jsonl", output / "predictions.jsonl"
    summary: dict[str, Any] = {"input": name, "sentiment_task": sent, "negative_label": negative,
                               "group_by": group_by or None, "group_source": "model" if group_task else
                               ("field" if group_by else "none"), "window": window, "z": rule.z,
                               "min_count": rule.min_count, "read": 0, "bad_lines": 0, "bad_line_numbers": []}
    alerts: list[dict[str, Any]] = []
    start = time.perf_counter()
    predict_seconds = 0.0
    bar = tqdm(total=total, unit="line", desc="monitor", disable=not progress, file=sys.stderr)
    with alerts_path.open("w", encoding="utf-8") as fa, preds_path.open("w", encoding="utf-8") as fp:
        pending: list[tuple[int, dict[str, Any]]] = []

        def flush() -> None:
            nonlocal predict_seconds
            if not pending:
                return
            records = [r for _, r in pending]
            t0 = time.perf_counter()
            try:
                preds = predictor.predict(records, batch_size=batch_size,
                                          where=[f"{name}:{n}" for n, _ in pending])
            except UserError:  # one line the model cannot read: find it, skip it, keep the rest
                preds = []
                for n, r in pending:
                    try:
                        preds.append(predictor.predict([r], where=[f"{name}:{n}"])[0])
                    except UserError as e:
                        print(f"polytask monitor: {e}; line skipped", file=errors, flush=True)
                        summary["bad_lines"] += 1
                        summary["bad_line_numbers"].append(n)
                        preds.append(None)
            predict_seconds += time.perf_counter() - t0
            for (number, record), pred in zip(pending, preds):
                if pred is None:
                    continue
                index = summary["read"]
                summary["read"] += 1
                group = (pred[group_task]["label"] if group_task else
                         str(record.get(group_by, "(none)")) if group_by else "all")
                when = record.get(time_field) if time_field else index
                found = mon.add(index, when, group, pred[sent]["label"] == negative, line=number)
                fp.write(json.dumps({"line": number, **record, **pred, "group": group}, ensure_ascii=False) + "\n")
                if found:
                    alerts.append(found)
                    fa.write(json.dumps(found, ensure_ascii=False) + "\n")
                    fa.flush()
                    bar.write(f"polytask monitor: ALERT {found['group']}: negative share {found['window_share']:.0%} "
                              f"in the last {found['window_count']} vs {found['history_share']:.0%} before "
                              f"(z {found['z']:.1f}) at line {number}")
            pending.clear()

        for number, record in read_stream(lines, name, columns, time_field, errors):
            bar.update(1)
            if record is None:
                summary["bad_lines"] += 1
                summary["bad_line_numbers"].append(number)
                continue
            pending.append((number, record))
            if len(pending) >= batch_size:
                flush()
        flush()
    bar.close()
    seconds = time.perf_counter() - start
    summary.update({"seconds": round(seconds, 4), "predict_seconds": round(predict_seconds, 3),
                    "items_per_second": round(summary["read"] / seconds, 2) if seconds else None,
                    "alerts": alerts,
                    "groups": {g: {"items": s.count, "negative_share": round(s.negatives / s.count, 4)}
                               for g, s in sorted(mon.groups.items())}})
    summary["bad_line_numbers"] = summary["bad_line_numbers"][:100]
    (output / "monitor.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(mon, alerts, output / "monitor.png", window, time_field)
    (output / "monitor.md").write_text(report(summary), encoding="utf-8")
    return summary


def _times(series) -> list | None:
    """The series' times as numbers, or all as datetimes (ISO strings); None when neither holds for every item."""
    from datetime import datetime

    values = [when for _, when, _ in series]
    if all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in values):
        return [float(w) for w in values]
    try:
        return [datetime.fromisoformat(str(w)) for w in values]
    except ValueError:
        return None


def plot(mon: Monitor, alerts: list[dict[str, Any]], path: Path, window: int, time_field: str | None) -> None:
    """Negative share of each group's window over the stream, alerts marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    use_time = bool(time_field) and all(_times(g.series) is not None for g in mon.groups.values())
    for name, g in mon.groups.items():
        xs = _times(g.series) if use_time else [i for i, _, _ in g.series]
        line, = ax.plot(xs, [s for _, _, s in g.series], label=name, linewidth=1.2)
        for a in alerts:
            if a["group"] == name:
                x = xs[next(k for k, (i, _, _) in enumerate(g.series) if i == a["index"])]
                ax.axvline(x, color=line.get_color(), linestyle="--", linewidth=1)
                ax.plot([x], [a["window_share"]], marker="v", color=line.get_color(), markersize=9)
    ax.set_xlabel(time_field if use_time else "item in the stream")
    if use_time:
        fig.autofmt_xdate()
    ax.set_ylabel(f"negative share of the last {window}")
    ax.set_ylim(0, 1)
    ax.set_title("Negative share per group (dashed: alerts)")
    ax.legend(loc="upper left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(s: dict[str, Any]) -> str:
    lines = ["# Monitor report", "", f"Stream: `{s['input']}` — {s['read']} items, {s['bad_lines']} bad lines skipped"
             + (f" (lines {', '.join(map(str, s['bad_line_numbers'][:20]))}"
                + (", ..." if s["bad_lines"] > 20 else "") + ")" if s["bad_lines"] else "") + ".  ",
             f"Sentiment: task `{s['sentiment_task']}`, negative = `{s['negative_label']}`; groups: "
             + {"model": f"predicted by task `{s['group_by']}`", "field": f"the stream's field `{s['group_by']}`",
                "none": "one group"}[s["group_source"]] + ".  ",
             f"Window {s['window']} items; alert at z ≥ {s['z']:g} with at least {s['min_count']} items in the window "
             "and in the history.  ",
             f"Throughput: {s['items_per_second']} items/s ({s['seconds']:.1f} s, of which prediction "
             f"{s['predict_seconds']:.1f} s).", "", "![negative share per group](monitor.png)", "",
             "| group | items | negative share |", "|---|---|---|"]
    lines += [f"| {g} | {v['items']} | {100 * v['negative_share']:.1f}% |" for g, v in s["groups"].items()]
    lines += ["", f"## Alerts ({len(s['alerts'])})", ""]
    if s["alerts"]:
        lines += ["| group | line | time | window share | history share | z | window / history items |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {a['group']} | {a['line']} | {a['time']} | {100 * a['window_share']:.1f}% | "
                  f"{100 * a['history_share']:.1f}% | {a['z']:.2f} | {a['window_count']} / {a['history_count']} |"
                  for a in s["alerts"]]
    else:
        lines.append("No alert.")
    return "\n".join(lines) + "\n"
