"""Few-shot learning of a held-out task: does training on the other tasks — plainly or meta-learned — make it
cheaper to learn, and by how much?

Leave one out over an example's tasks (english3: BBC topic, RT sentiment, and ATIS's intents split in two — see
``new-intents`` below; chinese: review and news sentiment, with MSRA NER staying on the training side): for each
held-out task, per K and seed, K labelled
examples per class are drawn from its training rows (``polytask adapt``'s sampler, the same draw for every
method), and it is learnt by

- ``probe``: the frozen pretrained encoder (mean-pooled) + logistic regression (scikit-learn) on the K-shot rows;
- ``plain``: ``polytask adapt`` from the pretrained encoder;
- ``multi``: ``polytask adapt`` from a multi-task model trained on the other tasks (the example's settings on a
  reduced budget: ``--train-samples`` per task);
- ``meta``: ``polytask adapt`` from a model meta-learned on the other tasks (``train.meta``, ``--meta-method``);
- ``setfit``: SetFit (contrastive fine-tuning of the same encoder + a logistic head) as the outside reference,
  when the ``setfit`` package is installed (``pip install setfit``; it is not a polytask dependency).

``new-intents`` (english3): ATIS's intent labels split into the intents the starts train on (``atis_flight``,
``atis_airfare`` and the rare ones) and six held-out ones (``NEW_INTENTS``: ground service, airline,
abbreviation, aircraft, flight time, quantity — 44 to 211 training rows each, so K up to 32 can be drawn); the
held-out task is a 6-way classifier over the rows with one held-out intent, the starts' intent task a multi-label
one over the rows whose intents are all on the training side (rows mixing the two are dropped). The whole intent
task cannot be held out at K >= 2: ``atis_cheapest`` has one training row. The split's files are written under
``--output``/new-intents/data.

Test split (``--eval-samples`` rows), main metric, mean ± std over seeds, and seconds per adaptation. The
multi-task and meta-learned starts are trained once per held-out task and reused; every finished cell keeps its
``result.json`` (with the settings it was measured under: K, seed, start, ``polytask adapt``'s defaults) under
``--output``, so an interrupted benchmark continues where it stopped and a changed default measures again.

    python bench/fewshot.py --example english3 --shots 8,16,32 --seeds 5
    python bench/fewshot.py --example chinese --shots 8,16,32 --seeds 5
    python bench/fewshot.py --quick     # english3, topic held out, K 4, 1 seed, tiny budgets
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import time
from functools import partial
from pathlib import Path

import yaml
from common import add_budget_args, budget, cached, machine, parser, ratio_line, setup_threads

METHODS = ("probe", "plain", "multi", "meta", "setfit")
HELD_OUT = {"english3": ["topic", "sentiment", "new-intents"], "chinese": ["review", "news"]}
NEW_INTENTS = frozenset({"atis_ground_service", "atis_airline", "atis_abbreviation", "atis_aircraft",
                         "atis_flight_time", "atis_quantity"})


def split_intents(tasks: dict, folder: Path) -> tuple[dict, dict]:
    """english3's ``new-intents``: (the held-out task's spec, the other tasks' specs with ATIS intent kept to the
    intents outside ``NEW_INTENTS``), their rows written as JSON lines under ``folder``."""
    from polytask.config import load_config
    from polytask.data.features import task_rows
    from polytask.meta.adapt import write_rows

    spec = tasks["intent"]
    cfg = load_config(data={"model": {"encoder": "minilm"}, "tasks": {"intent": spec}}).tasks["intent"]
    new = {"type": "classification", "text": "text", "label": "intent"}
    old = {k: v for k, v in spec.items() if k not in ("dataset", "train", "validation", "test")}
    old.update(text="text", label="intents")
    for split in ("train", "validation", "test"):
        rows = task_rows("intent", cfg, split)
        held = [(w, {"text": r["text"], "intent": r["intents"][0]}) for w, r in rows
                if len(r["intents"]) == 1 and r["intents"][0] in NEW_INTENTS]
        kept = [i for i, (_, r) in enumerate(rows) if not NEW_INTENTS.intersection(r["intents"])]
        new[split] = str(write_rows(folder / f"new-{split}.jsonl", held, list(range(len(held)))).resolve())
        old[split] = str(write_rows(folder / f"old-{split}.jsonl", rows, kept).resolve())
    new["max_eval_samples"] = spec.get("max_eval_samples")
    return new, {**{t: s for t, s in tasks.items() if t != "intent"}, "intent": old}


def kshot_rows(task_cfg: dict, name: str, shots: int, seed: int):
    """The task, the training rows ``polytask adapt`` trains on for ``seed`` (its K-shot draw less the held-out
    quarter) and the test rows it scores, as examples — so the probe and SetFit learn from the same rows."""
    from polytask.config import load_config
    from polytask.data.features import read_examples, task_rows
    from polytask.meta.adapt import holdout_split, sample_shots
    from polytask.tasks import build_task

    cfg = load_config(data={"model": {"encoder": "minilm"}, "tasks": {name: task_cfg}}).tasks[name]
    task = build_task(name, cfg)
    rows = task_rows(name, cfg, "train")
    fit, _ = holdout_split(task, rows, sample_shots(task, rows, shots, seed, f"task '{name}'"), seed)
    train = [task.read(rows[i][1], rows[i][0]) for i in fit]
    test = read_examples(task, "test")
    return task, train, test


def probe(encoder: str, task, train, test, max_length: int) -> float:
    """Frozen encoder, mean-pooled, + logistic regression; the task's main metric on the test rows."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from transformers import AutoModel, AutoTokenizer

    from polytask.catalog.encoders import resolve_encoder

    folder = resolve_encoder(encoder)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def embed(examples):
        out = []
        for s in range(0, len(examples), 32):
            enc = tok([e.text for e in examples[s:s + 32]], truncation=True, max_length=max_length, padding=True,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
        return np.concatenate(out)

    x_train, x_test = embed(train), embed(test)
    if task.type_name == "multilabel_classification":
        labels = sorted({lab for e in train for lab in e.label})
        y = np.array([[lab in e.label for lab in labels] for e in train])
        keep = y.any(0) & ~y.all(0)  # a label present in every (or no) K-shot row cannot be fitted
        clf = OneVsRestClassifier(LogisticRegression(max_iter=2000)).fit(x_train, y[:, keep])
        kept = [lab for lab, k in zip(labels, keep) if k]
        pred = [[lab for lab, on in zip(kept, row) if on] for row in clf.predict(x_test)]
        task.set_labels(sorted(set(labels) | {lab for e in test for lab in e.label}))
        predictions = [{"labels": p} for p in pred]
    else:
        clf = LogisticRegression(max_iter=2000).fit(x_train, [e.label for e in train])
        task.set_labels(sorted({e.label for e in train + test}))
        predictions = [{"label": p} for p in clf.predict(x_test)]
    return 100 * task.metrics(predictions, [e.label for e in test])[task.main_metric]


def setfit_score(encoder: str, task, train, test, out: Path, max_length: int) -> float:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from polytask.catalog.encoders import resolve_encoder

    multilabel = task.type_name == "multilabel_classification"
    # a multi-label task: one binary head per label seen in the K-shot rows (SetFit's one-vs-rest strategy)
    labels = sorted({lab for e in train for lab in e.label}) if multilabel else None
    model = SetFitModel.from_pretrained(str(resolve_encoder(encoder)),
                                        **({"multi_target_strategy": "one-vs-rest"} if multilabel else {}))
    model.model_body.max_seq_length = max_length  # the tokens polytask reads, not the encoder's 512
    targets = [[int(lab in e.label) for lab in labels] for e in train] if multilabel else [e.label for e in train]
    data = Dataset.from_dict({"text": [e.text for e in train], "label": targets})
    # output_dir: SetFit's trainer writes checkpoints there (by default into ./checkpoints of the current folder);
    # report_to none: by default it logs to every tracker installed (W&B would ask for a login)
    args = TrainingArguments(batch_size=16, num_epochs=1, output_dir=str(out), report_to="none")
    Trainer(model=model, args=args, train_dataset=data).train()
    shutil.rmtree(out, ignore_errors=True)
    pred = model.predict([e.text for e in test])
    if multilabel:
        task.set_labels(sorted(set(labels) | {lab for e in test for lab in e.label}))
        predictions = [{"labels": [lab for lab, on in zip(labels, row) if on]} for row in pred.tolist()]
    else:
        task.set_labels(sorted({e.label for e in train + test}))
        predictions = [{"label": str(p)} for p in pred]
    return 100 * task.metrics(predictions, [e.label for e in test])[task.main_metric]


def measure(method: str, encoder: str, task, train, test, max_length: int, start: str, task_file: Path, k: int,
            seed: int, cell: Path, adapt_set: list[str]) -> dict:
    """One cell of the table: ``method`` learning the held-out task from the K-shot draw of ``seed``."""
    from polytask.meta.adapt import adapt

    begin = time.perf_counter()
    if method == "probe":
        score = probe(encoder, task, train, test, max_length)
    elif method == "setfit":
        score = setfit_score(encoder, task, train, test, cell / "setfit", max_length)
    else:
        r = adapt(start, task_file, shots=k, seeds=1, output=str(cell / "adapt"),
                  overrides=[*adapt_set, f"train.seed={seed}"], overwrite=True)
        score = r.summary["mean"]
        for s in r.summary["runs"]:  # the scores are kept; the checkpoints are not
            shutil.rmtree(s["run"], ignore_errors=True)
    return {"score": score, "seconds": time.perf_counter() - begin}


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--example", default="english3", help="english3 (default) or chinese")
    p.add_argument("--held-out", default=None, help="comma-separated held-out tasks (default: every one)")
    p.add_argument("--shots", default=None, help="comma-separated K values (default 8,16,32; --quick 4)")
    p.add_argument("--methods", default=None, help=f"comma-separated, of {','.join(METHODS)} (default all)")
    p.add_argument("--meta-method", default="reptile", help="reptile (default) or fomaml")
    add_budget_args(p, "bench-fewshot")
    args = p.parse_args()
    setup_threads(args.threads)
    import polytask
    from polytask.compare.runner import mean_std
    from polytask.errors import UserError
    from polytask.meta.adapt import ADAPT_TRAIN

    if args.quick:  # enough rows that every other task has two labels with a support and a query row
        args.held_out = args.held_out or "topic"
        args.train_samples = args.train_samples or 64
    seeds_n = args.seeds
    out, overrides, base = budget(args, args.example, "bench-fewshot", [])
    seeds = [base.train.seed + i for i in range(seeds_n or (1 if args.quick else 5))]
    shots = [int(k) for k in (args.shots or ("4" if args.quick else "8,16,32")).split(",")]
    methods = args.methods.split(",") if args.methods else list(METHODS)
    if "setfit" in methods and importlib.util.find_spec("setfit") is None:
        print("setfit: not installed (pip install setfit) — its column is left out")
        methods.remove("setfit")
    held = args.held_out.split(",") if args.held_out else HELD_OUT[args.example]
    quiet = ["train.progress=false", "train.tensorboard=false"]
    adapt_set = quiet + (["train.epochs=2", "train.batch_size=4"] if args.quick else [])
    encoder = base.model.encoder
    print(f"machine: {machine()}")
    print(f"{args.example}: held out {', '.join(held)}; K {shots}; seeds {seeds}; methods {', '.join(methods)}; "
          f"starts trained on {args.train_samples} rows per other task, {base.train.epochs} epochs")
    table: dict[tuple[str, int, str], list[float]] = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    for h in held:
        others = base.to_dict()
        if h == "new-intents":
            spec, others["tasks"] = split_intents(others["tasks"], out / h / "data")
        else:
            spec = others["tasks"][h]
            others["tasks"] = {t: s for t, s in others["tasks"].items() if t != h}
        spec = {k: v for k, v in spec.items() if v is not None and k not in ("max_train_samples", "weight")}
        starts = {}
        for kind in ("multi", "meta"):
            if kind not in methods:
                continue
            folder = out / h / f"start-{kind}"
            data = json.loads(json.dumps(others))
            data["train"].update(output_dir=str(folder), progress=False, tensorboard=False)
            if kind == "meta":
                data["train"]["meta"] = {"method": args.meta_method, **(
                    {"ways": 2, "shots": 1, "query_shots": 1, "inner_steps": 2, "eval_episodes": 2,
                     "episodes_per_epoch": 4} if args.quick else {})}
            if not (folder / "best" / "polytask.json").is_file():
                start = time.perf_counter()
                polytask.train(polytask.Config.from_dict(data).validate(), overwrite=True)
                print(f"{h}: {kind} start trained on {', '.join(others['tasks'])} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
            starts[kind] = str(folder)
        task_file = out / h / "task.yaml"
        task_text = yaml.safe_dump({"tasks": {h: spec}, "model": {"max_length": base.model.max_length}})
        task_file.write_text(task_text)
        # what a cell's figure depends on beyond K, seed and start: polytask adapt's defaults, or SetFit's version
        settings = {m: {"adapt": ADAPT_TRAIN, "adapt_set": adapt_set, "task_file": task_text}
                    for m in ("plain", "multi", "meta")}
        if "setfit" in methods:
            settings["setfit"] = {"setfit": importlib.metadata.version("setfit")}
        for k in shots:
            for seed in seeds:
                try:
                    task, train, test = kshot_rows(spec, h, k, seed)
                except UserError as e:  # e.g. a label with fewer than K rows: this K cannot be drawn
                    print(f"{h} K={k}: not measured — {e}", flush=True)
                    break
                for m in methods:
                    cell = out / h / f"k{k}" / f"seed{seed}" / m
                    key = {"method": m, "shots": k, "seed": seed, "max_length": base.model.max_length,
                           "start": starts.get(m, encoder), **settings.get(m, {})}
                    res = cached(cell, key, partial(measure, m, encoder, task, train, test, base.model.max_length,
                                                    starts.get(m, encoder), task_file, k, seed, cell, adapt_set))
                    table.setdefault((h, k, m), []).append(res["score"])
                    seconds[m].append(res["seconds"])
                    print(f"{h} K={k} seed {seed} {m}: {res['score']:.2f} ({res['seconds']:.1f} s)", flush=True)
    print(f"\nTest split, main metric (points), mean ± std over {len(seeds)} seed(s):\n")
    print("| held-out task | K | " + " | ".join(methods) + " |")
    print("|---|---" + "|---" * len(methods) + "|")
    for h in held:
        for k in shots:
            print(f"| {h} | {k} | " + " | ".join("{:.2f} ± {:.2f}".format(*mean_std(table[(h, k, m)]))
                                                 if (h, k, m) in table else "–" for m in methods) + " |")
    print("| seconds per adaptation | | " + " | ".join(f"{sum(v) / len(v):.1f}" if v else "–"
                                                    for v in seconds.values()) + " |")
    if args.quick and not args.output:
        shutil.rmtree(out, ignore_errors=True)
    # the run's one number: the best trained start's mean score over plain fine-tuning's (above 1: it helped)
    plain = [x for (h, k, m), v in table.items() if m == "plain" for x in v]
    best = max((sum(x for (h, k, mm), v in table.items() if mm == m for x in v) for m in ("multi", "meta")
                if m in methods), default=float("nan"))
    print(ratio_line(best / sum(plain) if plain and sum(plain) > 0 else float("nan")))


if __name__ == "__main__":
    main()
