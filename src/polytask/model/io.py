"""Checkpoint folders: safetensors weights + JSON, written atomically, loaded without pickle.

A checkpoint folder holds:

- ``model.safetensors`` — encoder and heads (one state dict, keys ``encoder.*`` and ``heads.*``)
- ``config.json`` — the encoder's Hugging Face config (the architecture is rebuilt from it)
- the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ...)
- ``polytask.json`` — polytask version, the resolved run config, and each task's type and label list
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from polytask.config import Config, upgrade_saved
from polytask.errors import UserError
from polytask.model.encoder import load_encoder, load_tokenizer
from polytask.model.multitask import MultiTaskModel, build_model
from polytask.tasks import TaskType, build_task
from polytask.version import __version__

META_FILE = "polytask.json"
WEIGHTS_FILE = "model.safetensors"


def write_atomically(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder, then swap it in: a crash never leaves a half-written ``folder``.

    The old folder is renamed aside before the new one is renamed into place and deleted after; if a crash
    hits between the two renames, ``recover`` puts the old one back.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def recover(folder: str | Path) -> None:
    """Undo an interrupted swap of ``write_atomically``: bring back ``.NAME.old`` when ``NAME`` is missing."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.exists():
        os.replace(old, folder)


def _fsync_tree(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def fill_model_folder(folder: Path, model: MultiTaskModel, tokenizer, config: Config,
                      tasks: dict[str, TaskType]) -> None:
    """Write the loadable part of a checkpoint into an (empty) folder. Under ``model.peft`` the weights file holds
    only what trained (adapters and heads) and the metadata the frozen encoder's fingerprint."""
    meta = {"polytask_version": __version__, "config": config.to_dict(),
            "tasks": {name: t.spec() for name, t in tasks.items()}}
    if config.model.peft.enabled:
        import peft

        from polytask.model.adapters import frozen_fingerprint, trained_state

        save_file(trained_state(model), str(folder / WEIGHTS_FILE))  # every head and adapter, trained or frozen
        meta["peft"] = {"base_fingerprint": frozen_fingerprint(model.encoder), "peft_version": peft.__version__}
    else:
        save_model(model, str(folder / WEIGHTS_FILE))
    model.encoder.config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    for task in tasks.values():
        task.save_files(folder)  # e.g. a retrieval task's corpus
    write_json(folder / META_FILE, meta)


def load_weights(model: MultiTaskModel, path: Path, config: Config) -> None:
    """Load a checkpoint's weights file into ``model`` (built from the same config). A PEFT file must hold every
    adapter and head parameter and nothing else."""
    if not config.model.peft.enabled:
        load_model(model, str(path))
        return
    from polytask.model.adapters import adapter_names_in

    state = load_file(str(path))
    trainable = set(adapter_names_in(model))
    missing, unexpected = sorted(trainable - set(state)), sorted(set(state) - trainable)
    if missing:
        heads = sorted({k.split(".")[1] for k in missing if k.startswith("heads.")})
        what = f"the head(s) of {', '.join(heads)}" if heads else f"adapter weights such as {missing[0]}"
        raise UserError(f"{path} lacks {what} ({len(missing)} trained tensor(s) missing): loading it would leave "
                        "them randomly initialised; the checkpoint is incomplete")
    if unexpected:
        raise UserError(f"{path} holds weights this model does not have ({unexpected[0]}, ...): it was written "
                        "for other PEFT settings")
    model.load_state_dict(state, strict=False)


def save_checkpoint(folder: str | Path, model: MultiTaskModel, tokenizer, config: Config,
                    tasks: dict[str, TaskType]) -> Path:
    return write_atomically(folder, lambda tmp: fill_model_folder(tmp, model, tokenizer, config, tasks))


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's ``polytask.json``, its config read as this version reads a saved one (``upgrade_saved``)."""
    folder = Path(folder)
    recover(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{folder} is not a polytask checkpoint (no {META_FILE}); "
                        "give a run folder's best/ or last/ checkpoint")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path}: unreadable ({e})") from None
    return {**meta, "config": upgrade_saved(meta["config"])} if isinstance(meta, dict) and "config" in meta else meta


def load_parts(folder: str | Path) -> tuple[dict[str, Any], Config, dict[str, TaskType], Any]:
    """``(meta, config, tasks, tokenizer)`` of a folder with ``polytask.json`` and tokenizer files: a checkpoint,
    or an ONNX export."""
    folder = Path(folder)
    meta = read_meta(folder)
    config = Config.from_dict(meta["config"])
    tasks = {name: build_task(name, config.tasks[name], spec["labels"]) for name, spec in meta["tasks"].items()}
    for name, spec in meta["tasks"].items():
        tasks[name].load_spec(spec)
        tasks[name].load_files(folder)
    return meta, config, tasks, load_tokenizer(folder)


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"):
    """Rebuild ``(config, tasks, tokenizer, model)`` from a checkpoint folder (no pickle involved)."""
    folder = Path(folder)
    meta, config, tasks, tokenizer = load_parts(folder)
    if config.model.peft.enabled:  # the frozen encoder from where it was trained from, then the adapters + heads
        model = _load_peft(folder, meta, config, tasks)
    else:
        encoder = load_encoder(folder, from_config_only=True)
        model = build_model(encoder, tasks, config.model)
        missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=False, device=str(device))
        if missing or unexpected:
            raise UserError(f"{folder / WEIGHTS_FILE} does not match the model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    model.to(device).eval()
    return config, tasks, tokenizer, model


def _load_peft(folder: Path, meta: dict[str, Any], config: Config, tasks: dict[str, TaskType]) -> MultiTaskModel:
    from polytask.catalog.encoders import resolve_encoder
    from polytask.model.adapters import frozen_fingerprint

    model = build_model(load_encoder(resolve_encoder(config.model.encoder)), tasks, config.model)
    want = meta.get("peft", {}).get("base_fingerprint")
    if want != frozen_fingerprint(model.encoder):
        raise UserError(f"{folder}: its adapters were trained on another copy of the encoder "
                        f"'{config.model.encoder}' than the one found here (the frozen weights differ); load it where "
                        "that encoder is, or export a merged checkpoint there (polytask export RUN --merge)")
    load_weights(model, folder / WEIGHTS_FILE, config)
    return model
