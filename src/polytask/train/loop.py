"""The training loop — one loop for every feature.

Follow one batch: ``build_run`` (train/setup.py) has read and tokenised every task and grouped the tasks that
read the same inputs into sources (data/joint.py); the batch plan (data/sampling.py) says which source and
which rows come next; ``run.collate`` pads them to the batch's longest input and gives each task its labelled
rows; the model runs the encoder once and every task's head; each task type computes its loss; the guard
(train/guard.py) stops on a non-finite one; the weighting method turns the step's losses into ``backward()``;
after ``grad_accum`` micro-batches (times the number of sources under ``sampling: all_tasks``) the optimizer
steps. Validation runs each epoch (and
every ``eval_steps``), keeps ``best/`` and early-stops;
``last/`` holds everything needed for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from tqdm.auto import tqdm

from polytask.adversarial import Perturbable
from polytask.config import Config
from polytask.data.features import to_device
from polytask.data.joint import segment_sources, stack_sources
from polytask.evaluate.runner import evaluate_split, flat_metrics
from polytask.model.io import save_checkpoint
from polytask.precision import announce, resolve_precision
from polytask.train.checkpoint import TrainerState, load_last, save_last
from polytask.train.early_stopping import EarlyStopping
from polytask.train.guard import check_finite
from polytask.train.logging import RunLogger
from polytask.train.meta import meta_step
from polytask.train.output import check_output_dir, device_type, has_accelerator, start_output_dir
from polytask.train.setup import Run, build_run
from polytask.train.state import rng_states
from polytask.weighting import StepContext


@dataclass
class TrainResult:
    output_dir: Path
    best_dir: Path
    global_step: int
    best_score: float | None
    validation: dict[str, float]  # flat validation metrics of the last evaluation
    stopped_early: bool
    model: Any = None  # the trained model as it is at the end (best/ may hold an earlier one)
    is_main_process: bool = True  # False in the other processes of a multi-process run
    best_step: int = -1  # the step whose validation best/ holds (-1: no validation)
    main_metrics: dict[str, str] | None = None  # task -> the main metric its validation is scored by
    stopped_by_hook: bool = False  # a hook's after_eval asked to stop (e.g. a pruned tuning trial)


def train(config: Config, resume: bool = False, overwrite: bool = False, hooks: Sequence[Any] = ()) -> TrainResult:
    """Train ``config`` into ``config.train.output_dir``; ``resume`` continues from its ``last/``.

    ``hooks``: measurement objects with ``before_step(accelerator, model, run, window, step)`` and
    ``after_step(step)``, called around every optimizer step with the unwrapped model (``polytask affinity``
    uses one), and optionally ``after_eval(step, metrics) -> bool`` after each validation but the last, whose
    True ends the run there as early stopping would (``polytask tune`` prunes weak trials so). They observe;
    they must not change gradients or parameters."""
    tc = config.train
    out = Path(tc.output_dir)
    check_output_dir(out, resume, overwrite)
    if not torch.distributed.is_initialized():
        # Accelerate keeps one global state per process; a second train() in the same Python process
        # (notebooks, tests, hyperparameter search) may ask for another precision.
        AcceleratorState._reset_state(reset_partial_state=True)
    # auto: bf16 only where the hardware runs it natively (emulated bf16 is many times slower than fp32)
    precision = resolve_precision(tc.precision, device_type())
    accelerator = Accelerator(
        # cpu=True on machines without an accelerator makes `accelerate launch` start gloo (MULTI_CPU) DDP.
        cpu=not has_accelerator(),
        mixed_precision="bf16" if precision.precision == "bf16" else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # one head per batch
    )
    main = accelerator.is_main_process
    if main:
        announce(precision)
    set_seed(tc.seed)
    run = build_run(config, accelerator.num_processes, accelerator.process_index)
    early = EarlyStopping.from_config(tc.early_stopping)
    state = TrainerState()
    if resume:
        state = load_last(out / "last", run, early, accelerator.process_index, accelerator.num_processes)
    if main and not resume:
        start_output_dir(out, overwrite, config, precision)
    accelerator.wait_for_everyone()
    # from_pretrained hands the encoder back in eval mode: without this, its dropout would stay off until the
    # first validation switched the whole model to train mode (and, after --resume, off again until the next).
    run.model.train()
    model, optimizer = accelerator.prepare(run.model, run.optimizer)
    if run.distiller is not None:  # teachers to the device; under teacher_outputs: cache, their outputs now
        run.distiller.prepare(accelerator.device, precision.precision, run.data, run.pad_id, tc.eval_batch_size,
                              progress=main and tc.progress, student=accelerator.unwrap_model(model))
    if run.mutual is not None:
        run.mutual.prepare(accelerator.device, precision.precision)
    logger = RunLogger(out, config, enabled=main, resume_step=state.global_step if resume else None)
    bar = tqdm(total=run.total_steps, initial=state.global_step, desc="train", dynamic_ncols=True,
               disable=not (main and tc.progress),
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # a log file gets a line every 30 s, not 10/s
    running: dict[str, list[float]] = defaultdict(list)  # task -> losses since the last log line
    stop = state.finished
    stopped_by_hook = False

    def fail() -> None:
        logger.close(failed=True)

    try:
        for epoch in range(state.epoch, run.epochs):
            if stop:
                break
            batches = run.plan.epoch(epoch)  # [(task, example indices)], the same on every process
            i = state.micro_in_epoch
            while i < len(batches) and not stop:
                window = batches[i:i + tc.grad_accum * run.plan.tasks_per_step]  # micro-batches of one optimizer step
                for hook in hooks:
                    hook.before_step(accelerator, accelerator.unwrap_model(model), run, window, state.global_step)
                step_fn = meta_step if run.meta is not None else train_step  # meta-learning: episodes, an outer update
                losses = step_fn(accelerator, model, run, window, state.global_step, epoch)
                check_finite(accelerator, run, window, losses, state.global_step, on_stop=(fail, bar.close))
                for task, loss in losses.items():
                    running[task].append(loss)
                run.weighting.end_step(lambda t: all_reduce_mean(accelerator, t))
                if run.distiller is not None:
                    run.distiller.end_step(lambda t: all_reduce_mean(accelerator, t))
                if run.continual is not None and run.continual.active:  # ewc / l2sp: the pull toward the start
                    run.continual.add_gradient(accelerator.unwrap_model(model))
                    running["continual_pull"].append(run.continual.last_penalty)
                if tc.grad_clip is not None:
                    norm = clip_gradients(accelerator, model, run, tc.grad_clip)
                    check_finite(accelerator, run, window, {}, state.global_step, norm, on_stop=(fail, bar.close))
                optimizer.step()
                run.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                for hook in hooks:
                    hook.after_step(state.global_step)
                i += len(window)
                state.global_step += 1
                state.micro_in_epoch = i
                if i == len(batches):  # epoch finished: the next micro-batch is the next epoch's first
                    state.epoch, state.micro_in_epoch = epoch + 1, 0
                bar.update(1)
                step, done = state.global_step, state.global_step >= run.total_steps
                if step % tc.logging_steps == 0 or done:
                    log_train(logger, bar, run, running, step, epoch + i / len(batches))
                if (tc.eval_steps and step % tc.eval_steps == 0) or i == len(batches) or done:
                    stop = validate_and_save(accelerator, model, run, state, early, logger, bar) or done
                    # a run that goes on may be stopped by a hook (one ending anyway has nothing left to save)
                    if not stop and hooks_stop(accelerator, hooks, step, state.last_eval):
                        stop = stopped_by_hook = True
                elif tc.save_steps and step % tc.save_steps == 0:
                    save_training_state(accelerator, model, run, state, early)
    except BaseException:  # an error or an interrupt: the trackers' runs end as failed, not left open
        logger.close(failed=True)
        bar.close()
        raise

    state.finished = True
    if run.distiller is not None:
        run.distiller.finish()
    check_processes_agree(accelerator, model, run)
    save_training_state(accelerator, model, run, state, early)
    bar.close()
    logger.summary({"steps": state.global_step, "stopped_early": float(early.should_stop),
                    **({f"best.{tc.early_stopping.metric}": early.best} if early.best is not None else {}),
                    **{f"last_validation.{k}": v for k, v in (state.last_eval or {}).items()}},
                   [out / "config.json", out / "metrics.jsonl"])
    logger.close()
    if main and not (out / "best").exists():  # no validation split anywhere: the last model is the best
        save_checkpoint(out / "best", run.export(accelerator.unwrap_model(model)), run.tokenizer, config, run.tasks)
    if main and run.mutual is not None and tc.mutual.save_peers:
        for i, peer in enumerate(accelerator.unwrap_model(model).peers):
            save_checkpoint(out / "peers" / f"peer{i}", peer, run.tokenizer, config, run.tasks)
    accelerator.wait_for_everyone()
    return TrainResult(out, out / "best", state.global_step, early.best, state.last_eval,
                       stopped_early=early.should_stop, model=run.export(accelerator.unwrap_model(model)),
                       is_main_process=main, best_step=early.best_step,
                       main_metrics={n: t.main_metric for n, t in run.tasks.items()}, stopped_by_hook=stopped_by_hook)


def train_step(accelerator: Accelerator, model, run: Run, window: list[tuple[str, list[int]]],
               step: int, epoch: int = 0) -> dict[str, float]:
    """Forward and backward over the micro-batches of one optimizer step; returns each task's loss.

    Each micro-batch is ``(source, rows)``: a task, or under joint batches the tasks that read the same inputs,
    whose heads all read the one encoder pass. The window is cut into groups of ``plan.tasks_per_step``
    micro-batches (one, except under ``sampling: all_tasks``, where a group holds one batch of every source).
    A group runs as one model call — its batches stacked where their lengths are close, separate segments where
    not (one stacked batch under adversarial training) — and the weighting method turns the group's
    losses — every task of the group — into one backward.
    """
    unwrapped = accelerator.unwrap_model(model)
    k = run.plan.tasks_per_step
    groups = [window[s:s + k] for s in range(0, len(window), k)]
    seen: dict[str, list[float]] = {}
    for g, group in enumerate(groups):
        batches = [run.collate(src, rows) for src, rows in group]
        if run.augment is not None:  # noisy copies of some rows appended to each batch (train.augment)
            batches = [run.augment.extend(b, run.sources[src], rows, step) for b, (src, rows) in zip(batches, group)]
        names = [t for b in batches for t in b["parts"]]
        adversarial = [t for t in names if run.adversarial is not None and t in run.adversarial.tasks]
        # one stacked input (adversarial methods perturb one embedding tensor), or segments of similar length;
        # under augmentation one segment per batch, so that its clean/noisy pairs keep their row positions
        segments = ([stack_sources(batches, run.pad_id, run.tasks)] if adversarial
                    else [stack_sources([b], run.pad_id, run.tasks) for b in batches] if run.augment is not None
                    else segment_sources(batches, run.pad_id, run.tasks))
        # parts: task -> (its rows' positions in its segment [n_t], its labels [n_t, ...])
        parts = {t: (pos.to(accelerator.device), labels.to(accelerator.device))
                 for _, seg_parts in segments for t, (pos, labels) in seg_parts.items()}
        last = g == len(groups) - 1
        # Only the last group of the window all-reduces gradients across processes.
        sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
        with sync:
            if adversarial:
                inputs = to_device(segments[0][0], accelerator.device)
                objective, clean = run.adversarial.objective(perturbable(accelerator, model, run, inputs, parts,
                                                                         adversarial))
            else:
                logits = model(segments=[{**to_device(inputs, accelerator.device), "tasks": list(seg_parts)}
                                         for inputs, seg_parts in segments])
                objective = clean = {t: run.tasks[t].loss(logits[t][pos], labels) for t, (pos, labels) in parts.items()}
                if run.distiller is not None:  # the teachers' soft targets join each task's objective
                    objective, clean = run.distiller.objective(objective, logits, parts, batches, segments)
                if run.mutual is not None:  # every peer's loss and its divergence to the other peers
                    objective, clean = run.mutual.objective(logits, parts, segments, unwrapped, step)
                if run.augment is not None:  # the divergence of noisy predictions from clean ones (consistency)
                    for b in batches:
                        objective = run.augment.objective(objective, logits, b)

            def backward(loss: torch.Tensor, **kwargs: Any) -> None:
                accelerator.backward(loss / len(groups), **kwargs)  # mean over the window's groups

            ctx = StepContext(backward=backward, shared_parameters=unwrapped.shared_parameters, step=step,
                              scale=1.0 / len(groups), synced=last or accelerator.num_processes == 1,
                              all_reduce_mean=lambda t: all_reduce_mean(accelerator, t), epoch=epoch,
                              last_layer_parameters=unwrapped.last_layer_parameters)
            run.weighting.backward(objective, ctx)
        for task, loss in clean.items():  # the clean loss: comparable with and without adversarial training
            seen.setdefault(task, []).append(float(loss.detach()))
    # mean over the window's groups: a NaN in any micro-batch stays NaN for the guard
    return {task: sum(v) / len(v) for task, v in seen.items()}


def clip_gradients(accelerator: Accelerator, model, run: Run, max_norm: float) -> torch.Tensor:
    """Clip the gradients to ``max_norm`` — each mutual-learning peer on its own, as if it trained alone; the
    hidden-state projections of distillation with the model — and return the largest norm (NaN if any is)."""
    groups = (run.mutual.parameter_groups(accelerator.unwrap_model(model)) if run.mutual is not None
              else [list(model.parameters())])
    if run.distiller is not None and run.distiller.parameters():
        groups[0] = groups[0] + run.distiller.parameters()
    norms = [torch.as_tensor(accelerator.clip_grad_norm_(g, max_norm), dtype=torch.float32) for g in groups]
    return torch.stack(norms).max()  # torch's max keeps a NaN (Python's max would drop one after a number)


def perturbable(accelerator: Accelerator, model, run: Run, inputs: dict[str, Any],
                parts: dict[str, tuple[torch.Tensor, torch.Tensor]], adversarial: list[str]) -> Perturbable:
    """The group's batch for an adversarial method: word embeddings looked up by the encoder's own module,
    the bare model for the ascent forwards, the training model (DDP, autocast) for the final one."""
    unwrapped = accelerator.unwrap_model(model)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    types = inputs.get("token_type_ids")
    types = torch.zeros_like(ids) if types is None else types

    def bare(embeds, m, tt, tasks):
        with accelerator.autocast():
            return unwrapped(None, m, tt, tasks=tasks, inputs_embeds=embeds)

    def trained(embeds, m, tt, tasks):
        return model(None, m, tt, tasks=tasks, inputs_embeds=embeds)

    return Perturbable(embeds=unwrapped.input_embeddings(ids), mask=mask, token_type_ids=types,
                       rows={t: pos for t, (pos, _) in parts.items()}, adversarial=adversarial,
                       labels={t: labels for t, (_, labels) in parts.items()},
                       tasks=run.tasks, bare_forward=bare, train_forward=trained)


def check_processes_agree(accelerator: Accelerator, model, run: Run) -> None:
    """Under several processes, every process must end with the same model and weighting state; a
    difference means some gradient was not averaged, and the run is refused rather than silently wrong."""
    if accelerator.num_processes == 1:
        return
    params = list(accelerator.unwrap_model(model).parameters())
    if run.distiller is not None:
        params += run.distiller.parameters()
    digest = [float(sum(p.detach().double().sum() for p in params)),
              json.dumps(run.weighting.state_dict(), sort_keys=True)]
    digests = gather_object([digest])
    if any(d != digests[0] for d in digests):
        raise RuntimeError(f"the {accelerator.num_processes} processes ended with different models "
                           f"(parameter sums {[d[0] for d in digests]}); weighting method "
                           f"'{run.config.train.weighting.method}' did not keep them in step")


def hooks_stop(accelerator: Accelerator, hooks: Sequence[Any], step: int, metrics: dict[str, float]) -> bool:
    """Whether a hook's ``after_eval`` asks to stop — on any process, so that every process stops together."""
    want = any([h.after_eval(step, metrics) for h in hooks if hasattr(h, "after_eval")])
    if accelerator.num_processes == 1:
        return want
    flag = torch.tensor([float(want)], device=accelerator.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def all_reduce_mean(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over processes (itself in a single process)."""
    if accelerator.num_processes == 1:
        return tensor
    out = tensor.detach().clone()
    torch.distributed.all_reduce(out)
    return out / accelerator.num_processes


def validate_and_save(accelerator: Accelerator, model, run: Run, state: TrainerState, early: EarlyStopping,
                      logger: RunLogger, bar) -> bool:
    """Validate, update early stopping, keep ``best/``, write ``last/``. Returns True to stop training."""
    tc = run.config.train
    unwrapped = accelerator.unwrap_model(model)

    def evaluate(m) -> dict[str, Any]:
        return evaluate_split(m, run.data, "validation", tc.eval_batch_size, run.pad_id, accelerator.device,
                              tc.precision, gather=gather_object, rank=accelerator.process_index,
                              world=accelerator.num_processes)

    # mutual learning: every peer and their ensemble are scored; the results are the best peer's; meta-learning:
    # few-shot validation episodes (the task heads are not trained)
    if run.meta is not None:
        results = run.meta.validate(unwrapped, accelerator.device, accelerator.autocast)
    elif run.mutual is not None:
        results = run.mutual.validate(unwrapped, evaluate, tc.early_stopping.metric)
    else:
        results = evaluate(unwrapped)
    flat = flat_metrics(results)
    state.last_eval = flat
    metric = tc.early_stopping.metric
    improved = early.update(flat.get(metric, float("nan")), state.global_step) if flat else True
    logger.log("eval", state.global_step, {**flat, "best": early.best}, epoch=state.epoch)
    if accelerator.is_main_process:
        mains = {f"{n}.{t.main_metric}" for n, t in run.tasks.items()}  # e.g. retrieval's ndcg@10
        shown = "  ".join(f"{k}={v:.4f}" for k, v in flat.items() if k in ("mean", "loss") or k.endswith(".mean")
                          or k in mains
                          or (k.endswith(("accuracy", ".f1", "pearson")) and not k.startswith("ensemble.")))
        bar.write(f"step {state.global_step} validation: {shown}" + ("  (best)" if improved else ""))
        if improved:
            save_checkpoint(Path(tc.output_dir) / "best", run.export(unwrapped), run.tokenizer, run.config, run.tasks)
    save_training_state(accelerator, model, run, state, early)
    return early.should_stop


def save_training_state(accelerator: Accelerator, model, run: Run, state: TrainerState,
                        early: EarlyStopping) -> None:
    rngs = gather_object([rng_states()]) if accelerator.num_processes > 1 else [rng_states()]
    if accelerator.is_main_process:
        save_last(Path(run.config.train.output_dir) / "last", run, accelerator.unwrap_model(model), state, early,
                  rngs)
    accelerator.wait_for_everyone()


def log_train(logger: RunLogger, bar, run: Run, running: dict[str, list[float]], step: int,
              epoch: float) -> None:
    losses = {f"loss/{t}": sum(v) / len(v) for t, v in running.items() if v}
    weights = {f"weight/{t}": w for t, w in run.weighting.weights().items()}
    logger.log("train", step, {**losses, **weights, "lr": run.scheduler.get_last_lr()[0]}, epoch=epoch)
    bar.set_postfix({k.split("/", 1)[1]: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
    running.clear()
