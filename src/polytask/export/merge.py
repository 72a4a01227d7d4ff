"""``polytask export RUN --merge``: fold a shared LoRA or IA³ adapter into the encoder's weights and write a
plain checkpoint — no peft at load time, no adapter overhead at inference, the same outputs within float
rounding. Per-task adapters cannot become one encoder, and prefix tuning adds tokens rather than changing weights,
so both are refused."""

from __future__ import annotations

import copy
from pathlib import Path

from polytask.config import PeftConfig
from polytask.errors import NotSupportedError, UserError
from polytask.model.io import save_checkpoint
from polytask.predict import Predictor


def export_merged(run: str | Path, output: str | Path, overwrite: bool = False) -> Path:
    """Write ``run``'s checkpoint (a run folder means its ``best/``) with its adapter merged into ``output``."""
    source = Predictor(run)
    output = Path(output)
    if output.resolve() in (source.path.resolve(), *source.path.resolve().parents):
        raise UserError(f"--output {output} would overwrite the run it is exported from; choose another folder")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
    pc = source.config.model.peft
    if not pc.enabled:
        raise UserError(f"{source.path} has no PEFT adapter to merge (model.peft is off): it is a plain checkpoint "
                        "already")
    if pc.method == "prefix":
        raise NotSupportedError("polytask export --merge: prefix tuning adds trained key/value prefixes rather than "
                                "changing weights, so it cannot be merged; load the run itself")
    if pc.sharing == "per_task":
        raise NotSupportedError("polytask export --merge: per-task adapters cannot be merged into one encoder (each "
                                "task would need its own copy); train with model.peft.sharing: shared to merge")
    model = source.model
    model.encoder = model.encoder.merge_and_unload()  # the base encoder with the adapter folded into its weights
    config = copy.deepcopy(source.config)
    config.model.peft = PeftConfig()
    save_checkpoint(output, model, source.tokenizer, config, source.tasks)
    return output
