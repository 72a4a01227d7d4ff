"""Saving and restoring ``best/`` (a model checkpoint) and ``last/`` (model + resumable training state)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from polytask.errors import UserError
from polytask.model.io import (
    WEIGHTS_FILE,
    fill_model_folder,
    load_weights,
    read_meta,
    recover,
    write_atomically,
    write_json,
)
from polytask.train import state as st
from polytask.train.early_stopping import EarlyStopping

STATE_DIR = "training_state"


@dataclass
class TrainerState:
    """Counters of the run. ``micro_in_epoch`` counts micro-batches of the current epoch already done."""

    epoch: int = 0
    micro_in_epoch: int = 0
    global_step: int = 0
    finished: bool = False
    early_stopping: dict[str, Any] = field(default_factory=dict)
    weighting: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)  # what the batch plan was built from (see plan_signature)


def plan_signature(run) -> dict[str, Any]:
    """What decides the batch plan: the sources (joint batches) and their sizes, sampling, batch size and
    accumulation. Resuming under another plan would skip the wrong batches."""
    tc = run.config.train
    sig = {"sources": {n: len(s) for n, s in run.sources.items()}, "sampling": tc.sampling,
           "batch_size": tc.batch_size, "grad_accum": tc.grad_accum}
    if run.meta is not None:  # episodes: their count per epoch and per outer update decide the plan too
        sig.update(run.plan.signature())
    return sig


def check_same_run(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Resuming needs the same encoder and tasks — and the same model shape: the distilled student (its layers,
    encoder, hidden-state projections), the number of mutual-learning peers, and the continual-learning settings
    (base, old tasks, method: they decide what trains); training settings (e.g. more epochs) may change."""
    for section in ("model", "tasks"):
        if saved.get(section) != current.get(section):
            keys = sorted(set(saved.get(section, {})) | set(current.get(section, {})))
            diff = [k for k in keys if saved.get(section, {}).get(k) != current.get(section, {}).get(k)]
            raise UserError(f"cannot resume: config section '{section}' differs from the run in {folder} "
                            f"(at {', '.join(f'{section}.{k}' for k in diff)}); use the run's config or --overwrite")
    for key in ("distill.student", "distill.hidden.weight", "distill.hidden.layers", "mutual.peers", "continual",
                "meta.method"):
        was, now = _get(saved.get("train", {}), key), _get(current.get("train", {}), key)
        if was != now:
            raise UserError(f"cannot resume: config key 'train.{key}' differs from the run in {folder} (saved "
                            f"{was!r}, now {now!r}); it changes the model, so use the run's value or --overwrite")


def check_same_fit(saved: dict[str, Any], tasks: dict[str, Any], folder: Path) -> None:
    """What the tasks fitted on their training data (labels, a regression head's unit) must be what the saved
    model was trained with: a training file edited since would resume the weights under other meanings."""
    for name, task in tasks.items():
        was, now = saved.get(name, {}), task.spec()
        diff = [k for k in now if k in was and k not in ("main_metric", "metric_reason") and was[k] != now[k]]
        if diff:
            raise UserError(f"cannot resume: task '{name}' fitted other {', '.join(diff)} on its training data than "
                            f"the run in {folder} was trained with (was the training file changed?); restore it or "
                            "use --overwrite")


def _get(section: dict[str, Any], key: str) -> Any:
    """``section[a][b]`` for ``key`` ``a.b``; None where absent (the feature was off)."""
    for part in key.split("."):
        if not isinstance(section, dict):
            return None
        section = section.get(part)
    return section


def check_same_plan(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    if not saved:  # saved before joint batches existed: then every source was one task
        if any("+" in n for n in current["sources"]):  # a joint source's name joins its tasks' names
            raise UserError(f"cannot resume: {folder} was saved before joint batches; add --set "
                            "train.joint_batches=off to resume it")
        return
    if saved != current:
        diff = [k for k in current if saved.get(k) != current[k]]
        raise UserError(f"cannot resume: the batch plan differs from the run in {folder} (at "
                        f"{', '.join(diff)}: saved {[saved.get(k) for k in diff]}, now {[current[k] for k in diff]}); "
                        "resume with the run's train.joint_batches, sampling, batch_size and grad_accum")


def save_last(folder: Path, run, model, trainer_state: TrainerState, early: EarlyStopping,
              rng_per_rank: list[dict[str, Any]]) -> None:
    """Write ``last/`` atomically: a loadable checkpoint plus everything needed to resume."""
    trainer_state.early_stopping = early.state_dict()
    trainer_state.weighting = run.weighting.state_dict()
    trainer_state.plan = plan_signature(run)

    def fill(tmp: Path) -> None:
        fill_model_folder(tmp, run.export(model), run.tokenizer, run.config, run.tasks)
        sd = tmp / STATE_DIR
        sd.mkdir()
        if run.mutual is not None:  # every peer (the folder's model is the best one)
            run.mutual.save(sd, model)
        if run.distiller is not None:  # hidden-state matching's projections
            run.distiller.save(sd)
        st.optimizer_to_files(run.optimizer, sd)
        (sd / "scheduler.json").write_text(json.dumps(run.scheduler.state_dict()))
        st.save_rng(sd, rng_per_rank)
        write_json(sd / "trainer_state.json", asdict(trainer_state))

    write_atomically(folder, fill)


def load_last(folder: Path, run, early: EarlyStopping, rank: int, world_size: int) -> TrainerState:
    """Restore model weights, optimizer, scheduler, weighting and RNG from ``last/``; return the counters."""
    recover(folder)
    sd = folder / STATE_DIR
    if not (sd / "trainer_state.json").is_file():
        raise UserError(f"cannot resume: {folder} holds no training state (was the run started?)")
    meta = read_meta(folder)
    check_same_run(meta["config"], run.config.to_dict(), folder)
    check_same_fit(meta.get("tasks", {}), run.tasks, folder)
    saved_world = len(json.loads((sd / "rng.json").read_text()))
    if saved_world != world_size:
        raise UserError(f"cannot resume: {folder} was saved by {saved_world} process(es) but this run has "
                        f"{world_size}; the batch plan depends on it, so resume with {saved_world}")
    trainer_state = TrainerState(**json.loads((sd / "trainer_state.json").read_text()))
    check_same_plan(trainer_state.plan, plan_signature(run), folder)
    fresh = [g["initial_lr"] for g in run.optimizer.param_groups]  # this config's learning rates
    if run.distiller is not None:
        run.distiller.load(sd)
    if run.mutual is not None:
        run.mutual.load(sd, run.model)
    else:
        load_weights(run.model, folder / WEIGHTS_FILE, run.config)
    st.optimizer_from_files(run.optimizer, sd)
    run.scheduler.load_state_dict(json.loads((sd / "scheduler.json").read_text()))
    # the saved state carries the old learning rates; the config's win (resume after a NaN with a lower lr)
    run.scheduler.base_lrs = list(fresh)
    for group, base, factor in zip(run.optimizer.param_groups, fresh, run.scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(run.scheduler.last_epoch)
    run.scheduler._last_lr = [g["lr"] for g in run.optimizer.param_groups]
    early.load_state_dict(trainer_state.early_stopping)
    run.weighting.load_state_dict(trainer_state.weighting)
    st.set_rng_states(st.load_rng(sd, rank))
    return trainer_state
