"""Loading the shared encoder and its tokenizer from a local folder, and freezing parts of it."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from polytask.errors import UserError


def load_tokenizer(folder: str | Path):
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {folder}: {str(e).splitlines()[0]}") from None


def load_encoder(folder: str | Path, from_config_only: bool = False) -> nn.Module:
    """``AutoModel`` from a local folder; ``from_config_only`` builds the architecture without weights
    (used when a polytask checkpoint supplies them)."""
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        if from_config_only:
            return AutoModel.from_config(config)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "unused weights" notice for pooler-less folders is noise here
        hf_logging.disable_progress_bar()  # a bar for a 1-second load clutters the training output
        try:
            model, info = AutoModel.from_pretrained(str(folder), config=config, local_files_only=True,
                                                    output_loading_info=True)
            # weights the folder does not hold (a pooler, say) were drawn at random: not part of what it is
            model.polytask_initialised = frozenset(info.get("missing_keys", ()))
            return model
        finally:
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load an encoder from {folder}: {str(e).splitlines()[0]}") from None


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: the ModuleList whose length is ``num_hidden_layers``."""
    n = getattr(encoder.config, "num_hidden_layers", None)
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the layer stack of encoder {type(encoder).__name__} for model.freeze=bottom:N")


def embeddings_module(encoder: nn.Module) -> nn.Module:
    return getattr(encoder, "embeddings", None) or encoder.get_input_embeddings()


def apply_freeze(encoder: nn.Module, freeze: str) -> None:
    """``none`` | ``embeddings`` | ``bottom:N`` (embeddings + the first N layers) | ``encoder`` (all)."""
    if freeze == "none":
        return
    if freeze == "encoder":
        modules = [encoder]
    else:
        modules = [embeddings_module(encoder)]
        if freeze.startswith("bottom:"):
            n = int(freeze.split(":", 1)[1])
            layers = encoder_layers(encoder)
            if n > len(layers):
                raise UserError(f"config key 'model.freeze': bottom:{n} but the encoder has {len(layers)} layers")
            modules += list(layers[:n])
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
