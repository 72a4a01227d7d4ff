"""The student's encoder: the teacher's with layers dropped (DistilBERT-style initialisation), or any encoder."""

from __future__ import annotations

import copy

import torch.nn as nn

from polytask.catalog.encoders import resolve_encoder
from polytask.config import StudentConfig
from polytask.distill.teacher import Teachers
from polytask.errors import NotSupportedError, UserError
from polytask.model.adapters import is_peft
from polytask.model.encoder import encoder_layers, load_encoder, load_tokenizer


def layer_choice(layers: int | list[int], available: int, key: str = "train.distill.student.layers") -> list[int]:
    """The indices of the layers kept: ``N`` -> N evenly spaced, the first included (6 -> 3 keeps 0, 2, 4, as
    DistilBERT keeps every other layer of its teacher); a list is taken as it is."""
    if isinstance(layers, int):
        if layers > available:
            raise UserError(f"config key '{key}': a student of {layers} layers from an encoder of {available}; a "
                            f"student cannot have more layers than its teacher (allowed: 1 to {available})")
        return [i * available // layers for i in range(layers)]
    if max(layers) >= available:
        raise UserError(f"config key '{key}': layer {max(layers)} does not exist in an encoder of {available} layers "
                        f"(indices 0 to {available - 1})")
    return list(layers)


def keep_layers(encoder: nn.Module, keep: list[int]) -> None:
    """Cut ``encoder``'s layer stack down to the layers ``keep`` (in place); its config follows, so a checkpoint
    of the student rebuilds with this many layers."""
    stack = encoder_layers(encoder)
    kept = nn.ModuleList(stack[i] for i in keep)
    for module in encoder.modules():
        for name, child in module.named_children():
            if child is stack:
                setattr(module, name, kept)
    encoder.config.num_hidden_layers = len(keep)
    layer_types = getattr(encoder.config, "layer_types", None)  # some architectures list one type per layer
    if isinstance(layer_types, list) and len(layer_types) > max(keep):
        encoder.config.layer_types = [layer_types[i] for i in keep]
    for i, layer in enumerate(kept):  # attention modules that know their index (caches) get the new one
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def build_student(cfg: StudentConfig, teachers: Teachers):
    """``(encoder, tokenizer)`` of the student. Without ``encoder``: a copy of the first teacher's fine-tuned
    encoder and its tokenizer; ``layers`` then keeps some of its layers. The student may not be deeper than its
    shallowest teacher."""
    if cfg.encoder is not None:
        folder = resolve_encoder(cfg.encoder)
        encoder, tokenizer = load_encoder(folder), load_tokenizer(folder)
    else:
        first = teachers.runs[0]
        encoder, tokenizer = copy.deepcopy(first.model.encoder), first.tokenizer
        if is_peft(encoder):  # a LoRA / IA3 teacher: its adapter folded into the student's plain encoder
            pc = first.config.model.peft
            if pc.method == "prefix" or pc.sharing == "per_task":
                raise NotSupportedError(f"train.distill.student: the teacher {first.folder} was trained with "
                                        f"{pc.method} ({pc.sharing}), which cannot be folded into one plain encoder; "
                                        "give train.distill.student.encoder")
            encoder = encoder.merge_and_unload()
        encoder.requires_grad_(True)
    if cfg.layers is not None:
        keep_layers(encoder, layer_choice(cfg.layers, len(encoder_layers(encoder))))
    depth, teacher_depth = len(encoder_layers(encoder)), teachers.num_layers
    if depth > teacher_depth:
        raise UserError(f"train.distill.student: the student has {depth} layers, more than its teacher's "
                        f"{teacher_depth}; set train.distill.student.layers to at most {teacher_depth}")
    return encoder, tokenizer
