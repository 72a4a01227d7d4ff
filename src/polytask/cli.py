"""The ``polytask`` command. Thin: parses arguments, calls the library, maps user errors to exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from polytask.errors import UserError


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub
    for stream in (sys.stdout, sys.stderr):  # Chinese labels and texts print as UTF-8 whatever the locale
        encoding = (getattr(stream, "encoding", "") or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"polytask: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polytask: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polytask", description="Fine-tune one encoder on many NLP tasks at once.")
    p.add_argument("--version", action="version", version=f"polytask {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a multi-task model from a YAML config")
    t.add_argument("config", help="YAML config file")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.epochs=3 (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue the run in train.output_dir from last/")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in train.output_dir")
    t.set_defaults(func=cmd_train)

    ds = sub.add_parser("distill", help="train a smaller student from trained teachers (train.distill), and "
                                        "compare it with its teacher and with the same student trained from labels")
    ds.add_argument("config", help="YAML config file with a train.distill section")
    ds.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config entry, e.g. --set train.distill.alpha=0.7 (repeatable)")
    ds.add_argument("--resume", action="store_true", help="continue the runs from their last/")
    ds.add_argument("--overwrite", action="store_true", help="replace runs already in the output folders")
    ds.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the student trained from labels only")
    ds.add_argument("--inference-samples", type=int, default=256,
                    help="inputs timed for the teacher/student speed comparison (0 to skip)")
    ds.set_defaults(func=cmd_distill)

    for name, what in (("add-task", "add a task to a trained model and train it, protecting the old tasks"),
                       ("update", "train one task of a trained model on new data, protecting the other tasks")):
        c = sub.add_parser(name, help=what + "; reports forgetting")
        c.add_argument("run", help="the trained run (its best/ checkpoint) or a checkpoint folder; never modified")
        if name == "add-task":
            c.add_argument("task_file", help="YAML with tasks: {NEW_TASK: ...} and optionally train: {...}")
        else:
            c.add_argument("--task", required=True, help="the task to train on new data")
            c.add_argument("--data", required=True, help="its new training file (.jsonl .csv .tsv .parquet)")
        c.add_argument("--method", choices=["none", "replay", "ewc", "l2sp", "freeze"], default=None,
                       help="how the old tasks are protected (default: train.continual.method, else none)")
        c.add_argument("--output", default=None, help="the new run's folder (default: train.output_dir)")
        c.add_argument("--max-forgetting", type=float, default=None, metavar="POINTS",
                       help="refuse the new model as best/ if an old task drops by more than this many points")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config entry, e.g. --set train.continual.replay_ratio=0.3 (repeatable)")
        c.add_argument("--resume", action="store_true", help="continue the new run from its last/")
        c.add_argument("--overwrite", action="store_true", help="replace a run already in the output folder")
        c.set_defaults(func=cmd_continual)

    ad = sub.add_parser("adapt", help="learn a new task from K examples per class (few-shot), from a trained "
                        "(e.g. meta-learned) run or a plain encoder; mean ± std over seeds")
    ad.add_argument("start", help="a trained run or checkpoint folder (its encoder is the start), or an encoder "
                    "(a built-in name or a Hugging Face folder)")
    ad.add_argument("task_file", help="YAML with tasks: {NEW_TASK: ...} (with a test split) and optionally train: "
                    "and model:")
    ad.add_argument("--shots", type=int, default=None, metavar="K",
                    help="labelled examples per class drawn from the task's training rows (default: all rows)")
    ad.add_argument("--seeds", type=int, default=1, metavar="N", help="repeat over N draws of K (default 1)")
    ad.add_argument("--output", default=None, help="output folder (default: train.output_dir, else runs/adapt-TASK)")
    ad.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config entry of every run, e.g. --set train.epochs=30 (repeatable)")
    ad.add_argument("--overwrite", action="store_true", help="replace runs already in the output folder")
    ad.set_defaults(func=cmd_adapt)

    e = sub.add_parser("evaluate", help="per-task metrics of a trained model on a split")
    e.add_argument("run", help="run folder (its best/ checkpoint is used) or checkpoint folder")
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.add_argument("--output", help="folder for report.json and report.md (default: the run folder)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-fp32"],
                   help="torch (the checkpoint) or an ONNX export run by onnxruntime")
    e.add_argument("--license", help="licence written into MODEL_CARD.md (default: unknown)")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("predict", help="predict every task for texts in a JSONL (or .txt) file, or given inline")
    r.add_argument("checkpoint", help="checkpoint folder or run folder")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="JSONL with a 'text' field per line, or a .txt with a text per line")
    src.add_argument("--text", action="append", metavar="TEXT", help="a text to predict (repeatable)")
    r.add_argument("--output", help="JSONL file to write (default: print JSON lines)")
    r.add_argument("--tasks", help="comma-separated subset of tasks (default: all)")
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-fp32"],
                   help="torch (the checkpoint) or an ONNX export run by onnxruntime (see polytask serve)")
    r.set_defaults(func=cmd_predict)

    c = sub.add_parser("compare", help="frozen probe vs single-task vs multi-task models of a config, over seeds")
    c.add_argument("config", help="YAML config file (at least two tasks)")
    c.add_argument("--seeds", type=int, default=3, help="number of seeds (train.seed, +1, +2, ...; default 3)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry for every run (repeatable)")
    c.add_argument("--output", help="folder for the runs and reports (default: <train.output_dir>-compare)")
    c.add_argument("--only", default="probe,single,multi",
                   help="comma-separated parts to run: probe, single, multi (default: all three)")
    c.add_argument("--probe-lr", type=float, help="learning rate of the probes' heads (default: head_lr or lr)")
    c.add_argument("--overwrite", action="store_true",
                   help="retrain every run (by default finished runs with an unchanged config are reused)")
    c.add_argument("--inference-samples", type=int, default=256,
                   help="inputs timed for the inference-cost comparison (0 to skip)")
    c.set_defaults(func=cmd_compare)

    u = sub.add_parser("tune", help="search hyperparameters (tune.space) with Optuna: one objective or the Pareto "
                                    "front of the tasks; each trial an ordinary run")
    u.add_argument("config", help="YAML config file with a tune section")
    u.add_argument("--trials", type=int, default=None, help="the study's size, counting the trials of an earlier "
                                                             "run that --resume continues (default: tune.trials)")
    u.add_argument("--timeout", type=float, default=None, help="start no new trial after this many seconds")
    u.add_argument("--study-dir", help="folder for study.db, the trial runs and the report "
                                       "(default: <train.output_dir>-tune)")
    u.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry for every trial (repeatable)")
    u.add_argument("--resume", action="store_true", help="continue the study in --study-dir after an interrupt")
    u.add_argument("--overwrite", action="store_true", help="delete the study in --study-dir and start over")
    u.set_defaults(func=cmd_tune)

    a = sub.add_parser("affinity", help="which tasks help or hurt each other: gradient cosine and lookahead "
                                        "affinity during a short training run")
    a.add_argument("config", help="YAML config file (at least two tasks)")
    a.add_argument("--steps", type=int, default=None, help="training steps (default: one all_tasks epoch)")
    a.add_argument("--fraction", type=float, default=0.25, help="share of the steps that are measured")
    a.add_argument("--lookahead-lr", type=float, default=None, help="step size of the lookahead (default: lr)")
    a.add_argument("--output", help="folder for the report (default: <train.output_dir>-affinity)")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry (repeatable)")
    a.set_defaults(func=cmd_affinity)

    rb = sub.add_parser("robustness", help="test metrics clean and under typos, casing, punctuation, whitespace and "
                                           "dropped-word noise (dropped/swapped/duplicated characters for Chinese)")
    rb.add_argument("run", help="run folder (its best/ checkpoint is used) or checkpoint folder")
    rb.add_argument("--split", default="test", choices=["train", "validation", "test"])
    rb.add_argument("--rate", type=float, default=0.1,
                    help="probability that a word (Chinese: a character) is hit by the noise (default 0.1)")
    rb.add_argument("--noise", help="comma-separated noises (default: all; see the README for the list)")
    rb.add_argument("--seed", type=int, default=0, help="noise seed (the same seed draws the same noise)")
    rb.add_argument("--max-samples", type=int, help="score only the first N examples per task")
    rb.add_argument("--output", help="folder for robustness.{json,md,png} (default: <run>/robustness)")
    rb.add_argument("--batch-size", type=int, default=64)
    rb.add_argument("--json", action="store_true", help="print the results as JSON")
    rb.set_defaults(func=cmd_robustness)

    x = sub.add_parser("export", help="write a trained model for deployment: --format onnx (one graph, every "
                                      "task's logits), --merge (a shared LoRA/IA3 adapter folded into the encoder)")
    x.add_argument("run", help="run folder (its best/ checkpoint) or a checkpoint folder")
    x.add_argument("--format", choices=["onnx"], help="onnx: an ONNX graph verified against PyTorch on real inputs")
    x.add_argument("--quantize", choices=["int8"], help="with --format onnx: also write an int8 graph "
                                                        "(onnxruntime dynamic quantisation) and score it")
    x.add_argument("--merge", action="store_true", help="merge the adapter into the encoder's weights")
    x.add_argument("--output", help="folder to write (default: <run>/onnx, <run>/merged)")
    x.add_argument("--tolerance", type=float, default=1e-3,
                   help="--format onnx: largest |PyTorch - ONNX| logit difference allowed (default 1e-3)")
    x.add_argument("--split", default="test", choices=["train", "validation", "test"],
                   help="--format onnx: the split PyTorch, ONNX and int8 are scored on (default test)")
    x.add_argument("--license", help="licence written into MODEL_CARD.md (default: unknown)")
    x.add_argument("--overwrite", action="store_true", help="replace --output if it holds files")
    x.set_defaults(func=cmd_export)

    ro = sub.add_parser("route", help="customer service: predict intent, slots and sentiment, then decide the queue, "
                                      "a follow-up question or an escalation by a rules file")
    ro.add_argument("run", help="run folder or checkpoint folder")
    ro.add_argument("--rules", required=True, help="routing rules (YAML; see examples/recipes/customer_service)")
    rsrc = ro.add_mutually_exclusive_group(required=True)
    rsrc.add_argument("--input", help="JSONL with a 'text' field per line, or a .txt with a text per line")
    rsrc.add_argument("--text", action="append", metavar="TEXT", help="a message (repeatable)")
    ro.add_argument("--output", help="JSONL file to write (default: print JSON lines)")
    ro.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-fp32"])
    ro.add_argument("--batch-size", type=int, default=32)
    ro.set_defaults(func=cmd_route)

    rc = sub.add_parser("recommend", help="recommendation: the best documents of a retrieval task's corpus for a "
                                          "user, given as text or as a user of the task's built-in dataset")
    rc.add_argument("run", help="run folder or checkpoint folder")
    who = rc.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id of the retrieval task's built-in dataset (movielens_100k: 1-943)")
    who.add_argument("--user-text", help="the user described in text, as the task's queries are")
    rc.add_argument("--exclude", action="append", default=[], metavar="ID",
                    help="a document id never to recommend (repeatable; --user already leaves out what they rated)")
    rc.add_argument("-k", type=int, default=10, help="how many recommendations (default 10)")
    rc.add_argument("--task", help="the retrieval task (default: the model's only one)")
    rc.add_argument("--json", action="store_true", help="print one JSON object instead of a list")
    rc.set_defaults(func=cmd_recommend)

    mo = sub.add_parser("monitor", help="sentiment monitoring of a JSONL stream: rolling negative share per group, "
                                        "z-score alerts, alerts.jsonl + monitor.md + a time-series plot")
    mo.add_argument("run", help="run folder or checkpoint folder (a model with a sentiment task)")
    mo.add_argument("--input", required=True, help="JSONL stream, one object per line; '-' reads stdin line by line")
    mo.add_argument("--time-field", help="the field holding each line's time (numbers or ISO dates; else the "
                                         "position in the stream)")
    mo.add_argument("--group-by", help="a classification task of the model (its predicted label is the group, "
                                       "e.g. topic) or a field of the stream (default: one group)")
    mo.add_argument("--window", type=int, default=200, help="items per group in the rolling window (default 200)")
    mo.add_argument("--alert", default="z=3,min_count=20",
                    help="alert when the window's negative share is z standard deviations above the group's "
                         "history, with at least min_count items in each (default z=3,min_count=20)")
    mo.add_argument("--sentiment-task", help="the sentiment task (default: the classification task whose labels "
                                             "include --negative-label)")
    mo.add_argument("--negative-label", default="negative", help="the sentiment label that counts (default negative)")
    mo.add_argument("--output", help="folder for alerts.jsonl, predictions.jsonl, monitor.{json,md,png} "
                                     "(default: <run>/monitor)")
    mo.add_argument("--batch-size", type=int, default=32, help="lines predicted per encoder pass (default 32)")
    mo.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-fp32"])
    mo.set_defaults(func=cmd_monitor)

    sv = sub.add_parser("serve", help="an HTTP endpoint (FastAPI): POST /predict answers every task in one "
                                      "micro-batched encoder pass; /health, /metadata, /metrics")
    sv.add_argument("run", help="run folder, checkpoint folder, or (--backend onnx) an ONNX export folder")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--tasks", help="comma-separated tasks to serve (default: all)")
    sv.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-fp32"],
                    help="torch (the checkpoint), onnx (an export's int8 graph if it has one, else fp32), onnx-fp32")
    sv.add_argument("--max-batch", type=int, default=32, help="inputs per encoder pass (1: no micro-batching)")
    sv.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long a request waits for others to share its pass (default 5)")
    sv.add_argument("--max-texts", type=int, default=256, help="inputs per request (more: 413)")
    sv.add_argument("--max-body-bytes", type=int, default=1_000_000, help="request body limit (more: 413)")
    sv.add_argument("--workers", type=int, default=1, help="server processes, each with its own model")
    sv.add_argument("--threads", type=int, help="torch / onnxruntime threads per worker (default: cores / workers)")
    sv.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="--backend torch: compute precision (default: the run's, usually auto)")
    sv.add_argument("--token-file", help="file holding a bearer token that every request but /health must send")
    sv.add_argument("--rules", help="routing rules (YAML): adds POST /route (predictions + the routing decision)")
    sv.add_argument("--access-log", action="store_true", help="log every request line")
    sv.set_defaults(func=cmd_serve)

    d = sub.add_parser("datasets", help="list built-in datasets")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)
    n = sub.add_parser("encoders", help="list built-in encoders")
    n.set_defaults(func=cmd_encoders)
    return p


def _version() -> str:
    from polytask.version import __version__

    return __version__


def cmd_train(args) -> int:
    from polytask.config import load_config
    from polytask.train.loop import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if not result.is_main_process:
        return 0
    print(f"trained {result.global_step} steps; best checkpoint: {result.best_dir}")
    if result.validation:
        print("last validation: " + "  ".join(f"{k}={v:.4f}" for k, v in result.validation.items()
                                              if k.count(".") == 0 or k.endswith(("accuracy", ".f1"))))
    return 0


def cmd_distill(args) -> int:
    from polytask.config import load_config
    from polytask.distill.runner import distill, markdown

    config = load_config(args.config, args.overrides)
    if not config.train.distill.enabled:
        raise UserError(f"{args.config}: polytask distill needs a train.distill section with a teacher, e.g. "
                        "train.distill: {teacher: runs/atis, student: {layers: 3}}")
    result = distill(config, resume=args.resume, overwrite=args.overwrite, baseline=args.baseline,
                     inference_samples=args.inference_samples)
    if result.summary:
        print(markdown(result.summary))
        print(f"report: {result.output_dir / 'distill.md'}")
    return 0


def cmd_continual(args) -> int:
    from polytask.continual.runner import add_task, markdown, update

    common = dict(overrides=args.overrides, output=args.output, method=args.method,
                  max_forgetting=args.max_forgetting, resume=args.resume, overwrite=args.overwrite)
    if args.command == "add-task":
        result = add_task(args.run, args.task_file, **common)
    else:
        result = update(args.run, args.task, args.data, **common)
    if result.report:  # (the main process's)
        print(markdown(result.report))
        print(f"report: {result.output_dir / 'forgetting.md'}")
    return 0


def cmd_adapt(args) -> int:
    from polytask.meta.adapt import adapt, markdown

    result = adapt(args.start, args.task_file, shots=args.shots, seeds=args.seeds, overrides=args.overrides,
                   output=args.output, overwrite=args.overwrite)
    print(markdown(result.summary))
    print(f"report: {result.output_dir / 'adapt.md'}")
    return 0


def cmd_evaluate(args) -> int:
    from polytask.evaluate.report import evaluate_checkpoint, metric_choice, results_json, summary_rows, write_report
    from polytask.model.adapters import summary_line
    from polytask.predict import Predictor, checkpoint_dir, load

    if args.backend == "torch":
        ckpt = checkpoint_dir(args.run)
        predictor = Predictor(ckpt)
    else:
        predictor = load(args.run, backend=args.backend)
        ckpt = predictor.path
    results = evaluate_checkpoint(predictor, args.split, args.batch_size)
    if not any(k in predictor.tasks for k in results):
        raise UserError(f"no task of {ckpt} has a {args.split} split")
    if args.output:
        out_dir = Path(args.output)
    elif args.backend != "torch":  # beside the export's own card, not over it
        out_dir = ckpt / f"evaluate-{args.backend}"
    else:
        out_dir = ckpt.parent if ckpt.name in ("best", "last") else ckpt
    json_path, md_path = write_report(results, predictor, args.split, out_dir, license=args.license)
    tracked = []
    run_dir = ckpt.parent if ckpt.name in ("best", "last") else ckpt
    if args.backend == "torch":  # the training's W&B / MLflow runs, if it kept any
        from polytask.evaluate.runner import flat_metrics
        from polytask.tracking import log_evaluation

        tracked = log_evaluation(run_dir, predictor.config, args.split, flat_metrics(results),
                                 [json_path, md_path, md_path.parent / "MODEL_CARD.md"])
    if args.json:
        print(results_json(results))
    else:
        print(f"{args.split} metrics ({ckpt}):")
        for name, typ, shown in summary_rows(results, predictor.tasks):
            print(f"  {name} [{typ}]: {shown}")
        print(f"  mean of main metrics: {results['mean']:.4f}")
        model_info = json.loads(json_path.read_text()).get("model")
        if model_info:
            print(f"  model: {summary_line(model_info)}")
        for name, task in predictor.tasks.items():
            if name in results:
                print(f"  {metric_choice(name, task)}")
        print(f"reports: {json_path}, {md_path}, {md_path.parent / 'MODEL_CARD.md'}")
        if tracked:
            print(f"logged to the training's tracked run ({', '.join(tracked)})")
    return 0


def cmd_robustness(args) -> int:
    from polytask.predict import Predictor, checkpoint_dir
    from polytask.robustness import robustness, write_outputs

    ckpt = checkpoint_dir(args.run)
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max-samples must be at least 1, got {args.max_samples}")
    noises = [n.strip() for n in args.noise.split(",") if n.strip()] if args.noise else None
    predictor = Predictor(ckpt)
    result = robustness(predictor, args.split, noises, args.rate, args.seed, args.batch_size, args.max_samples,
                        progress=sys.stderr.isatty())
    out_dir = Path(args.output) if args.output else (ckpt.parent if ckpt.name in ("best", "last") else ckpt) / \
        "robustness"
    paths = write_outputs(result, out_dir)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    print(f"{args.split} robustness ({ckpt}, rate {args.rate}):")
    for name, e in result["tasks"].items():
        print(f"  {name} [{e['metric']}]: clean {100 * e['clean']:.2f}  noisy {100 * e['noisy']:.2f}  "
              f"drop {100 * e['drop']:.2f} ({100 * e['relative_drop']:.1f}%)")
        shown = "  ".join(f"{n}={100 * v:.2f}" for n, v in e["noises"].items())
        print(f"    {shown}")
    print(f"reports: {paths['json']}, {paths['md']}, {paths['png']}")
    return 0


def read_inputs(path: Path) -> tuple[list[dict], list[str]]:
    from polytask.data.readers import decode_utf8, read_rows

    if not path.is_file():
        raise UserError(f"input file not found: {path}")
    if path.suffix.lower() == ".txt":
        lines = decode_utf8(path, path.read_bytes()).splitlines()
        pairs = [(f"{path}:{i}", {"text": line}) for i, line in enumerate(lines, 1) if line.strip()]
    else:
        pairs = read_rows(path)
    if not pairs:
        raise UserError(f"{path}: no inputs")
    return [r for _, r in pairs], [w for w, _ in pairs]


def given_inputs(args) -> tuple[list[dict], list[str]]:
    """The records of ``--text`` (repeatable) or ``--input FILE``, and their names for messages."""
    if args.text is not None:
        return [{"text": t} for t in args.text], [f"--text {i}" for i in range(1, len(args.text) + 1)]
    return read_inputs(Path(args.input))


def answer_lines(lines: list[str], output: str | None, what: str) -> None:
    """Print JSON lines, or write them atomically to ``output`` and say so."""
    if not output:
        print("\n".join(lines))
        return
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, out)
    print(f"wrote {len(lines)} {what} to {out}")


def cmd_predict(args) -> int:
    from polytask.predict import load

    records, where = given_inputs(args)
    predictor = load(args.checkpoint, backend=args.backend)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    preds = predictor.predict(records, tasks=tasks, batch_size=args.batch_size, where=where)
    answer_lines([json.dumps({**rec, **p}, ensure_ascii=False) for rec, p in zip(records, preds)], args.output,
                 f"predictions for {', '.join(tasks or predictor.task_names)}")
    return 0


def cmd_affinity(args) -> int:
    from polytask.affinity import measure_affinity, write_report
    from polytask.config import load_config

    config = load_config(args.config, args.overrides)
    out = Path(args.output or f"{config.train.output_dir.rstrip('/')}-affinity")
    result = measure_affinity(config, out / "run", steps=args.steps, fraction=args.fraction,
                              lookahead_lr=args.lookahead_lr, progress=config.train.progress)
    lines = write_report(result, out)
    print("\n".join(lines))
    print(f"wrote {out / 'affinity.md'}, {out / 'affinity_heatmap.png'} and {out / 'affinity.json'}")
    return 0


def cmd_compare(args) -> int:
    from polytask.compare import compare
    from polytask.config import load_config

    config = load_config(args.config, args.overrides)
    kinds = tuple(k.strip() for k in args.only.split(",") if k.strip())
    result = compare(config, args.seeds, args.output, kinds=kinds, probe_lr=args.probe_lr,
                     overwrite=args.overwrite, inference_samples=args.inference_samples,
                     progress=config.train.progress)
    dm = result.summary["delta_m"]
    for name, e in result.summary["tasks"].items():
        parts = [f"{k} {100 * e[k]['mean']:.2f}±{100 * e[k]['std']:.2f}"
                 for k in ("probe", "single", "multi") if k in e]
        verdict = f" -> multi-task {e['verdict']}" if "verdict" in e else ""
        print(f"{name} ({e['metric']}): " + ", ".join(parts) + verdict)
    if dm:
        print(f"delta-m: {dm['mean']:+.2f}% ± {dm['std']:.2f}")
    print(f"report: {result.output_dir / 'comparison.md'}")
    return 0


def cmd_tune(args) -> int:
    from polytask.config import apply_override, load_config, read_yaml
    from polytask.tune import tune

    config = load_config(args.config, args.overrides)
    source = read_yaml(args.config)
    for o in args.overrides:
        apply_override(source, o)
    result = tune(config, trials=args.trials, study_dir=args.study_dir, resume=args.resume,
                  overwrite=args.overwrite, timeout=args.timeout, source=source, progress=config.train.progress)
    summary = json.loads((result.study_dir / "tune_result.json").read_text(encoding="utf-8"))
    values = "  ".join(f"{n}={v:.4f}" for n, v in zip(summary["objective"], summary["best_values"]))
    print(f"best trial {summary['best_trial']}: validation {values}")
    if summary["test"]:
        print("  its test split: " + "  ".join(f"{t}={v:.4f}" for t, v in summary["test"].items()))
    print("  " + "  ".join(f"{k}={v}" for k, v in summary["best_params"].items()))
    print(f"best config: {summary['best_config']}  (polytask train {summary['best_config']})")
    print(f"report: {result.report}")
    return 0


def cmd_export(args) -> int:
    from polytask.export import export_merged
    from polytask.predict import checkpoint_dir

    if args.format == "onnx":
        from polytask.export.onnx import export_onnx, print_summary

        if args.merge:
            print("polytask: --format onnx exports a shared LoRA/IA3 run merged anyway; --merge is implied",
                  file=sys.stderr)
        print_summary(export_onnx(args.run, args.output, quantize=args.quantize, tolerance=args.tolerance,
                                  overwrite=args.overwrite, split=args.split, license=args.license))
        return 0
    if args.quantize:
        raise UserError("--quantize needs --format onnx")
    if not args.merge:
        raise UserError("polytask export: say what to write: --format onnx (an ONNX graph) or --merge (a plain "
                        "checkpoint with a LoRA/IA3 adapter merged)")
    ckpt = checkpoint_dir(args.run)
    output = args.output or (ckpt.parent if ckpt.name in ("best", "last") else ckpt) / "merged"
    out = export_merged(args.run, output, overwrite=args.overwrite)
    print(f"merged checkpoint written to {out}")
    return 0


def cmd_route(args) -> int:
    from polytask.predict import load
    from polytask.recipes import RoutingRules, route

    records, where = given_inputs(args)
    predictor = load(args.run, backend=args.backend)
    rules = RoutingRules.load(args.rules, predictor)
    answer_lines([json.dumps({**rec, **r}, ensure_ascii=False)
                  for rec, r in zip(records, route(predictor, rules, records, args.batch_size, where))],
                 args.output, "routed messages")
    return 0


def cmd_recommend(args) -> int:
    from polytask.predict import load
    from polytask.recipes.recommend import recommend, retrieval_task, user_query

    predictor = load(args.run)
    task = retrieval_task(predictor, args.task)
    column = predictor.tasks[task].input_column
    record = user_query(predictor, task, args.user) if args.user is not None else {column: args.user_text}
    exclude = predictor.tasks[task].cfg.exclude
    if args.exclude:
        if not exclude:
            raise UserError(f"--exclude: retrieval task '{task}' was trained without an exclusion column "
                            "(tasks.<name>.exclude)")
        record[exclude] = list(record.get(exclude) or []) + args.exclude
    where = f"user {args.user}" if args.user is not None else "--user-text"
    recs = recommend(predictor, [record], task, args.k, where=[where])[0]
    if args.json:
        print(json.dumps({"query": record[column], "recommendations": recs}, ensure_ascii=False))
        return 0
    print(f"{where}: {record[column]}")
    for r in recs:
        print(f"{r['rank']:>3}. {r['document']}  (id {r['id']}, score {r['score']:.3f})")
    return 0


def cmd_monitor(args) -> int:
    from polytask.predict import checkpoint_dir, load
    from polytask.recipes.monitor import AlertRule, monitor

    AlertRule.parse(args.alert)  # a bad rule stops before the model loads
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.input != "-" and not Path(args.input).is_file():
        raise UserError(f"input file not found: {args.input}")
    predictor = load(args.run, backend=args.backend)
    if args.output:
        out = Path(args.output)
    else:
        ckpt = checkpoint_dir(args.run) if args.backend == "torch" else predictor.path
        out = (ckpt.parent if ckpt.name in ("best", "last") else ckpt) / "monitor"
    s = monitor(predictor, args.input, out, window=args.window, alert=args.alert, time_field=args.time_field,
                group_by=args.group_by, sentiment=args.sentiment_task, negative=args.negative_label,
                batch_size=args.batch_size, progress=sys.stderr.isatty())
    print(f"monitored {s['read']} items ({s['bad_lines']} bad lines skipped) in {s['seconds']:.1f} s, "
          f"{s['items_per_second']} items/s; {len(s['alerts'])} alert(s)")
    for a in s["alerts"]:
        print(f"  ALERT {a['group']} at line {a['line']} (time {a['time']}): negative {100 * a['window_share']:.1f}% "
              f"in the last {a['window_count']} vs {100 * a['history_share']:.1f}% before, z {a['z']:.2f}")
    print(f"reports: {out / 'alerts.jsonl'}, {out / 'monitor.md'}, {out / 'monitor.png'}")
    return 0


def cmd_serve(args) -> int:
    from polytask.serve import ServeSettings, serve

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    settings = ServeSettings(path=args.run, backend=args.backend, tasks=tasks, max_batch=args.max_batch,
                             max_wait_ms=args.max_wait_ms, max_texts=args.max_texts,
                             max_body_bytes=args.max_body_bytes, threads=threads, token_file=args.token_file,
                             rules=args.rules, precision=args.precision)
    check_servable(settings)
    print(f"polytask serve: {args.run} ({args.backend}) on http://{args.host}:{args.port} — POST /predict, "
          f"GET /health /metadata /metrics; {args.workers} worker(s), {threads} thread(s) each, micro-batches of up "
          f"to {args.max_batch} inputs / {args.max_wait_ms:g} ms", file=sys.stderr, flush=True)
    serve(settings, args.host, args.port, args.workers, access_log=args.access_log)
    return 0


def check_servable(settings) -> None:
    """Fail before the server starts on what can be checked without loading the model: the path, the tasks, the
    limits, the token file."""
    from polytask.model.io import read_meta
    from polytask.predict import checkpoint_dir

    if settings.backend == "torch":
        folder = checkpoint_dir(settings.path)
    else:
        from polytask.export.onnx import onnx_file, require_onnx

        require_onnx()
        folder = onnx_file(settings.path, int8=False if settings.backend == "onnx-fp32" else None).parent
    known = list(read_meta(folder)["tasks"])
    unknown = [t for t in settings.tasks or [] if t not in known]
    if unknown:
        raise UserError(f"--tasks: unknown task(s) {', '.join(unknown)}; {folder} has: {', '.join(known)}")
    for name in ("max_batch", "max_texts", "max_body_bytes"):
        if getattr(settings, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(settings, name)}")
    if settings.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {settings.max_wait_ms}")
    settings.read_token()
    if settings.rules:
        from polytask.recipes import RoutingRules

        RoutingRules.load(settings.rules)  # the file itself; its labels are checked against the model on load


def cmd_datasets(args) -> int:
    from polytask.catalog.datasets import DATASETS, dataset_summary

    summaries = [dataset_summary(DATASETS.get(n)) for n in DATASETS.names()]
    if args.json:
        print(json.dumps(summaries, indent=2, ensure_ascii=False))
        return 0
    for s in summaries:
        splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
        print(f"{s['name']}: {s['description']}\n  splits: {splits}\n  package: {s['package']}")
        for task, spec in s["suggested_tasks"].items():
            print(f"  task {task}: " + ", ".join(f"{k}: {v}" for k, v in spec.items()))
    return 0


def cmd_encoders(args) -> int:
    from polytask.catalog.encoders import ENCODERS

    for enc in ENCODERS.values():
        print(f"{enc.name}: {enc.description}\n  package: {enc.pip_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
