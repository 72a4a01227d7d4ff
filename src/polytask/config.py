"""Typed configuration: dataclass sections, YAML loading, ``--set`` overrides and validation.

Every section is a plain dataclass, so a config can be built in Python as easily as from YAML::

    from polytask.config import Config, ModelConfig, TaskConfig, TrainConfig
    cfg = Config(
        model=ModelConfig(encoder="minilm"),
        tasks={"intent": TaskConfig(type="classification", train="train.jsonl", label="intent")},
        train=TrainConfig(output_dir="runs/demo", epochs=1),
    )
    cfg.validate()

``load_config(path, overrides)`` reads YAML, applies ``key.path=value`` overrides, checks every key and
type against these dataclasses and runs ``validate()``. Any problem raises ``UserError`` naming the key
path, the bad value and what is allowed — before any model or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from polytask.errors import NotSupportedError, UserError

SAMPLING = ("proportional", "temperature", "annealed", "probabilities", "uniform", "round_robin", "all_tasks")
SCI_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
FREEZE_RE = re.compile(r"^(none|embeddings|encoder|bottom:(\d+))$")


PEFT_OPTIONS = {  # model.peft options each method reads (the rest are refused for it)
    "lora": ("r", "alpha", "dropout", "target_modules"),
    "ia3": ("target_modules", "feedforward_modules"),
    "prefix": ("num_virtual_tokens", "projection"),
}


@dataclass
class PeftConfig:
    """``model.peft:`` — parameter-efficient fine-tuning of the shared encoder (on the ``peft`` library): the
    encoder's own weights stay frozen and only a small adapter trains, beside the task heads (which always train).

    ``method``: ``none`` | ``lora`` (low-rank updates of the encoder's linear layers: ``r``, ``alpha``,
    ``dropout``, ``target_modules``) | ``ia3`` (learned rescaling of keys, values and the feed-forward:
    ``target_modules``, ``feedforward_modules``) | ``prefix`` (prefix tuning / P-tuning v2: trained key/value
    prefixes in every layer: ``num_virtual_tokens``, ``projection``). ``target_modules: null`` takes the
    per-architecture default (``polytask.model.peft``). ``sharing``: ``shared`` (one adapter for every task: one
    encoder pass answers them all) or ``per_task`` (one adapter per task: one pass per task at inference)."""

    method: Literal["none", "lora", "ia3", "prefix"] = "none"
    sharing: Literal["shared", "per_task"] = "shared"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None
    num_virtual_tokens: int = 20
    projection: bool = False  # prefix: reparametrise the prefixes through a 2-layer MLP while training

    @classmethod
    def from_dict(cls, data: Any, path: str) -> PeftConfig:
        if data is None:
            return cls()
        if isinstance(data, str):
            data = {"method": data}
        if not isinstance(data, dict):
            raise UserError(f"config key '{path}' must be a mapping like {{method: lora, r: 8}}, got {data!r}")
        data = dict(data)
        lists = {k: data.pop(k) for k in ("target_modules", "feedforward_modules") if k in data}
        out = _build(cls, data, path)
        for k, v in lists.items():
            if v is not None and (not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v)):
                _bad(f"{path}.{k}", v, "null (the architecture's default) or a non-empty list of module names, "
                                       "e.g. [query, value]")
            setattr(out, k, v)
        given = set(data) | set(lists)
        if out.method == "none":
            extra = sorted(given - {"method"})
            if extra:
                raise UserError(f"config key '{path}.{extra[0]}' needs a PEFT method; set {path}.method to one of: "
                                + ", ".join(PEFT_OPTIONS))
            return out
        wrong = sorted(given - {"method", "sharing", *PEFT_OPTIONS[out.method]})
        if wrong:
            raise UserError(f"config key '{path}.{wrong[0]}' is not an option of {out.method}; {out.method} takes: "
                            + ", ".join(PEFT_OPTIONS[out.method]))
        if out.r < 1:
            _bad(f"{path}.r", out.r, "an integer >= 1 (the rank of the LoRA update)")
        if out.alpha <= 0:
            _bad(f"{path}.alpha", out.alpha, "a number > 0")
        if not 0.0 <= out.dropout < 1.0:
            _bad(f"{path}.dropout", out.dropout, "a number in [0, 1)")
        if out.num_virtual_tokens < 1:
            _bad(f"{path}.num_virtual_tokens", out.num_virtual_tokens, "an integer >= 1")
        if out.feedforward_modules and not out.target_modules:
            raise UserError(f"config key '{path}.feedforward_modules' needs {path}.target_modules (a subset of them)")
        if out.feedforward_modules and not set(out.feedforward_modules) <= set(out.target_modules or []):
            _bad(f"{path}.feedforward_modules", out.feedforward_modules,
                 f"a subset of {path}.target_modules ({', '.join(out.target_modules or [])})")
        return out

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def to_dict(self) -> dict[str, Any]:
        """The method, the sharing mode and the method's own options (what ``from_dict`` accepts back)."""
        keys = ("method", "sharing", *PEFT_OPTIONS.get(self.method, ()))
        return {k: getattr(self, k) for k in keys}


@dataclass
class ModelConfig:
    """``model:`` section — the shared encoder."""

    encoder: str = "minilm"  # built-in name or a local Hugging Face folder
    max_length: int = 128  # longer inputs are truncated (word tags past it are predicted as the first tag 'O')
    freeze: str = "none"  # none | embeddings | bottom:N | encoder
    pooling: Literal["mean", "cls"] = "mean"  # sentence representation for sentence-level heads
    dropout: float = 0.1  # dropout before every head
    peft: PeftConfig = field(default_factory=PeftConfig)  # parameter-efficient fine-tuning (off by default)


@dataclass
class TaskConfig:
    """One entry of ``tasks:`` — a task, its data and its loss weight."""

    type: str = ""
    dataset: str | None = None  # built-in dataset name (see `polytask datasets`) ...
    train: str | None = None  # ... or files: .jsonl .csv .tsv .parquet
    validation: str | None = None
    test: str | None = None
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    weight: float = 1.0
    threshold: float = 0.5  # multilabel_classification: probability above which a label is predicted
    label_separator: str = ";"  # multilabel labels given as one string in CSV/TSV
    # token_classification: what one tag labels. words: a list of words, or a string split on whitespace;
    # chars: every character of a string (Chinese, MSRA style); auto: chars when a string has one tag per
    # character rather than one per whitespace-separated word.
    units: Literal["auto", "words", "chars"] = "auto"
    # The main metric (early stopping's `mean`, best/, evaluate's summary). null: automatic — the type's
    # first metric, except token_classification: span F1 when the tags follow BIO/BIOES/BMES, token accuracy
    # when no tag has such a prefix (part-of-speech tags). Otherwise one of the type's metrics.
    metric: str | None = None
    # Keep a random sample of N training rows (quick runs), in file order: seeded by the file's name and the
    # split, not the task, so tasks reading one file pick the same rows (a built-in dataset: the first N of
    # its seeded shuffled order); a classification task reading its file alone is stratified by label (each
    # label's share kept, every label at least once when N allows).
    max_train_samples: int | None = None
    max_eval_samples: int | None = None  # the same for validation/test rows
    # polytask distill: a file of unlabelled text (the task's text column(s), no label) that the teacher labels;
    # its rows train the student on the teacher's soft targets only
    distill_data: str | None = None
    # retrieval (two towers over the one encoder; see polytask/tasks/retrieval.py): the query column (default:
    # `text`), the relevant document's column(s), the candidate documents (`corpus`: a file with the same
    # document column(s); a built-in dataset with a corpus needs none), the id column of rows and corpus (null:
    # documents are known by their text), a hard-negative document column, a column listing document ids never
    # to rank for that query (e.g. items a user has already rated), the softmax temperature (null: learned,
    # starting at 0.05), the embedding width (null: the encoder's hidden size) and how many documents
    # `predict` returns.
    query: str | None = None
    document: str | None = None
    document_pair: str | None = None
    corpus: str | None = None
    document_id: str | None = None
    negative: str | None = None
    exclude: str | None = None
    temperature: float | None = None
    embedding_dim: int | None = None
    top_k: int = 10
    relevance: str | None = None  # retrieval: a column of graded relevance (a number; <= 0: not a positive)
    logq_correction: bool = False  # retrieval: correct in-batch negatives for documents that are often positives
    # regression: the head learns the targets standardised by the training split's mean and standard deviation
    # (stored in the checkpoint; predictions come back in the label's unit) and the loss is the MSE in those units
    standardize: bool = True


RESERVED_TASK_NAMES = ("mean", "loss", "pareto", "noisy", "robust", "clean")

RETRIEVAL_KEYS = ("query", "document", "document_pair", "corpus", "document_id", "negative", "exclude",
                  "temperature", "embedding_dim", "top_k", "relevance", "logq_correction")


@dataclass
class EarlyStoppingConfig:
    """``train.early_stopping:`` — stop when ``metric`` has not improved for ``patience`` validations."""

    metric: str = "mean"  # mean | loss | <task>.<metric>  (e.g. slots.f1)
    patience: int | None = 2  # null: never stop early (the best checkpoint is still kept)
    min_delta: float = 0.0


def method_and_options(data: Any, path: str, default: str, example: str) -> tuple[str, dict[str, Any]]:
    """A ``{method: NAME, option: value, ...}`` section (or just ``NAME``) as ``(NAME, options)``."""
    if isinstance(data, str):
        data = {"method": data}
    if not isinstance(data, dict):
        raise UserError(f"config key '{path}' must be a mapping like {example}, got {data!r}")
    data = dict(data)
    method = data.pop("method", default)
    if not isinstance(method, str):
        raise UserError(f"config key '{path}.method' must be a string, got {method!r}")
    return method, data


@dataclass
class WeightingConfig:
    """``train.weighting:`` — how per-task losses are combined. ``method`` plus that method's options."""

    method: str = "static"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> WeightingConfig:
        method, options = method_and_options(data, path, "static", "{method: static}")
        return cls(method=method, options=options)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.options}


@dataclass
class AdversarialConfig:
    """``train.adversarial:`` — adversarial training on word embeddings. ``method`` (none, fgm, pgd, freelb,
    smart), ``tasks`` (the tasks trained adversarially; default: all) plus that method's options."""

    method: str = "none"
    tasks: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> AdversarialConfig:
        method, data = method_and_options(data if data not in (None, "") else "none", path, "none",
                                          "{method: fgm, epsilon: 1.0}")
        tasks = data.pop("tasks", None)
        if tasks is not None and (not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks)):
            raise UserError(f"config key '{path}.tasks' must be a list of task names, got {tasks!r}")
        return cls(method=method, tasks=tasks, options=data)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "tasks": self.tasks, **self.options}


@dataclass
class StudentConfig:
    """``train.distill.student:`` — the model that learns. ``layers``: keep these layers of the encoder it starts
    from (an integer N: N evenly spaced ones, the first included, DistilBERT style — 3 of 6 keeps 0, 2, 4; or a
    list of indices). ``encoder``: start from this encoder (a built-in name or a folder) instead of the first
    teacher's fine-tuned encoder."""

    layers: int | list[int] | None = None
    encoder: str | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str) -> StudentConfig:
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise UserError(f"config key '{path}' must be a mapping like {{layers: 3}}, got {data!r}")
        unknown = set(data) - {"layers", "encoder"}
        if unknown:
            raise UserError(f"unknown config key '{path}.{sorted(unknown)[0]}'; allowed here: layers, encoder")
        layers = data.get("layers")
        ok = layers is None or (isinstance(layers, int) and not isinstance(layers, bool) and layers >= 1) or (
            isinstance(layers, list) and layers and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                        for i in layers) and len(set(layers)) == len(layers))
        if not ok:
            _bad(f"{path}.layers", layers, "an integer >= 1 (that many evenly spaced layers) or a list of distinct "
                                           "layer indices >= 0, e.g. [0, 2, 4]")
        encoder = data.get("encoder")
        if encoder is not None and not isinstance(encoder, str):
            _bad(f"{path}.encoder", encoder, "a built-in encoder name or a folder")
        return cls(layers=sorted(layers) if isinstance(layers, list) else layers, encoder=encoder)


@dataclass
class HiddenConfig:
    """``train.distill.hidden:`` — hidden-state matching (TinyBERT / MiniLM style). ``weight``: its share of the
    loss (0: off). ``layers``: ``auto`` (the embeddings and student layer j with teacher layer j * L / M, the last
    with the last) or a list of ``[student_layer, teacher_layer]`` pairs (0: the embeddings' output)."""

    weight: float = 0.0
    layers: Any = "auto"

    @classmethod
    def from_dict(cls, data: Any, path: str) -> HiddenConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UserError(f"config key '{path}' must be a mapping like {{weight: 1.0}}, got {data!r}")
        out = _build(cls, data, path)
        if not isinstance(out.weight, (int, float)) or isinstance(out.weight, bool) or out.weight < 0:
            _bad(f"{path}.weight", out.weight, "a number >= 0 (0: off)")
        out.weight = float(out.weight)
        layers = out.layers
        ok = layers == "auto" or (isinstance(layers, list) and layers and all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(i, int) and not isinstance(i, bool)
                                                              and i >= 0 for i in pair) for pair in layers))
        if not ok:
            _bad(f"{path}.layers", layers, "auto, or a list of [student_layer, teacher_layer] pairs such as "
                                           "[[0, 0], [3, 6]] (0: the embeddings)")
        return out


@dataclass
class DistillConfig:
    """``train.distill:`` — knowledge distillation (``polytask distill``). ``teacher``: a run folder (one
    multi-task teacher), a list of run folders (an ensemble, averaged per task), or ``{task: run folder or
    list}`` (one teacher per task, MT-DNN-KD style). Each task trains on ``(1 - alpha) * hard loss + alpha *
    soft loss`` against the teacher's outputs softened at ``temperature``. ``teacher_outputs``: ``cache``
    (computed once, before training) or ``fly`` (every batch)."""

    teacher: Any = None
    student: StudentConfig = field(default_factory=StudentConfig)
    alpha: float = 0.5
    temperature: float = 2.0
    teacher_outputs: Literal["cache", "fly"] = "cache"
    hidden: HiddenConfig = field(default_factory=lambda: HiddenConfig())

    @classmethod
    def from_dict(cls, data: Any, path: str) -> DistillConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UserError(f"config key '{path}' must be a mapping like {{teacher: runs/atis, student: {{layers: 3}}}}"
                            f", got {data!r}")
        out = _build(cls, {k: v for k, v in data.items() if k not in ("student", "hidden")}, path)
        out.student = StudentConfig.from_dict(data.get("student"), f"{path}.student")
        out.hidden = HiddenConfig.from_dict(data.get("hidden"), f"{path}.hidden")
        out.teacher = _teacher_spec(out.teacher, f"{path}.teacher")
        return out

    @property
    def enabled(self) -> bool:
        return self.teacher is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _teacher_spec(value: Any, path: str) -> Any:
    """A run folder, a non-empty list of them, or a mapping task -> either; None: no distillation."""
    def folders(v: Any, p: str) -> str | list[str]:
        if isinstance(v, str) and v.strip():
            return v
        if isinstance(v, list) and v and all(isinstance(x, str) and x.strip() for x in v):
            return list(v)
        _bad(p, v, "a run folder, or a non-empty list of run folders (an ensemble)")

    if value is None:
        return None
    if isinstance(value, dict):
        if not value:
            _bad(path, value, "a run folder, a list of run folders, or {task: run folder(s)}")
        return {str(k): folders(v, f"{path}.{k}") for k, v in value.items()}
    return folders(value, path)


@dataclass
class MutualConfig:
    """``train.mutual:`` — mutual learning (Deep Mutual Learning; codistillation). ``peers`` models train
    together (1: off), each on its labels plus ``sharing_weight`` x the divergence to the other peers'
    predictions, read from copies refreshed every ``sync_every`` steps (1: the peers themselves, on the same
    batch). ``save_peers``: also write every peer's checkpoint under ``peers/`` at the end."""

    peers: int = 1
    sharing_weight: float = 1.0
    sync_every: int = 1
    save_peers: bool = False

    @property
    def enabled(self) -> bool:
        return self.peers > 1


@dataclass
class MetaConfig:
    """``train.meta:`` — episodic meta-training of the shared encoder, so that ``polytask adapt`` then learns a new
    task from a few examples. ``method``: ``none``, ``reptile`` (Nichol et al. 2018) or ``fomaml`` (first-order
    MAML, Finn et al. 2017). An episode is one training task and, for classification and multi-label tasks,
    ``ways`` of its labels with ``shots`` support rows each (``query_shots`` more per label for fomaml's query
    set and for validation); a token task's episode is ``ways x shots`` sentences with all their tags. The
    inner loop adapts the encoder (its adapter under ``model.peft``) and a fresh zero-initialised head for
    ``inner_steps`` steps of ``inner_optimizer`` (``inner_lr``; the head ``inner_head_lr``); the outer update
    is the run's optimizer stepping on the meta-gradient at ``meta_lr`` (null: ``train.lr``), with the run's
    warm-up, decay and clipping. ``tasks_per_episode`` episodes (times ``train.grad_accum``) make one outer
    update; ``episodes_per_epoch`` (null: every training row once in a support set); ``eval_episodes``: fixed
    validation episodes per task (their mean query accuracy is the ``mean`` that early stopping reads)."""

    method: Literal["none", "reptile", "fomaml"] = "none"
    ways: int = 5
    shots: int = 8
    query_shots: int = 8
    inner_steps: int = 5
    inner_lr: float = 5.0e-5
    inner_head_lr: float = 1.0e-2
    inner_optimizer: Literal["adam", "sgd"] = "adam"
    meta_lr: float | None = None
    tasks_per_episode: int = 1
    episodes_per_epoch: int | None = None
    eval_episodes: int = 8

    @property
    def enabled(self) -> bool:
        return self.method != "none"


CONTINUAL_METHODS = ("none", "replay", "ewc", "l2sp", "freeze")


@dataclass
class ContinualConfig:
    """``train.continual:`` — training on from a trained run while protecting what it learnt (``polytask add-task``
    and ``polytask update`` fill it in). ``base``: the checkpoint the run starts from (never modified);
    ``old_tasks``: its tasks to protect (they are not retrained from their own data). ``method``: ``none`` (the new
    data alone), ``replay`` (a seeded sample of the old tasks' training rows mixed in: ``replay_ratio`` of the
    training rows are old ones), ``ewc`` (elastic weight consolidation: a pull toward the starting encoder weighted
    by the diagonal Fisher information of the old tasks, from ``fisher_batches`` batches of each), ``l2sp`` (an
    unweighted pull toward the starting encoder), ``freeze`` (the encoder and the old heads frozen: only what is
    new trains). ``strength``: the pull's λ in λ/2 Σ F (θ − θ*)² (null: 1000 for ewc, 0.01 for l2sp)."""

    method: Literal["none", "replay", "ewc", "l2sp", "freeze"] = "none"
    base: str | None = None
    old_tasks: list[str] | None = None
    replay_ratio: float = 0.2
    strength: float | None = None
    fisher_batches: int = 16

    @classmethod
    def from_dict(cls, data: Any, path: str) -> ContinualConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise UserError(f"config key '{path}' must be a mapping like {{method: replay}}, got {data!r}")
        data = dict(data)
        old = data.pop("old_tasks", None)
        if old is not None and (not isinstance(old, list) or not all(isinstance(t, str) for t in old)):
            _bad(f"{path}.old_tasks", old, "a list of task names")
        out = _build(cls, data, path)
        out.old_tasks = old
        if not 0.0 <= out.replay_ratio < 1.0:
            _bad(f"{path}.replay_ratio", out.replay_ratio, "a number in [0, 1): the share of old rows in training")
        if out.strength is not None and out.strength < 0:
            _bad(f"{path}.strength", out.strength, "null (the method's default) or a number >= 0")
        if out.fisher_batches < 1:
            _bad(f"{path}.fisher_batches", out.fisher_batches, "an integer >= 1")
        return out

    @property
    def enabled(self) -> bool:
        return self.base is not None

    @property
    def pull(self) -> float:
        """λ of the pull toward the starting weights (ewc, l2sp)."""
        return self.strength if self.strength is not None else {"ewc": 1000.0, "l2sp": 0.01}.get(self.method, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class AugmentConfig:
    """``train.augment:`` — robustness training on noisy copies of the training rows (``polytask.augment``).
    ``noise``: noises of the suite ``polytask robustness`` uses (typo_swap, typo_drop, typo_insert,
    typo_keyboard, casing, punctuation, whitespace, word_dropout; char_drop, char_swap, char_duplicate for
    Chinese); empty: off. ``rate``: the probability that a word (or Chinese character) is hit; ``prob``: the
    probability that a training row gets a noisy copy in its batch; ``consistency``: the weight of the divergence
    between clean and noisy predictions (0: none); ``tasks``: the tasks whose rows get copies (null: all)."""

    # rate, prob and consistency: the best of a 20-trial `polytask tune` study on ATIS (examples/tune/
    # atis_augment.yaml; BENCHMARKS.md): light noise on most rows, a little consistency
    noise: list[str] = field(default_factory=list)
    rate: float = 0.05
    prob: float = 0.8
    consistency: float = 0.1
    tasks: list[str] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.noise)


@dataclass
class TrackingConfig:
    """``train.tracking:`` — options of the trackers named in ``train.report_to``. ``project``: the W&B project and
    the MLflow experiment; ``run_name``: the tracked run's name (null: the run folder's name); ``wandb_mode``:
    ``offline`` (the default: files in ``<run>/wandb``, no network; ``wandb sync`` uploads them), ``online`` or
    ``disabled``; ``mlflow_uri``: the MLflow tracking URI (null: ``$MLFLOW_TRACKING_URI``, else an SQLite store
    in ``./mlruns``)."""

    project: str = "polytask"
    run_name: str | None = None
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    mlflow_uri: str | None = None


@dataclass
class TrainConfig:
    """``train:`` section — optimisation, sampling, validation and checkpointing."""

    output_dir: str = "runs/polytask"
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 32  # per process
    eval_batch_size: int = 64
    lr: float = 5.0e-5
    head_lr: float | None = None  # learning rate of the task heads (default: lr)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    sampling: str = "proportional"
    temperature: float = 2.0  # for sampling: temperature  (p_i ~ n_i^(1/T))
    task_probabilities: dict[str, float] | None = None  # for sampling: probabilities  ({task: p}, normalised)
    group_by_length: bool = False  # batch examples of similar length together (less padding)
    # auto: tasks reading the same inputs (same dataset or training file, same tokenised text) share one encoder
    # pass per input, each task's loss from its own head; off: one task per batch
    joint_batches: Literal["auto", "off"] = "auto"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    eval_steps: int | None = None  # also validate every N optimizer steps (default: once per epoch)
    save_steps: int | None = None  # also save resumable training state every N optimizer steps
    logging_steps: int = 10
    seed: int = 42
    # auto: bf16 where the hardware runs it natively (recent GPUs; CPUs with AVX512_BF16 or AMX), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    mutual: MutualConfig = field(default_factory=MutualConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # experiment trackers beside metrics.jsonl: tensorboard, wandb, mlflow (each imported only when named here)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tensorboard: bool = True  # false: leave tensorboard out of report_to
    progress: bool = True  # progress bars

    @property
    def trackers(self) -> list[str]:
        """The trackers this run logs to: ``report_to``, less tensorboard when ``tensorboard: false``."""
        return [t for t in self.report_to if self.tensorboard or t != "tensorboard"]


@dataclass
class TuneRobustnessConfig:
    """``tune.robustness:`` — how the ``noisy`` and ``robust`` objectives score a trial: its best checkpoint on the
    validation split under each noise of ``noises`` (empty: every noise of the suite that applies to the task) at
    ``rate``, drawn with noise seed ``seed`` (not 0, the seed ``polytask robustness`` scores the test split with);
    ``max_samples``: at most this many validation rows per task (null: all)."""

    noises: list[str] = field(default_factory=list)
    rate: float = 0.1
    seed: int = 1
    max_samples: int | None = None


@dataclass
class TuneConfig:
    """``tune:`` — what ``polytask tune`` searches (every other command ignores this section).

    ``space``: dotted config keys -> a distribution: ``{uniform: [lo, hi]}``, ``{log_uniform: [lo, hi]}``,
    ``{int: [lo, hi]}``, ``{log_int: [lo, hi]}`` or ``{choice: [a, b, ...]}``. ``objective``: ``mean`` (the
    validation mean of the main metrics), ``loss``, ``<task>`` (its main metric), ``<task>.<metric>``, or
    ``pareto`` (every task's main metric: a multi-objective study, NSGA-II), ``noisy`` (the validation mean of the
    main metrics under the noise of ``robustness``: robustness training's own objective; pruned, if at all, on
    the clean validation mean) or ``robust`` (two objectives, the clean and the noisy mean: a Pareto front of
    clean accuracy against robustness). ``sampler``: ``auto`` (TPE, NSGA-II
    for pareto), ``tpe``, ``random``, ``nsga2``. ``pruner``: stops weak trials from their per-validation
    objective — ``auto`` (median; none for pareto, which Optuna cannot prune), ``median``, ``halving``
    (successive halving), ``none``; ``startup_trials``: trials that always finish before pruning starts.
    ``trials``: the study's size (``--trials`` overrides)."""

    space: dict[str, Any] = field(default_factory=dict)
    objective: str = "mean"
    sampler: Literal["auto", "tpe", "random", "nsga2"] = "auto"
    pruner: Literal["auto", "median", "halving", "none"] = "auto"
    startup_trials: int = 3
    trials: int = 20
    robustness: TuneRobustnessConfig = field(default_factory=TuneRobustnessConfig)

    @property
    def enabled(self) -> bool:
        return bool(self.space)


@dataclass
class Config:
    """The whole run: ``model``, ``tasks`` (name -> TaskConfig), ``train``, and ``tune`` (``polytask tune``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self) -> Config:
        """Check the combinations that types alone can't; raise UserError naming the key."""
        # Imported here: the registries import config-free modules only, but keep config importable alone.
        from polytask.adversarial import ADVERSARIAL
        from polytask.catalog.datasets import DATASETS
        from polytask.tasks import TASK_TYPES
        from polytask.weighting import WEIGHTINGS

        m = self.model
        if not FREEZE_RE.match(m.freeze):
            _bad("model.freeze", m.freeze, "none, embeddings, encoder, bottom:N")
        if m.max_length < 8:
            _bad("model.max_length", m.max_length, "an integer >= 8")
        if not 0.0 <= m.dropout < 1.0:
            _bad("model.dropout", m.dropout, "a number in [0, 1)")
        if not self.tasks:
            raise UserError("config key 'tasks' is empty: define at least one task")
        self._validate_peft()
        for name, t in self.tasks.items():
            p = f"tasks.{name}"
            if not re.match(r"^[^\W\d][\w\-]*$", name):  # \w is Unicode: 情感 is a fine task name
                _bad(p, name, "a task name of letters (any script), digits, '_' or '-', not starting with a digit")
            if name in RESERVED_TASK_NAMES:  # figures of a run or objectives of tune, beside the tasks' own
                _bad(p, name, "a task name other than " + ", ".join(RESERVED_TASK_NAMES))
            if not t.type:
                raise UserError(f"config key '{p}.type' is missing; allowed: {', '.join(TASK_TYPES.names())}")
            TASK_TYPES.get(t.type, where=f"config key '{p}.type'")
            if t.dataset is None and t.train is None:
                raise UserError(f"config key '{p}': give either 'dataset' (built-in) or 'train' (a file)")
            if t.dataset is not None:
                if t.train is not None:
                    raise UserError(f"config key '{p}': 'dataset' and 'train' are exclusive; give one")
                DATASETS.get(t.dataset, where=f"config key '{p}.dataset'")
            if t.weight < 0:
                _bad(f"{p}.weight", t.weight, "a number >= 0")
            if not 0.0 < t.threshold < 1.0:
                _bad(f"{p}.threshold", t.threshold, "a number in (0, 1)")
            metrics = TASK_TYPES.get(t.type).metric_names
            if t.metric is not None and t.metric not in metrics:
                _bad(f"{p}.metric", t.metric, f"null (automatic) or, for a {t.type} task, one of " + ", ".join(metrics))
            for k in ("max_train_samples", "max_eval_samples"):
                v = getattr(t, k)
                if v is not None and v < 1:
                    _bad(f"{p}.{k}", v, "null or an integer >= 1")
            self._validate_retrieval(name, t)
            if t.type != "regression" and t.standardize is not True:
                raise UserError(f"config key '{p}.standardize' is only for regression tasks (this one is {t.type}); "
                                "remove it")
        tr = self.train
        positive = {"epochs": tr.epochs, "batch_size": tr.batch_size, "eval_batch_size": tr.eval_batch_size,
                    "grad_accum": tr.grad_accum, "logging_steps": tr.logging_steps}
        for k, v in positive.items():
            if v < 1:
                _bad(f"train.{k}", v, "an integer >= 1")
        for k in ("max_steps", "eval_steps", "save_steps"):
            v = getattr(tr, k)
            if v is not None and v < 1:
                _bad(f"train.{k}", v, "null or an integer >= 1")
        if tr.lr <= 0:
            _bad("train.lr", tr.lr, "a number > 0")
        if tr.head_lr is not None and tr.head_lr <= 0:
            _bad("train.head_lr", tr.head_lr, "null or a number > 0")
        if not 0.0 <= tr.warmup_ratio < 1.0:
            _bad("train.warmup_ratio", tr.warmup_ratio, "a number in [0, 1)")
        if tr.weight_decay < 0:
            _bad("train.weight_decay", tr.weight_decay, "a number >= 0")
        if tr.grad_clip is not None and tr.grad_clip <= 0:
            _bad("train.grad_clip", tr.grad_clip, "null or a number > 0")
        if tr.sampling not in SAMPLING:
            _bad("train.sampling", tr.sampling, ", ".join(SAMPLING))
        if tr.temperature <= 0:
            _bad("train.temperature", tr.temperature, "a number > 0")
        if tr.sampling == "probabilities":
            probs = tr.task_probabilities or {}
            if set(probs) != set(self.tasks):
                _bad("train.task_probabilities", tr.task_probabilities,
                     "a probability for every task (" + ", ".join(self.tasks) + ") when train.sampling is "
                     "probabilities")
            for t, v in probs.items():
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    _bad(f"train.task_probabilities.{t}", v, "a number >= 0")
            if sum(probs.values()) <= 0:
                _bad("train.task_probabilities", tr.task_probabilities, "probabilities that sum to more than 0")
        elif tr.task_probabilities is not None:
            _bad("train.task_probabilities", tr.task_probabilities, "null unless train.sampling is probabilities")
        es = tr.early_stopping
        if es.patience is not None and es.patience < 1:
            _bad("train.early_stopping.patience", es.patience, "null or an integer >= 1")
        if es.metric not in ("mean", "loss"):
            task, _, metric = es.metric.partition(".")
            if task not in self.tasks or not metric:
                _bad("train.early_stopping.metric", es.metric,
                     "mean, loss, or <task>.<metric> with task one of " + ", ".join(self.tasks))
            ttype = TASK_TYPES.get(self.tasks[task].type)
            if metric == "loss" and not ttype.has_eval_loss:
                _bad("train.early_stopping.metric", es.metric, f"a ranking metric of the {ttype.type_name} task: "
                     + ", ".join(ttype.metric_names) + " (it has no validation loss)")
            if metric not in ttype.metric_names and metric != "loss" and not (
                    self.train.meta.enabled and metric in ("episode_accuracy", "episode_loss")):
                _bad("train.early_stopping.metric", es.metric,
                     f"for a {self.tasks[task].type} task: " + ", ".join((*ttype.metric_names, "loss")))
        method = WEIGHTINGS.get(tr.weighting.method, where="config key 'train.weighting.method'")
        method.check_options(tr.weighting.options, "train.weighting")
        if method.needs_all_tasks and tr.sampling != "all_tasks" and len(self.tasks) > 1 and not self.one_source():
            raise UserError(f"config key 'train.weighting.method': {tr.weighting.method} needs every task's loss "
                            "at each step; set train.sampling: all_tasks (one batch of every task per step)")
        adv = tr.adversarial
        if adv.method != "none":
            ADVERSARIAL.get(adv.method, where="config key 'train.adversarial.method'")\
                .check_options(adv.options, "train.adversarial")
        elif adv.options or adv.tasks:
            raise UserError("config key 'train.adversarial' has options but no method; set "
                            "train.adversarial.method to one of: " + ", ".join(ADVERSARIAL.names()))
        for t in adv.tasks or []:
            if t not in self.tasks:
                _bad("train.adversarial.tasks", adv.tasks, "names of configured tasks (" + ", ".join(self.tasks) + ")")
        if adv.tasks is not None and not adv.tasks:
            _bad("train.adversarial.tasks", adv.tasks, "null (every task) or a non-empty list of task names")
        from polytask.tracking import check_installed

        if len(set(tr.report_to)) != len(tr.report_to):
            _bad("train.report_to", tr.report_to, "each tracker once")
        check_installed(tr.trackers)  # an unknown name, or a library that is missing: now, not after loading
        self._validate_distill()
        self._validate_mutual()
        self._validate_continual()
        self._validate_meta()
        self._validate_augment()
        if self.tune != TuneConfig():
            from polytask.tune.space import check_tune

            check_tune(self)
        return self

    def _validate_retrieval(self, name: str, t: TaskConfig) -> None:
        """The retrieval keys of task ``name``: only on retrieval tasks; a document column; a corpus."""
        p = f"tasks.{name}"
        keys = {k: getattr(t, k) for k in RETRIEVAL_KEYS}
        if t.type != "retrieval":
            given = [k for k, v in keys.items() if v != getattr(TaskConfig, k)]
            if given:
                raise UserError(f"config key '{p}.{given[0]}' is only for retrieval tasks (this one is "
                                f"{t.type}); remove it")
            return
        if not t.document:
            raise UserError(f"config key '{p}.document' is missing: a retrieval task needs the column of the relevant "
                            "document")
        if t.corpus is None:
            from polytask.catalog.datasets import DATASETS

            if t.dataset is None or not DATASETS.get(t.dataset).has_corpus:
                raise UserError(f"config key '{p}.corpus' is missing: a retrieval task ranks the documents of a "
                                "corpus file (jsonl/csv/tsv/parquet with the document column)")
        if t.temperature is not None and t.temperature <= 0:
            _bad(f"{p}.temperature", t.temperature, "null (learned) or a number > 0, e.g. 0.05")
        if t.embedding_dim is not None and t.embedding_dim < 1:
            _bad(f"{p}.embedding_dim", t.embedding_dim, "null (the encoder's hidden size) or an integer >= 1")
        if t.top_k < 1:
            _bad(f"{p}.top_k", t.top_k, "an integer >= 1")
        if t.text_pair:
            raise UserError(f"config key '{p}.text_pair': a retrieval query is one column (query); a document may "
                            "have two (document, document_pair)")
        if self.train.distill.enabled or t.distill_data:
            raise NotSupportedError(f"task '{name}': distillation of a retrieval task is not supported")
        if self.train.mutual.enabled:
            raise NotSupportedError(f"train.mutual with retrieval task '{name}' is not supported")
        a = self.train.augment
        if a.enabled and (a.tasks is None or name in a.tasks):
            raise NotSupportedError(f"train.augment on retrieval task '{name}' is not supported; list the other "
                                    "tasks in train.augment.tasks")

    def _validate_augment(self) -> None:
        from polytask.robustness.noise import NOISES

        a = self.train.augment
        for n in a.noise:
            if n not in NOISES:
                _bad("train.augment.noise", n, "names from the noise suite: " + ", ".join(NOISES))
        if len(set(a.noise)) != len(a.noise):
            _bad("train.augment.noise", a.noise, "each noise once")
        if not 0.0 < a.rate <= 1.0:
            _bad("train.augment.rate", a.rate, "a number in (0, 1]: the probability that a word is hit")
        if not 0.0 < a.prob <= 1.0:
            _bad("train.augment.prob", a.prob, "a number in (0, 1]: the probability that a row gets a noisy copy")
        if a.consistency < 0:
            _bad("train.augment.consistency", a.consistency, "a number >= 0 (0: no consistency term)")
        for t in a.tasks or []:
            if t not in self.tasks:
                _bad("train.augment.tasks", a.tasks, "null (every task) or names of configured tasks ("
                     + ", ".join(self.tasks) + ")")
        if a.tasks is not None and not a.tasks:
            _bad("train.augment.tasks", a.tasks, "null (every task) or a non-empty list of task names")
        if not a.enabled:
            if a != AugmentConfig():
                raise UserError("config key 'train.augment' has options but no noise; set train.augment.noise, "
                                "e.g. [typo_swap, typo_drop, typo_keyboard, casing]")
            return
        for other, on in (("train.adversarial", self.train.adversarial.method != "none"),
                          ("train.distill", self.train.distill.enabled), ("train.mutual", self.train.mutual.enabled),
                          ("train.meta", self.train.meta.enabled)):
            if on:
                raise NotSupportedError(f"train.augment with {other} is not supported; remove one of them")

    def _validate_meta(self) -> None:
        m = self.train.meta
        for k in ("ways", "shots", "query_shots", "inner_steps", "tasks_per_episode", "eval_episodes"):
            if getattr(m, k) < (2 if k == "ways" else 1):
                _bad(f"train.meta.{k}", getattr(m, k), "an integer >= " + ("2" if k == "ways" else "1"))
        if m.episodes_per_epoch is not None and m.episodes_per_epoch < 1:
            _bad("train.meta.episodes_per_epoch", m.episodes_per_epoch, "null or an integer >= 1")
        for k in ("inner_lr", "inner_head_lr", "meta_lr"):
            v = getattr(m, k)
            if v is not None and v <= 0:
                _bad(f"train.meta.{k}", v, "a number > 0" + (" or null (train.lr)" if k == "meta_lr" else ""))
        if not m.enabled:
            return
        from polytask.meta.episodes import EPISODE_TYPES

        for name, t in self.tasks.items():
            if t.type not in EPISODE_TYPES:
                raise NotSupportedError(f"train.meta with task '{name}' of type {t.type} is not supported; "
                                        f"meta-learning episodes are built for {', '.join(EPISODE_TYPES)} tasks")
        for other, on in (("train.distill", self.train.distill.enabled), ("train.mutual", self.train.mutual.enabled),
                          ("train.continual", self.train.continual.enabled),
                          ("train.adversarial", self.train.adversarial.method != "none"),
                          ("per-task adapters (model.peft.sharing: per_task)",
                           self.model.peft.enabled and self.model.peft.sharing == "per_task")):
            if on:
                raise NotSupportedError(f"train.meta with {other} is not supported; remove one of them")
        if self.train.weighting.method != "static":
            raise NotSupportedError(f"train.meta with train.weighting.method: {self.train.weighting.method} is not "
                                    "supported (an outer update averages episodes, not task losses); use static")
        es = self.train.early_stopping.metric
        if es not in ("mean", "loss") and not es.endswith((".episode_accuracy", ".episode_loss")):
            _bad("train.early_stopping.metric", es, "under train.meta: mean, loss, <task>.episode_accuracy or "
                 "<task>.episode_loss (validation scores few-shot episodes)")

    def _validate_continual(self) -> None:
        c = self.train.continual
        if not c.enabled:
            if c.method != "none" or c.old_tasks:
                raise UserError("config key 'train.continual' needs a base run: use polytask add-task or polytask "
                                "update (or set train.continual.base to a checkpoint)")
            return
        unknown = [t for t in c.old_tasks or [] if t not in self.tasks]
        if unknown:
            _bad("train.continual.old_tasks", c.old_tasks, "names of configured tasks (" + ", ".join(self.tasks) + ")")
        if not [t for t in self.tasks if t not in (c.old_tasks or [])]:
            _bad("train.continual.old_tasks", c.old_tasks, "not every task: at least one task trains on its data")
        for other, on in (("train.distill", self.train.distill.enabled), ("train.mutual", self.train.mutual.enabled)):
            if on:
                raise NotSupportedError(f"train.continual with {other} is not supported; remove one of them")
        from polytask.weighting import WEIGHTINGS

        method = WEIGHTINGS.get(self.train.weighting.method)
        if c.method == "freeze" and method.per_task_gradients:
            raise NotSupportedError(f"train.continual.method: freeze with train.weighting.method: "
                                    f"{self.train.weighting.method} is not supported (it needs trainable shared "
                                    "parameters, and freeze leaves none); use static, uw, dwa, rlw or famo")

    def _validate_peft(self) -> None:
        pc = self.model.peft
        if not pc.enabled:
            return
        if self.model.freeze != "none":
            raise UserError(f"config key 'model.freeze' is {self.model.freeze!r} with model.peft.method: {pc.method}, "
                            "which freezes the whole encoder already (only the adapter and the heads train); "
                            "set model.freeze: none")
        for other, on in (("train.distill", self.train.distill.enabled), ("train.mutual", self.train.mutual.enabled)):
            if on:
                raise NotSupportedError(f"model.peft with {other} is not supported yet; remove one of them")

    def _validate_mutual(self) -> None:
        from polytask.weighting import WEIGHTINGS

        m = self.train.mutual
        if m.peers < 1:
            _bad("train.mutual.peers", m.peers, "an integer >= 1 (1: no mutual learning)")
        if m.sharing_weight < 0:
            _bad("train.mutual.sharing_weight", m.sharing_weight, "a number >= 0")
        if m.sync_every < 1:
            _bad("train.mutual.sync_every", m.sync_every, "an integer >= 1 (optimizer steps)")
        if not m.enabled:
            return
        for other, on in (("train.distill", self.train.distill.enabled),
                          ("train.adversarial", self.train.adversarial.method != "none")):
            if on:
                raise NotSupportedError(f"train.mutual with {other} is not supported; remove one of them")
        if WEIGHTINGS.get(self.train.weighting.method).per_task_gradients:
            raise NotSupportedError(f"train.mutual with train.weighting.method: {self.train.weighting.method} is not "
                                    "supported (its per-task gradients would mix the peers); use static, uw, dwa, "
                                    "rlw or famo")

    def _validate_distill(self) -> None:
        from polytask.weighting import WEIGHTINGS

        d = self.train.distill
        data_tasks = [n for n, t in self.tasks.items() if t.distill_data]
        if not d.enabled:
            if data_tasks:
                raise UserError(f"config key 'tasks.{data_tasks[0]}.distill_data' needs a teacher: set "
                                "train.distill.teacher (and run polytask distill)")
            return
        if not 0.0 <= d.alpha <= 1.0:
            _bad("train.distill.alpha", d.alpha, "a number in [0, 1] (the soft loss's share)")
        if d.temperature <= 0:
            _bad("train.distill.temperature", d.temperature, "a number > 0")
        if isinstance(d.teacher, dict):
            missing = [t for t in self.tasks if t not in d.teacher]
            extra = [t for t in d.teacher if t not in self.tasks]
            if missing or extra:
                _bad("train.distill.teacher", d.teacher, "a teacher for every task (" + ", ".join(self.tasks) +
                     ") and for no other")
        if d.hidden.weight > 0:
            if d.teacher_outputs != "fly":
                raise UserError("config key 'train.distill.hidden': hidden-state matching reads the teacher's hidden "
                                "states on every batch; set train.distill.teacher_outputs: fly")
            if not isinstance(d.teacher, str):
                raise NotSupportedError("config key 'train.distill.hidden': hidden-state matching needs one teacher "
                                        "run for every task (not an ensemble or per-task teachers)")
        if self.train.adversarial.method != "none":
            raise NotSupportedError("train.distill with train.adversarial: adversarial training of a distilled "
                                    "student is not supported; remove one of them")
        if data_tasks and WEIGHTINGS.get(self.train.weighting.method).needs_all_tasks:
            raise NotSupportedError(f"config key 'tasks.{data_tasks[0]}.distill_data' with train.weighting.method: "
                                    f"{self.train.weighting.method} is not supported (it needs every task's loss at "
                                    "each step, and unlabelled rows train one task alone); use static, uw, dwa or rlw")
        if data_tasks and self.train.sampling == "all_tasks":
            raise NotSupportedError(f"config key 'tasks.{data_tasks[0]}.distill_data' with train.sampling: "
                                    "all_tasks is not supported; use another sampling")

    def one_source(self) -> bool:
        """Whether joint batches will put every task in one source (one dataset or training file), so that
        every batch holds every task."""
        from polytask.data.features import source_key
        from polytask.tasks import TASK_TYPES

        keys = {source_key(t) if TASK_TYPES.get(t.type).shares_inputs else ("task", n) for n, t in self.tasks.items()}
        return self.train.joint_batches == "auto" and len(keys) == 1 and None not in keys

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["weighting"] = self.train.weighting.to_dict()
        if self.model.peft.enabled:
            d["model"]["peft"] = self.model.peft.to_dict()
        else:
            del d["model"]["peft"]  # off: configs (and saved checkpoints) read as before PEFT existed
        if self.train.adversarial.method == "none" and not self.train.adversarial.tasks:
            del d["train"]["adversarial"]  # off: configs (and saved checkpoints) read as before adversarial existed
        else:
            d["train"]["adversarial"] = self.train.adversarial.to_dict()
        for t in d["tasks"].values():
            if t["distill_data"] is None:
                del t["distill_data"]  # unset: configs (and saved checkpoints) read as before distillation existed
        if not self.train.distill.enabled:
            del d["train"]["distill"]  # off: configs (and saved checkpoints) read as before distillation existed
        if not self.train.mutual.enabled:
            del d["train"]["mutual"]
        if not self.train.meta.enabled:
            del d["train"]["meta"]  # off: configs (and saved checkpoints) read as before meta-learning existed
        if self.train.augment == AugmentConfig():
            del d["train"]["augment"]  # off: configs (and saved checkpoints) read as before augmentation existed
        if not self.train.continual.enabled:
            del d["train"]["continual"]  # off: configs (and saved checkpoints) read as before continual learning
        del d["tune"]  # only polytask tune reads it: runs, trials and checkpoints are saved without it
        return d

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Config:
        return _build(cls, data, path)


def _bad(key: str, value: Any, allowed: str) -> typing.NoReturn:
    raise UserError(f"config key '{key}' has bad value {value!r}; allowed: {allowed}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is dict:
        return "a mapping"
    if origin is list:
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type hint ``tp`` and convert it (int -> float where a float is wanted)."""
    origin = typing.get_origin(tp)
    if hasattr(tp, "from_dict"):
        return tp.from_dict(value, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except UserError:
                continue
        raise UserError(f"config key '{path}' has bad value {value!r}; expected {_type_name(tp)}")
    if origin is Literal:
        if isinstance(value, bool) and "off" in typing.get_args(tp):
            value = "auto" if value else "off"  # YAML 1.1 reads a bare off/on (or no/yes) as false/true
        if value not in typing.get_args(tp):
            _bad(path, value, ", ".join(str(a) for a in typing.get_args(tp)))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key '{path}' has bad value {value!r}; expected a list, e.g. [a, b]")
        (it,) = typing.get_args(tp)
        return [_convert(it, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key '{path}' must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, str) and SCI_FLOAT_RE.match(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string; users mean the number
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if ok is None:
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    if not ok:
        raise UserError(f"config key '{path}' has bad value {value!r}; expected {_type_name(tp)}")
    return float(value) if tp is float else value


def _build(cls: type, data: Any, path: str) -> Any:
    where = f"config key '{path}'" if path else "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise UserError(f"unknown config key '{sub}'{hint}; allowed here: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], value, sub)
    return cls(**kwargs)


def upgrade_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A config saved by a run (``config.json``, a checkpoint's ``polytask.json``) as this version reads it: where an
    option was added with a default that differs from what older runs did, the saved config gets the old behaviour.
    So far one: a regression task saved before ``standardize`` existed trained on raw targets."""
    def raw_units(t: Any) -> bool:
        return isinstance(t, dict) and t.get("type") == "regression" and "standardize" not in t

    tasks = data.get("tasks") if isinstance(data, dict) else None
    if not isinstance(tasks, dict) or not any(map(raw_units, tasks.values())):
        return data
    return {**data, "tasks": {name: {**t, "standardize": False} if raw_units(t) else t for name, t in tasks.items()}}


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``key.path=value`` override in place; the value is parsed as YAML (``3``, ``1e-4``, ``null``)."""
    if "=" not in override:
        raise UserError(f"--set {override!r}: expected key.path=value, e.g. train.epochs=3")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {override!r}: bad key path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise UserError(f"--set {override!r}: value is not valid YAML ({e.problem})") from None
    set_path(data, parts, value, f"--set {override!r}")


def set_path(data: dict[str, Any], parts: list[str], value: Any, where: str) -> None:
    """``data[a][b][c] = value`` for ``parts`` ``[a, b, c]``, creating missing mappings; ``where`` begins the
    error when a step of the path is not a mapping."""
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"{where}: '{'.'.join(parts[:i + 1])}' is not a mapping")
        node = nxt
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping with model/tasks/train")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                data: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or a dict), apply ``--set`` overrides, check types and combinations.

    Relative data paths in ``tasks.*.{train,validation,test}`` are made absolute: against the current
    directory when they exist there, else against the YAML file's folder (so a checkpoint's saved config
    finds its data from anywhere).
    """
    raw = read_yaml(path) if path is not None else dict(data or {})
    for o in overrides:
        apply_override(raw, o)
    cfg = Config.from_dict(raw)
    base = Path(path).resolve().parent if path is not None else None
    for t in cfg.tasks.values():
        for split in ("train", "validation", "test", "distill_data", "corpus"):
            setattr(t, split, _absolute(getattr(t, split), base))
    d = cfg.train.distill
    if isinstance(d.teacher, dict):
        d.teacher = {k: _absolute(v, base) for k, v in d.teacher.items()}
    elif d.teacher is not None:
        d.teacher = _absolute(d.teacher, base)
    return cfg.validate()


def _absolute(p: Any, base: Path | None) -> Any:
    """A relative path made absolute: against the current directory when it exists there, else against the
    config file's folder when it exists there; left as it is otherwise (the error names it where it is used).
    Lists are converted item by item."""
    if isinstance(p, list):
        return [_absolute(x, base) for x in p]
    if not p or Path(p).is_absolute():
        return p
    if Path(p).exists():
        return str(Path(p).resolve())
    if base is not None and (base / p).exists():
        return str(base / p)
    return p
