"""``polytask export RUN --format onnx [--quantize int8]``: one ONNX graph answering every task, and the
onnxruntime backend that ``predict``, ``evaluate`` and ``serve`` use with ``--backend onnx``.

An export folder holds:

- ``model.onnx`` — the fp32 graph: inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
  encoder reads them), each ``[batch, sequence]`` with both axes dynamic; one output per task, named after the
  task: ``[batch, labels]`` for sentence-level tasks, ``[batch, sequence, labels]`` for token tasks;
- ``model.int8.onnx`` with ``--quantize int8`` — onnxruntime dynamic quantisation (int8 weights of every
  matrix multiplication, activations quantised per batch at run time);
- the tokenizer files and ``polytask.json`` (config, tasks and label maps), as in a checkpoint, so decoding is
  the Predictor's own;
- ``onnx.json`` — what was exported, the verification against PyTorch, and the test-split metrics of PyTorch,
  the fp32 graph and the int8 graph; ``MODEL_CARD.md``.

The graph is traced with ``torch.onnx.export(dynamo=True)`` (``torch.export``), which keeps the sequence and
batch axes symbolic; it is always fp32 (a bf16-trained run keeps fp32 master weights). A PEFT run is exported
merged (shared LoRA / IA³); per-task adapters and prefix tuning are refused, as by ``export --merge``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from polytask.errors import NotSupportedError, UserError
from polytask.model.io import META_FILE, read_meta, write_atomically, write_json

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_META = "onnx.json"
OPSET = 18


class ExportCheckError(UserError):
    """The exported graph does not reproduce PyTorch within the tolerance (nothing is written)."""


def require_onnx() -> None:
    """onnx + onnxruntime (+ onnxscript, which the exporter uses), or a message that says how to get them."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"ONNX export and the onnx backend need {', '.join(missing)}: pip install "
                        "'polytask[onnx]' (or bash scripts/setup.sh, which installs them)")


class _Graph(nn.Module):
    """The multi-task model as a function of tensors only: every task's logits, in task order."""

    def __init__(self, model: nn.Module, names: list[str], with_types: bool):
        super().__init__()
        self.model, self.names, self.with_types = model, names, with_types

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        out = self.model.run_heads(input_ids, attention_mask, token_type_ids if self.with_types else None,
                                   self.names)
        return tuple(out[n] for n in self.names)


def reads_token_types(model: nn.Module) -> bool:
    return getattr(model.encoder.config, "type_vocab_size", 0) > 1


def plain_model(predictor):
    """The predictor's model ready to trace (fp32, eval), with a shared LoRA / IA³ adapter merged in, and the
    config to store beside it (``model.peft`` off once merged)."""
    from polytask.config import PeftConfig

    config = copy.deepcopy(predictor.config)
    model = predictor.model
    pc = config.model.peft
    if pc.enabled:  # merge a copy: the adapted model itself stays the reference the graph is checked against
        model = copy.deepcopy(model)
    if pc.enabled:
        if pc.method == "prefix":
            raise NotSupportedError("polytask export --format onnx: prefix tuning adds trained key/value prefixes "
                                    "that the exported graph cannot carry; export a LoRA or IA3 run, or serve the "
                                    "run itself with the torch backend")
        if pc.sharing == "per_task":
            raise NotSupportedError("polytask export --format onnx: per-task adapters need one encoder per adapter; "
                                    "train with model.peft.sharing: shared to export one graph, or serve the run "
                                    "itself with the torch backend")
        model.encoder = model.encoder.merge_and_unload()
        config.model.peft = PeftConfig()
    return model.float().eval(), config


def _dummy_inputs(tokenizer, with_types: bool) -> tuple[torch.Tensor, ...]:
    """Two real tokenised rows, the second padded: the traced graph must take masks with padding."""
    enc = tokenizer(["one two three four five six seven", "one two"], padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    return (ids, mask, torch.zeros_like(ids)) if with_types else (ids, mask)


@contextlib.contextmanager
def _quiet():
    """The exporter's step-by-step prints and third-party warnings stay out of the user's terminal."""
    loggers = [logging.getLogger(n) for n in ("torch", "torch.__trace", "torch.onnx", "torch.export", "torch._dynamo",
                                              "onnxscript", "onnx_ir", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def trace(model: nn.Module, names: list[str], tokenizer, path: Path) -> list[str]:
    """Write ``model``'s graph to ``path``; returns the graph's input names."""
    from torch.export import Dim

    with_types = reads_token_types(model)
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    batch, seq = Dim("batch"), Dim("sequence")
    shapes = {n: {0: batch, 1: seq} for n in inputs}
    big = sum(p.numel() * 4 for p in model.parameters()) > 1.8e9  # protobuf's 2 GB limit
    with _quiet(), torch.no_grad():
        torch.onnx.export(_Graph(model, names, with_types), _dummy_inputs(tokenizer, with_types), str(path),
                          input_names=inputs, output_names=names, dynamic_shapes=shapes, opset_version=OPSET,
                          dynamo=True, external_data=big, verbose=False)
    return inputs


class OnnxModel:
    """An onnxruntime session with the multi-task model's call signature: ``model(input_ids, attention_mask,
    token_type_ids, tasks=[...]) -> {task: logits}`` (torch tensors), so the Predictor and ``evaluate_split``
    decode and score its outputs with their own code."""

    training = False

    def __init__(self, path: str | Path, threads: int | None = None):
        require_onnx()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"no ONNX graph at {self.path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a damaged or foreign file
            raise UserError(f"{self.path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, tasks=None) -> dict[str, torch.Tensor]:
        names = self.outputs if tasks is None else list(tasks)
        feed = {"input_ids": input_ids, "attention_mask": attention_mask,
                "token_type_ids": token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)}
        feed = {k: feed[k].detach().cpu().to(torch.long).numpy() for k in self.inputs}
        values = self.session.run(names, feed)
        return {n: torch.from_numpy(v) for n, v in zip(names, values)}

    def eval(self) -> OnnxModel:
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        return self


def onnx_file(path: str | Path, int8: bool | None = None) -> Path:
    """The graph a path means: a ``.onnx`` file itself; an export folder's int8 graph when it has one (or
    ``int8=True``), else its fp32 graph; a run folder's ``onnx/`` export."""
    path = Path(path)
    if path.suffix == ".onnx":
        return path
    if not (path / EXPORT_META).is_file() and (path / "onnx" / EXPORT_META).is_file():
        path = path / "onnx"
    if not (path / EXPORT_META).is_file():
        raise UserError(f"{path} is not an ONNX export (no {EXPORT_META}); write one with polytask export RUN "
                        "--format onnx, or use --backend torch")
    meta = json.loads((path / EXPORT_META).read_text(encoding="utf-8"))
    if int8 is None:
        int8 = bool(meta.get("int8"))
    if int8 and not meta.get("int8"):
        raise UserError(f"{path} has no int8 graph; export with --quantize int8")
    return path / (INT8_FILE if int8 else ONNX_FILE)


def load_onnx(path: str | Path, threads: int | None = None, int8: bool | None = None):
    """A Predictor whose model is an onnxruntime session (see ``onnx_file`` for what ``path`` may be)."""
    from polytask.model.io import load_parts
    from polytask.predict import Predictor

    graph = onnx_file(path, int8)
    folder = graph.parent
    _, config, tasks, tokenizer = load_parts(folder)
    config.train.precision = "fp32"  # the graph's own precision; no autocast around onnxruntime
    model = OnnxModel(graph, threads)
    missing = [t for t in tasks if t not in model.outputs]
    if missing:
        raise UserError(f"{graph} has no output for task(s) {', '.join(missing)}: it was not exported from this "
                        "folder's polytask.json")
    predictor = Predictor.from_loaded(folder, config, tasks, tokenizer, model, device="cpu")
    predictor.backend = "onnx-int8" if graph.name == INT8_FILE else "onnx"
    return predictor


def _verify(torch_model: nn.Module, graph: OnnxModel, predictor, samples: int, batch_size: int
            ) -> dict[str, dict[str, Any]]:
    """Max |PyTorch − onnxruntime| of every task's logits on up to ``samples`` real rows per task (its test split,
    else validation, else train), batched with real padding."""
    from polytask.data.features import collate, prepare_task_data

    chosen: dict[str, tuple[str, Any]] = {}  # task -> (split, its data): each task's test split, else validation
    for split in ("test", "validation"):
        missing = {n: t for n, t in predictor.tasks.items() if n not in chosen}
        if not missing:
            break
        data = prepare_task_data(missing, predictor.tokenizer, predictor.config.model.max_length,
                                 splits=(split,), fit_labels=False)
        chosen.update({n: (split, d) for n, d in data.items() if d.features.get(split)})
    missing = [n for n in predictor.tasks if n not in chosen]
    if missing:
        data = prepare_task_data({n: predictor.tasks[n] for n in missing}, predictor.tokenizer,
                                 predictor.config.model.max_length, splits=("train",), fit_labels=False)
        chosen.update({n: ("train", d) for n, d in data.items() if d.features.get("train")})
    unchecked = [n for n in predictor.tasks if n not in chosen]
    if unchecked:
        raise UserError(f"cannot verify the export: task(s) {', '.join(unchecked)} have no rows to take real inputs "
                        "from")
    pad = predictor.tokenizer.pad_token_id or 0
    report = {}
    for name, (split, d) in chosen.items():
        feats = d.features[split][:samples]
        worst, rows = 0.0, 0
        for s in range(0, len(feats), batch_size):
            batch = collate(feats[s:s + batch_size], d.task, pad)
            with torch.no_grad():
                ref = torch_model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                                  tasks=[name])[name].float()
            got = graph(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), tasks=[name])[name]
            mask = batch["attention_mask"].bool()
            diff = (ref - got).abs()
            if diff.dim() == 3:  # token tasks: padding positions are never decoded
                diff = diff[mask]
            if diff.numel():  # a NaN or inf logit on either side is never within the tolerance
                worst = max(worst, float(diff.max()) if torch.isfinite(diff).all() else float("inf"))
            rows += len(feats[s:s + batch_size])
        report[name] = {"max_abs_diff": worst, "rows": rows, "split": split}
    return report


def _scores(predictor, split: str, batch_size: int, data) -> dict[str, Any] | None:
    """``evaluate``'s metrics of ``predictor`` on ``split`` of ``data`` (read once for every backend); None when no
    task has that split."""
    from polytask.evaluate.report import evaluate_checkpoint

    results = evaluate_checkpoint(predictor, split, batch_size, data=data)
    return results if any(t in results for t in predictor.tasks) else None


def export_onnx(run: str | Path, output: str | Path | None = None, quantize: str | None = None,
                tolerance: float = 1e-3, overwrite: bool = False, verify_samples: int = 64, batch_size: int = 32,
                split: str = "test", license: str | None = None, echo=print) -> dict[str, Any]:
    """Export ``run`` (a run folder means its ``best/``) to ``output`` (default ``<run>/onnx``); returns what
    ``onnx.json`` holds. Raises :class:`ExportCheckError`, writing nothing, when a task's logits differ from
    PyTorch by more than ``tolerance``."""
    require_onnx()
    from polytask.evaluate.card import model_card
    from polytask.predict import Predictor, checkpoint_dir

    if quantize not in (None, "int8"):
        raise UserError(f"--quantize {quantize}: only int8 is supported")
    ckpt = checkpoint_dir(run)
    run_dir = ckpt.parent if ckpt.name in ("best", "last") else ckpt
    output = Path(output) if output else run_dir / "onnx"
    if output.resolve() == ckpt.resolve() or output.resolve() in ckpt.resolve().parents:
        raise UserError(f"--output {output} would overwrite the run it is exported from; choose another folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
    source = Predictor(ckpt, device="cpu")
    reference = Predictor.from_loaded(ckpt, source.config, source.tasks, source.tokenizer, source.model, "cpu")
    model, config = plain_model(source)
    names = list(source.tasks)
    result: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        start = time.perf_counter()
        echo(f"polytask: tracing {ckpt} into ONNX (opset {OPSET}, tasks {', '.join(names)}) ...")
        inputs = trace(model, names, source.tokenizer, tmp / ONNX_FILE)
        source.tokenizer.save_pretrained(str(tmp))
        meta = read_meta(ckpt)
        meta["config"] = config.to_dict()
        meta.pop("peft", None)
        write_json(tmp / META_FILE, meta)
        for task in source.tasks.values():
            task.save_files(tmp)  # e.g. a retrieval task's corpus, so the export ranks the same documents anywhere
        graph = OnnxModel(tmp / ONNX_FILE)
        check = _verify(model, graph, reference, verify_samples, batch_size)
        worst = max(v["max_abs_diff"] for v in check.values())
        for name, v in check.items():
            echo(f"  {name}: max |PyTorch - ONNX| = {v['max_abs_diff']:.2e} over {v['rows']} {v['split']} rows")
        bad = [n for n, v in check.items() if not v["max_abs_diff"] <= tolerance]
        if bad:
            raise ExportCheckError(f"the ONNX graph differs from PyTorch by {worst:.2e} on {', '.join(bad)} (tolerance "
                                   f"{tolerance:g}); nothing was written")
        result.update({"source": str(ckpt), "opset": OPSET, "inputs": inputs,
                       "outputs": {n: {"level": source.tasks[n].level, "labels": source.tasks[n].num_outputs}
                                   for n in names},
                       "precision": "fp32", "int8": quantize == "int8", "tolerance": tolerance,
                       "verification": check, "export_seconds": round(time.perf_counter() - start, 1),
                       "files": {p.name: p.stat().st_size for p in sorted(tmp.glob("model.onnx*"))}})
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet():
                quantize_dynamic(str(tmp / ONNX_FILE), str(tmp / INT8_FILE), weight_type=QuantType.QInt8,
                                 use_external_data_format=(tmp / f"{ONNX_FILE}.data").exists())
            result["files"].update({p.name: p.stat().st_size for p in sorted(tmp.glob("model.int8.onnx*"))})
        write_json(tmp / EXPORT_META, result)  # the folder loads from here on
        from polytask.data.features import prepare_task_data

        scores: dict[str, Any] = {}
        data = prepare_task_data(reference.tasks, reference.tokenizer, reference.config.model.max_length,
                                 splits=(split,), fit_labels=False)
        torch_scores = _scores(reference, split, batch_size, data)
        if torch_scores is not None:
            scores["pytorch"] = torch_scores
            scores["onnx"] = _scores(load_onnx(tmp, int8=False), split, batch_size, data)
            if quantize == "int8":
                scores["onnx-int8"] = _scores(load_onnx(tmp, int8=True), split, batch_size, data)
            from polytask.precision import runtime_precision

            result["metrics"] = {"split": split,
                                 "precision_pytorch": runtime_precision(reference.config.train.precision,
                                                                        reference.device),
                                 **{k: _main(v, source.tasks) for k, v in scores.items()}}
        else:
            echo(f"polytask: no task has a {split} split: the export's metrics (and the int8 accuracy change) were "
                 "not measured")
        write_json(tmp / EXPORT_META, result)
        card_results = {split: scores.get("onnx-int8" if quantize == "int8" else "onnx")} if scores else {}
        (tmp / "MODEL_CARD.md").write_text(
            model_card(source.config, source.tasks, card_results, artefact="onnx-int8" if quantize else "onnx",
                       license=license, extra=_card_note(result)), encoding="utf-8")

    if output.exists() and not any(output.iterdir()):
        output.rmdir()
    write_atomically(output, fill)
    result["output"] = str(output)
    return result


def _main(results: dict[str, Any], tasks) -> dict[str, float]:
    return {t: float(results[t][tasks[t].main_metric]) for t in tasks if t in results}


def _card_note(result: dict[str, Any]) -> list[str]:
    lines = [f"Exported to ONNX (opset {result['opset']}, fp32 graph"
             + (", plus int8 dynamic quantisation" if result["int8"] else "") + "); largest difference from PyTorch "
             f"on real inputs: {max(v['max_abs_diff'] for v in result['verification'].values()):.2e}."]
    m = result.get("metrics")
    if m:
        lines += ["", f"| task | PyTorch ({m['precision_pytorch']}) | ONNX fp32 |"
                  + (" ONNX int8 | int8 change |" if "onnx-int8" in m else ""),
                  "|---|---|---|" + ("---|---|" if "onnx-int8" in m else "")]
        for t, v in m["pytorch"].items():
            row = f"| {t} | {100 * v:.2f} | {100 * m['onnx'][t]:.2f} |"
            if "onnx-int8" in m:
                row += f" {100 * m['onnx-int8'][t]:.2f} | {100 * (m['onnx-int8'][t] - v):+.2f} |"
            lines.append(row)
        lines.append(f"\n(main metric per task, ×100, {m['split']} split.)")
    return lines


def print_summary(result: dict[str, Any], echo=print) -> None:
    m = result.get("metrics")
    if m:
        echo(f"{m['split']} split, main metric per task (x100):")
        for t, v in m["pytorch"].items():
            line = f"  {t}: pytorch ({m['precision_pytorch']}) {100 * v:.2f}  onnx fp32 {100 * m['onnx'][t]:.2f}"
            if "onnx-int8" in m:
                line += f"  onnx-int8 {100 * m['onnx-int8'][t]:.2f} (change {100 * (m['onnx-int8'][t] - v):+.2f})"
            echo(line)
    sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in result["files"].items())
    echo(f"ONNX export written to {result['output']} ({sizes})")

