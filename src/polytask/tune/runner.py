"""``polytask tune``: an Optuna study over a config's ``tune.space``, each trial an ordinary training run.

The study lives in ``<study-dir>/study.db`` (SQLite), each trial's run in ``<study-dir>/trial-NNN/``. A trial's
objective is read from the validation that its ``best/`` checkpoint was kept at (the ``mean``, ``loss``, a task's
metric, or every task's main metric for ``pareto``); a pruner sees the objective after every validation through
the training loop's ``after_eval`` hook and may end a weak trial there (it changes no gradient). ``--resume``
continues a study after an interrupt: trials that were cut short are run again with the same parameters.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polytask.errors import NotSupportedError, UserError
from polytask.tune.report import short
from polytask.tune.space import NOISE_OBJECTIVES, objective_keys, parse_space, trial_config

STUDY_NAME = "polytask"


@dataclass
class TuneResult:
    study_dir: Path
    study: Any  # optuna.Study
    best_configs: list[Path]  # best.yaml (and, for pareto, one YAML per Pareto-optimal trial)
    report: Path


class PruneOnValidation:
    """Training-loop hook: after each validation, report the trial's objective to Optuna (step = the
    validation's number) and ask the loop to stop when the pruner says so."""

    def __init__(self, trial, names: list[str]):
        # `noisy` is measured once a trial has finished: while it trains, the clean mean stands in for it
        self.names = ["mean" if n == "noisy" else n for n in names]
        self.trial, self.evals, self.pruned = trial, 0, False
        self.main: dict[str, str] = {}

    def before_step(self, accelerator, model, run, window, step) -> None:
        if not self.main:  # each task's main metric as the run chose it (e.g. accuracy for tags without spans)
            self.main = {t: task.main_metric for t, task in run.tasks.items()}

    def after_step(self, step) -> None:
        pass

    def after_eval(self, step: int, metrics: dict[str, float]) -> bool:
        value = read_objective(self.names, metrics, self.main)[0]
        self.evals += 1
        if value is None or math.isnan(value):
            return False
        self.trial.report(value, self.evals)
        self.pruned = self.trial.should_prune()
        return self.pruned


def tune(config, trials: int | None = None, study_dir: str | Path | None = None, resume: bool = False,
         overwrite: bool = False, timeout: float | None = None, source: dict[str, Any] | None = None,
         progress: bool = True) -> TuneResult:
    """Run (or continue) the study of ``config.tune`` and write its report and best config(s).

    ``trials``: the study's size, counting the trials of an earlier run that ``resume`` continues (default
    ``tune.trials``); ``timeout``: stop starting new trials after this many seconds; ``source``: the config as
    written (the YAML's mapping), from which the best config is written so that it reads like the user's own."""
    import optuna

    from polytask.tune.report import write_report  # (optuna, matplotlib: when a study runs)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise NotSupportedError("tune runs its trials one after another in one process; start it with "
                                "'polytask tune', not under 'accelerate launch' with several processes")
    tc = config.tune
    if not tc.enabled:
        raise UserError("polytask tune needs a tune section naming what to search, e.g.\n"
                        "tune:\n  space:\n    train.lr: {log_uniform: [1.0e-5, 3.0e-4]}")
    total = trials if trials is not None else tc.trials
    if total < 1:
        raise UserError(f"--trials must be at least 1, got {total}")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    out = Path(study_dir) if study_dir else Path(str(config.train.output_dir).rstrip("/") + "-tune")
    db = out / "study.db"
    if db.exists() and not (resume or overwrite):
        raise UserError(f"{out} already holds a study; add --resume to continue it or --overwrite to start over "
                        "(or choose --study-dir)")
    if resume and not db.exists():
        raise UserError(f"cannot resume: {out} holds no study (no study.db)")
    if out.exists() and any(out.iterdir()) and not db.exists():
        raise UserError(f"{out} exists and is not a study folder; choose another --study-dir")
    params = parse_space(tc.space)
    names, directions = objective_keys(config)
    robust = tc.objective in NOISE_OBJECTIVES
    check_validation(config, names)
    if robust:
        check_noises_apply(config)
    fixed = fixed_values(config, names)
    if resume and (out / "tune.json").is_file():  # the study's own objective and space, or a clear refusal
        before = json.loads((out / "tune.json").read_text(encoding="utf-8"))
        for key, now in (("objective", names), ("space", json.loads(json.dumps(tc.space))),
                         ("robustness", robustness_spec(tc))):
            if key in before and before[key] != now:  # (a tune.json written before a key existed: not checked)
                raise UserError(f"config key 'tune.{key}' differs from the study in {out} ({before.get(key)!r} there, "
                                f"{now!r} here); --resume continues a study as it was started: restore it, or use "
                                "--overwrite or another --study-dir")
    if overwrite and db.exists():
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps({"objective": names, "directions": directions,
                                               "space": tc.space, "robustness": robustness_spec(tc),
                                               "config": config.to_dict()},
                                              indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=f"sqlite:///{db.resolve()}", study_name=STUDY_NAME,
                                directions=directions, sampler=make_sampler(tc, config.train.seed),
                                pruner=make_pruner(tc), load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"{out}: the study was started with another objective ({study.directions}); use "
                        "--overwrite to start over")
    retried = requeue_interrupted(study)
    if retried:
        print(f"tune: {len(retried)} interrupted trial(s) queued again with the same parameters: "
              + ", ".join(f"#{n}" for n in retried))
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    remaining = max(total - done, 0)
    start = time.perf_counter()

    def objective(trial) -> float | list[float]:
        values = {p.key: p.suggest(trial) for p in params}
        run_dir = out / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            return run_trial(trial, values, run_dir)
        except UserError as e:  # e.g. an impossible combination of values: this trial fails, the study goes on
            trial.set_user_attr("error", str(e))
            print(f"tune: trial {trial.number} failed: {e}", flush=True)
            raise

    def run_trial(trial, values: dict[str, Any], run_dir: Path) -> float | list[float]:
        cfg = trial_config(config, {**values, **fixed}, str(run_dir))
        cfg.train.progress = progress and cfg.train.progress
        shown = "  ".join(f"{k}={short(v)}" for k, v in values.items())
        finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))
        print(f"tune: trial {trial.number} ({finished + 1}/{total}): {shown}", flush=True)
        from polytask.train.loop import train

        hook = PruneOnValidation(trial, names) if len(names) == 1 else None
        t0 = time.perf_counter()
        result = train(cfg, overwrite=True, hooks=[hook] if hook else [])
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("steps", result.global_step)
        found = best_validation(run_dir, result.best_step)
        main = result.main_metrics or {}
        del result
        gc.collect()
        shutil.rmtree(run_dir / "last", ignore_errors=True)  # a finished trial never resumes: best/ is what counts
        if hook is not None and hook.pruned:
            trial.set_user_attr("validation", found)
            print(f"tune: trial {trial.number} pruned after validation {hook.evals}", flush=True)
            raise optuna.TrialPruned()
        if robust:
            noisy = noisy_validation(run_dir / "best", config.tune.robustness)
            trial.set_user_attr("robustness", noisy)
            found.update(clean=noisy["clean"], noisy=noisy["noisy"])
        trial.set_user_attr("validation", found)
        got = read_objective(names, found, main)
        if any(v is None for v in got):
            raise UserError(f"trial {trial.number}: no validation figure for {names} (does every task have a "
                            "validation split?)")
        shown = "  ".join(f"{n}={v:.4f}" for n, v in zip(names, got))
        if robust:
            shown += f"  (clean {noisy['clean']:.4f}, drop {noisy['drop']:.4f})"
        print(f"tune: trial {trial.number}: {shown}", flush=True)
        return got[0] if len(got) == 1 else got

    if remaining:
        study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(UserError,))
    if not any(t.state.name == "COMPLETE" for t in study.trials):
        raise UserError(f"no trial of {out} finished (all pruned or failed); see the trial folders")
    best_configs, report = write_report(study, config, names, directions, out, source,
                                        seconds=time.perf_counter() - start, fixed=fixed)
    return TuneResult(out, study, best_configs, report)


def robustness_spec(tc) -> dict[str, Any] | None:
    """``tune.robustness`` as the study stores it (None for objectives that do not read it): a resumed study must
    score its trials under the same noise."""
    from dataclasses import asdict

    return asdict(tc.robustness) if tc.objective in NOISE_OBJECTIVES else None


def check_noises_apply(config) -> None:
    """Before the first trial: some noise of ``tune.robustness`` applies to some task's validation text (else every
    trial would train and then have nothing to be scored on)."""
    from polytask.data.features import read_examples
    from polytask.robustness.noise import NOISES, applies
    from polytask.robustness.runner import text_kind
    from polytask.tasks import build_task

    rc = config.tune.robustness
    noises = list(rc.noises) or list(NOISES)
    for name, tcfg in config.tasks.items():
        task = build_task(name, tcfg)
        examples = read_examples(task, "validation")
        if not examples:
            continue
        if any(applies(n, *text_kind(task, examples)) for n in noises):
            return
    raise UserError(f"config key 'tune.robustness.noises': none of {', '.join(noises)} applies to the validation "
                    "text of any task (English noises to Chinese text, or the reverse?); tune.objective "
                    f"{config.tune.objective} would have nothing to measure")


def noisy_validation(checkpoint: Path, rc) -> dict[str, float]:
    """A trial's best checkpoint on the validation split, clean and under the noise of ``tune.robustness``:
    ``clean`` and ``noisy`` (the means over tasks of the main metric, a lower-is-better one negated, as
    ``mean``) and ``drop`` (clean - noisy)."""
    from polytask.predict import Predictor
    from polytask.robustness.runner import robustness

    predictor = Predictor(checkpoint)
    result = robustness(predictor, split="validation", noises=list(rc.noises) or None, rate=rc.rate, seed=rc.seed,
                        max_samples=rc.max_samples, progress=False)
    del predictor
    gc.collect()
    entries = [e for e in result["tasks"].values() if e["noises"]]  # tasks that some noise applies to
    if not entries:
        raise UserError(f"{checkpoint}: none of the noises {', '.join(rc.noises) or '(all)'} applies to a task with "
                        "a validation split; tune.objective noisy / robust has nothing to measure")

    def mean(key: str) -> float:
        return sum(e[key] * (1 if e["higher_is_better"] else -1) for e in entries) / len(entries)

    clean, noisy = mean("clean"), mean("noisy")
    return {"clean": clean, "noisy": noisy, "drop": clean - noisy}


def fixed_values(config, names: list[str]) -> dict[str, Any]:
    """What every trial sets besides its sampled values: a single objective other than a task's main metric
    (mean, loss, <task>.<metric>) is also what early stopping keeps ``best/`` by, so that the objective is read
    from the best checkpoint by that very figure. (``noisy`` is measured on the checkpoint kept by the clean
    figure of early stopping.)"""
    if len(names) == 1 and names[0] not in (*config.tasks, "noisy") and names[0] != config.train.early_stopping.metric:
        return {"train.early_stopping.metric": names[0]}
    return {}


def check_validation(config, names: list[str]) -> None:
    """Every task the objective reads needs a validation split (the objective is a validation figure)."""
    def has(t: str) -> bool:
        c = config.tasks[t]
        return c.dataset is not None or c.validation is not None  # (built-in datasets all have one)

    wanted = [n.partition(".")[0] for n in names if n.partition(".")[0] in config.tasks]
    missing = [t for t in wanted if not has(t)]
    if missing:
        raise UserError(f"config key 'tasks.{missing[0]}.validation' is missing: tune.objective reads task "
                        f"'{missing[0]}' on the validation split; give it a validation file")
    if not wanted and not any(has(t) for t in config.tasks):
        raise UserError("polytask tune scores trials on the validation split, and no task has one; give at least "
                        "one task a validation file (tasks.<name>.validation)")


def read_objective(names: list[str], metrics: dict[str, float], main: dict[str, str] | None) -> list[float | None]:
    """The objective's values from flat validation metrics (``main``: task -> its main metric, for objectives
    named by a task; while training, the configured or the type's default one)."""
    out = []
    for n in names:
        if n in metrics:
            out.append(metrics[n])
        elif main and n in main:
            out.append(metrics.get(f"{n}.{main[n]}"))
        else:
            out.append(None)
    return out


def best_validation(run_dir: Path, best_step: int) -> dict[str, float]:
    """The flat validation metrics logged at ``best_step`` (the validation ``best/`` was kept at)."""
    found: dict[str, float] = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        rec = json.loads(line)
        if rec.get("type") == "eval" and rec.get("step") == best_step:
            found = {k: v for k, v in rec.items() if isinstance(v, (int, float)) and k not in ("step", "epoch",
                                                                                                 "time", "best")}
    return found


def requeue_interrupted(study) -> list[int]:
    """Trials left RUNNING (the process was killed) or FAILED by an interrupt are marked failed and their
    parameters queued again, once each (the study remembers which). Returns their numbers."""
    from optuna.trial import TrialState

    requeued = set(study.user_attrs.get("requeued", []))
    numbers = []
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        elif t.state != TrialState.FAIL or "error" in t.user_attrs:  # failed by its own values: not again
            continue
        if t.number in requeued:
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        numbers.append(t.number)
    if numbers:
        study.set_user_attr("requeued", sorted(requeued | set(numbers)))
    return numbers


def make_sampler(tc, seed: int):
    import optuna

    kind = tc.sampler if tc.sampler != "auto" else ("nsga2" if tc.objective in ("pareto", "robust") else "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(tc.startup_trials, 1))


def make_pruner(tc):
    import optuna

    # auto: no pruning for a multi-objective study (Optuna cannot), nor for noisy, whose trials would be judged by the
    # clean mean while they train — which is what a robust setting may trade early on
    kind = tc.pruner if tc.pruner != "auto" else ("none" if tc.objective in ("pareto", *NOISE_OBJECTIVES) else "median")
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tc.startup_trials, n_warmup_steps=0)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3,
                                                      min_early_stopping_rate=0)
    return optuna.pruners.NopPruner()

