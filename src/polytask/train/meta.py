"""The meta-learning step: where ``train.meta`` replaces the loop's ``train_step``.

One optimizer step of a meta run: the step's episodes (``train.meta.tasks_per_episode`` x ``train.grad_accum``
items of the ``EpisodePlan``) each run the inner loop on the bare model, without gradient synchronisation
(each process adapts to its own episodes); the outer update's meta-gradient (Reptile: ``θ - θ'``; FOMAML: the
query gradient at ``θ'``), averaged over the step's episodes and then over processes, is written into the
encoder's ``.grad``. The loop then clips, steps the optimizer and the schedule, logs, validates and saves as for
any run — so precision, accumulation, ``--resume`` and DDP are the loop's own.
"""

from __future__ import annotations

from accelerate import Accelerator


def meta_step(accelerator: Accelerator, model, run, window: list[tuple[str, list[int]]], step: int,
              epoch: int = 0) -> dict[str, float]:
    """Write the meta-gradient of ``window``'s episodes into the encoder's gradients; returns each task's mean
    last inner-loop (support) loss, and ``<task>_query`` losses under FOMAML."""
    from polytask.train.loop import all_reduce_mean

    unwrapped = accelerator.unwrap_model(model)
    with accelerator.no_sync(model):  # the inner loops are this process's own: no all-reduce of their backward
        grads, losses = run.meta.step(unwrapped, window, accelerator.device, accelerator.autocast)
    params = [p for p in unwrapped.encoder.parameters() if p.requires_grad]
    for p, g in zip(params, grads):
        p.grad = all_reduce_mean(accelerator, g).to(p.dtype)  # the outer update averaged over processes
    return losses
