"""The search space and objective of ``tune:``: parsing, checking against the config, and sampling a trial.

A space maps dotted config keys to one distribution each::

    tune:
      objective: mean
      space:
        train.lr: {log_uniform: [1.0e-5, 3.0e-4]}
        tasks.intent.weight: {uniform: [0.5, 30]}
        train.weighting.method: {choice: [static, uw, dwa]}
        train.batch_size: {choice: [16, 32]}

Each key is checked when the config is loaded: the config built with each of its values (alone, and every key at
its first value together) must be a valid config, so a misspelt key or an impossible value fails before any
training, naming ``tune.space.<key>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from polytask.errors import NotSupportedError, UserError

KINDS = ("uniform", "log_uniform", "int", "log_int", "choice")


@dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` one of KINDS; ``low``/``high`` for ranges, ``choices`` for ``choice``."""

    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The trial's value (an Optuna trial; the parameter is named by the config key)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind in ("int", "log_int"):
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.kind == "log_int")
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log_uniform")

    def values(self) -> list[Any]:
        """Values that stand for the range when checking the config: its ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("int", "log_int"):
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def flatten_space(space: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys as written, or nested mappings (what ``--set tune.space.train.lr=...`` makes) flattened:
    ``{train: {lr: {uniform: [..]}}}`` -> ``{"train.lr": {uniform: [..]}}``."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        nested = (isinstance(spec, dict) and spec and not set(spec) & set(KINDS)
                  and all(isinstance(v, dict) for v in spec.values()))
        if nested:
            out.update(flatten_space(spec, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = spec
    return out


def parse_space(space: dict[str, Any]) -> list[Param]:
    out = []
    for key, spec in flatten_space(space).items():
        where = f"tune.space.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise UserError(f"config key '{where}' has bad value {spec!r}; allowed: one of "
                            + ", ".join(f"{{{k}: ...}}" for k in KINDS) + ", e.g. {log_uniform: [1.0e-5, 3.0e-4]}")
        kind, arg = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(arg, list) or not arg:
                raise UserError(f"config key '{where}.choice' has bad value {arg!r}; allowed: a non-empty list")
            for v in arg:
                if not (v is None or isinstance(v, (bool, int, float, str))):
                    raise UserError(f"config key '{where}.choice' has bad value {v!r}; allowed: numbers, strings, "
                                    "true/false or null (one config value each)")
            out.append(Param(key, kind, choices=tuple(arg)))
            continue
        ok = (isinstance(arg, list) and len(arg) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in arg))
        if kind in ("int", "log_int"):
            ok = ok and all(float(v).is_integer() for v in arg)
        if not ok or arg[0] >= arg[1]:
            raise UserError(f"config key '{where}.{kind}' has bad value {arg!r}; allowed: [low, high] with low < high"
                            + (" (integers)" if kind in ("int", "log_int") else ""))
        if kind.startswith("log_") and arg[0] <= 0:
            raise UserError(f"config key '{where}.{kind}' has bad value {arg!r}; allowed: low > 0 on a log scale")
        out.append(Param(key, kind, float(arg[0]), float(arg[1])))
    return out


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """``data["train"]["lr"] = value`` for ``key`` ``train.lr`` (missing mappings are created)."""
    from polytask.config import set_path

    set_path(data, key.split("."), value, f"config key 'tune.space.{key}'")


def trial_config(config, values: dict[str, Any], output_dir: str | None = None):
    """``config`` with ``values`` (config key -> value) set, its ``tune:`` section removed, validated."""
    from polytask.config import Config

    data = config.to_dict()
    data.pop("tune", None)
    for key, value in values.items():
        set_key(data, key, value)
    if output_dir is not None:
        data["train"]["output_dir"] = output_dir
    return Config.from_dict(data).validate()


NOISE_OBJECTIVES = ("noisy", "robust")  # objectives scored under tune.robustness once a trial has trained


def objective_keys(config) -> tuple[list[str], list[str]]:
    """The objective's names and directions (``maximize``/``minimize``). A ``<task>`` objective is named
    ``<task>`` here and read as its main metric once trained."""
    from polytask.tasks import TASK_TYPES
    from polytask.train.early_stopping import lower_is_better

    def direction(metric: str) -> str:
        return "minimize" if lower_is_better(metric) else "maximize"

    def task_metric(name: str) -> str:
        t = config.tasks[name]
        return t.metric or TASK_TYPES.get(t.type).main_metric

    obj = config.tune.objective
    if obj == "pareto":
        return list(config.tasks), [direction(task_metric(t)) for t in config.tasks]
    if obj == "noisy":  # the validation mean under noise (higher is better, as `mean`)
        return ["noisy"], ["maximize"]
    if obj == "robust":  # clean against noisy, both on the rows and tasks the noise is scored on: a Pareto front
        return ["clean", "noisy"], ["maximize", "maximize"]
    if obj in ("mean", "loss"):
        return [obj], [direction(obj)]
    task, _, metric = obj.partition(".")
    if task not in config.tasks:
        raise UserError(f"config key 'tune.objective' has bad value {obj!r}; allowed: mean, loss, pareto, noisy, "
                        "robust, a task "
                        f"({', '.join(config.tasks)}) or <task>.<metric>")
    if metric:
        ttype = TASK_TYPES.get(config.tasks[task].type)
        if metric not in (*ttype.metric_names, *(("loss",) if ttype.has_eval_loss else ())):
            raise UserError(f"config key 'tune.objective' has bad value {obj!r}; for a {config.tasks[task].type} "
                            f"task: {', '.join((*ttype.metric_names, 'loss'))}")
        return [obj], [direction(metric)]
    return [task], [direction(task_metric(task))]


def check_tune(config) -> None:
    """Check ``tune:`` against the rest of the config (called by ``Config.validate``)."""
    tc = config.tune
    if not tc.space:
        raise UserError("config key 'tune.space' is empty: name at least one config key to search, e.g. "
                        "train.lr: {log_uniform: [1.0e-5, 3.0e-4]}")
    if tc.trials < 1:
        raise UserError(f"config key 'tune.trials' has bad value {tc.trials!r}; allowed: an integer >= 1")
    if tc.startup_trials < 0:
        raise UserError(f"config key 'tune.startup_trials' has bad value {tc.startup_trials!r}; allowed: an "
                        "integer >= 0")
    names, _ = objective_keys(config)
    if tc.objective == "pareto" and len(config.tasks) < 2:
        raise UserError("config key 'tune.objective' is pareto with one task; use mean or the task's name")
    if len(names) > 1 and tc.pruner in ("median", "halving"):
        raise NotSupportedError(f"tune.pruner: {tc.pruner} with tune.objective: {tc.objective} is not supported "
                                "(Optuna cannot prune a multi-objective study); use pruner: none or auto")
    check_robustness(config)
    params = parse_space(tc.space)
    for p in params:
        if p.key.startswith("tune.") or p.key == "tune":
            raise UserError(f"config key 'tune.space.{p.key}': the search cannot change the tune section itself")
        if p.key in ("train.output_dir", "train.seed"):
            raise UserError(f"config key 'tune.space.{p.key}': each trial has its own folder and the config's seed "
                            "(a fair comparison); search other keys")
        head, _, rest = p.key.partition(".")
        if head == "tasks" and rest.split(".")[0] not in config.tasks:
            raise UserError(f"config key 'tune.space.{p.key}': no task {rest.split('.')[0]!r}; tasks: "
                            + ", ".join(config.tasks))
        for v in p.values():
            _check(config, {p.key: v}, f"tune.space.{p.key}")
    _check(config, {p.key: p.values()[0] for p in params}, "tune.space")


def check_robustness(config) -> None:
    """``tune.robustness``: known noises, a rate in (0, 1]; only with the objectives that read it."""
    from polytask.robustness.noise import NOISES

    rc, default = config.tune.robustness, type(config.tune.robustness)()
    if rc != default and config.tune.objective not in NOISE_OBJECTIVES:
        raise UserError(f"config key 'tune.robustness' is set but tune.objective is {config.tune.objective!r}; it "
                        "only serves the objectives noisy and robust")
    unknown = [n for n in rc.noises if n not in NOISES]
    if unknown:
        raise UserError(f"config key 'tune.robustness.noises' has unknown noise {unknown[0]!r}; choose from "
                        + ", ".join(NOISES))
    if not 0.0 < rc.rate <= 1.0:
        raise UserError(f"config key 'tune.robustness.rate' has bad value {rc.rate!r}; allowed: a number in (0, 1]")
    if rc.max_samples is not None and rc.max_samples < 1:
        raise UserError(f"config key 'tune.robustness.max_samples' has bad value {rc.max_samples!r}; allowed: null "
                        "or an integer >= 1")


def _check(config, values: dict[str, Any], where: str) -> None:
    try:
        trial_config(config, values)  # (a fresh dict of the config: config itself is not touched)
    except (UserError, NotSupportedError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise type(e)(f"config key '{where}': the config with {shown} is not valid: {e}") from None
