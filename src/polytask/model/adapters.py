"""Parameter-efficient fine-tuning of the shared encoder (``model.peft``), built on the ``peft`` library.

The encoder is wrapped by ``peft`` (LoRA, IA³ or prefix tuning); its own weights are frozen and only the adapter
trains, while the task heads — which live outside the wrapped encoder, in ``MultiTaskModel.heads`` — always
train. With ``sharing: per_task`` each task has its own adapter (named after the task) over the one frozen
encoder, and ``MultiTaskModel`` runs one encoder pass per adapter.

A PEFT checkpoint holds only what trained (the adapter(s) and the heads) plus a fingerprint of the frozen
encoder it was trained on; loading rebuilds the encoder from ``model.encoder``, checks the fingerprint and
refuses a file that lacks any trained weight (a head left out of the saved modules would otherwise come back
random: the classic PEFT trap).

Example::

    cfg = load_config("examples/atis.yaml", ["model.peft.method=lora", "model.peft.r=8"])
    polytask.train(cfg)   # prints the trainable share of the encoder and the checkpoint size
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable

import torch
import torch.nn as nn

from polytask.config import PeftConfig
from polytask.errors import NotSupportedError, UserError

SHARED = "shared"  # the adapter's name under sharing: shared (per_task adapters are named after their tasks)

# LoRA's default targets per architecture (Hugging Face model_type): every linear layer of each transformer block
# (attention query/key/value/output and both feed-forward layers) — not the pooler, which no head reads. Other
# architectures take peft's own default (query and value for most encoders).
LORA_TARGETS = {
    **{t: ["query", "key", "value", "output.dense", "intermediate.dense"]
       for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "output.dense", "intermediate.dense"],
}

# transformers warns on every prefix-tuned call that encoders' past_key_values argument is being renamed; peft
# passes it (it is how prefix tuning reaches each layer), so the notice says nothing to a polytask user
warnings.filterwarnings("ignore", message=r".*past_key_values.* is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)


def adapter_names(cfg: PeftConfig, tasks: Iterable[str]) -> dict[str, str]:
    """Task -> the name of the adapter it runs through."""
    return {t: (t if cfg.sharing == "per_task" else SHARED) for t in tasks}


def _peft_config(cfg: PeftConfig, encoder: nn.Module, max_length: int | None = None):
    import peft

    model_type = getattr(encoder.config, "model_type", "")
    if cfg.method == "lora":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        targets = cfg.target_modules or LORA_TARGETS.get(model_type) or PEFT_DEFAULTS.get(model_type)
        if not targets:
            raise UserError(f"config key 'model.peft.target_modules': no default for a {model_type!r} encoder; "
                            "name the linear layers to adapt, e.g. [query, value]")
        return peft.LoraConfig(task_type="FEATURE_EXTRACTION", r=cfg.r, lora_alpha=cfg.alpha,
                               lora_dropout=cfg.dropout, target_modules=list(targets))
    if cfg.method == "ia3":
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

        targets = cfg.target_modules or TARGETS.get(model_type)
        if not targets:
            raise UserError(f"config key 'model.peft.target_modules': no IA3 default for a {model_type!r} encoder; "
                            "name the layers to rescale, e.g. [key, value, output.dense]")
        ff = cfg.feedforward_modules if cfg.target_modules else FF.get(model_type, [])
        return peft.IA3Config(task_type="FEATURE_EXTRACTION", target_modules=list(targets),
                              feedforward_modules=list(ff or []))
    if cfg.method == "prefix":
        positions = getattr(encoder.config, "max_position_embeddings", None)
        if positions is not None and max_length is not None and max_length + cfg.num_virtual_tokens > positions:
            raise UserError(f"config key 'model.peft.num_virtual_tokens': {cfg.num_virtual_tokens} prefix tokens + "
                            f"model.max_length {max_length} exceed the encoder's {positions} positions (the "
                            "prefix shifts every token's position); lower one of them")
        return peft.PrefixTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=cfg.num_virtual_tokens,
                                       prefix_projection=cfg.projection)
    raise NotSupportedError(f"config key 'model.peft.method': {cfg.method!r} is not supported")


def wrap_encoder(encoder: nn.Module, cfg: PeftConfig, tasks: Iterable[str], max_length: int | None = None
                 ) -> nn.Module:
    """``encoder`` wrapped by peft with one adapter (``shared``) or one per task; its own weights frozen, every
    adapter trainable. The frozen weights' fingerprint is kept on the result (``polytask_base_fingerprint``)."""
    import peft

    names = list(dict.fromkeys(adapter_names(cfg, tasks).values()))
    base = {id(p) for p in encoder.parameters()}
    drawn = getattr(encoder, "polytask_initialised", frozenset())  # randomly initialised at load: not hashed
    fingerprint = weights_fingerprint(p for n, p in encoder.named_parameters() if n not in drawn)
    try:
        wrapped = peft.get_peft_model(encoder, _peft_config(cfg, encoder, max_length), adapter_name=names[0])
        for name in names[1:]:
            wrapped.add_adapter(name, _peft_config(cfg, encoder, max_length))
    except ValueError as e:  # peft's own checks: a target module that does not exist, a layer it cannot adapt
        raise UserError(f"config key 'model.peft': {str(e).splitlines()[0]}") from None
    # peft leaves only the active adapter trainable; every adapter trains here (each on its own task's batches)
    for p in wrapped.parameters():
        p.requires_grad_(id(p) not in base)
    wrapped.polytask_base_fingerprint = fingerprint
    # the frozen encoder's own weights, by their names inside the wrapper: what a checkpoint leaves out
    wrapped.polytask_base_names = frozenset(n for n, p in wrapped.named_parameters() if id(p) in base)
    activate(wrapped, names[0])
    return wrapped


def is_peft(encoder: nn.Module) -> bool:
    return hasattr(encoder, "peft_config")


def activate(encoder: nn.Module, name: str) -> None:
    """Route the next forward through adapter ``name``. Unlike peft's ``set_adapter``, no parameter's
    ``requires_grad`` changes: under per-task adapters one step may run several adapters before its backward."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if name not in encoder.peft_config:
        raise UserError(f"no adapter {name!r} in this model; it has: {', '.join(encoder.peft_config)}")
    if encoder.peft_config[name].is_prompt_learning:
        encoder.active_adapter = name
        return
    for module in encoder.modules():
        if isinstance(module, BaseTunerLayer):
            module._active_adapter = [name]
    encoder.base_model.active_adapter = name


def weights_fingerprint(params: Iterable[torch.Tensor]) -> str:
    """SHA-256 over the bytes of ``params`` in order: which frozen encoder an adapter was trained on (the weights
    read from its folder; ones drawn at random because the folder lacks them, such as a pooler no head reads, are
    left out by the caller)."""
    h = hashlib.sha256()
    for p in params:
        t = p.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def frozen_fingerprint(encoder: nn.Module) -> str:
    """The fingerprint of a wrapped encoder's own weights (what ``wrap_encoder`` recorded)."""
    return encoder.polytask_base_fingerprint


def adapter_names_in(model: nn.Module) -> list[str]:
    """Names (in ``model``) of what a PEFT checkpoint holds: every head parameter and every encoder parameter the
    adapters added — whether or not it trains in this run (``continual.method: freeze`` freezes old ones)."""
    base = model.encoder.polytask_base_names
    return [n for n, _ in model.named_parameters()
            if n.startswith("heads.") or (n.startswith("encoder.") and n[len("encoder."):] not in base)]


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a PEFT checkpoint holds (``adapter_names_in``), as tensors."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().contiguous() for n in adapter_names_in(model)}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of ``model`` (a MultiTaskModel): the encoder's, its trainable share, the heads'."""
    enc = list(model.encoder.named_parameters())
    base = getattr(model.encoder, "polytask_base_names", None)
    return {"encoder": sum(p.numel() for _, p in enc),
            "encoder_trainable": sum(p.numel() for _, p in enc if p.requires_grad),
            "adapter": sum(p.numel() for n, p in enc if n not in base) if base is not None else 0,
            "heads": sum(p.numel() for p in model.heads.parameters())}


def describe(model: nn.Module, cfg: PeftConfig) -> str:
    """One line for the start of training: what trains, and how big a checkpoint will be."""
    c = parameter_counts(model)
    base = c["encoder"] - c["adapter"]
    share = 100 * c["encoder_trainable"] / max(base, 1)
    trained = c["encoder_trainable"] + c["heads"]
    if cfg.enabled:
        params = dict(model.named_parameters())
        size = sum(params[n].numel() * params[n].element_size() for n in adapter_names_in(model))
        what = f"peft {cfg.method} ({cfg.sharing}): "
        note = " (the frozen encoder is not copied into it)"
    else:
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        what, note = "", ""
    return (f"{what}trainable parameters {trained:,} = encoder {c['encoder_trainable']:,} ({share:.2f}% of its "
            f"{base:,}) + heads {c['heads']:,}; a checkpoint holds {megabytes(size)} of weights{note}")


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def model_summary(model: nn.Module, config, weights_file) -> dict:
    """What a report says of a loaded checkpoint's model: how it was fine-tuned, its parameters, its file size."""
    from pathlib import Path

    c = parameter_counts(model)
    pc = config.model.peft
    if pc.enabled:
        base = c["encoder"] - c["adapter"]
        how = f"peft {pc.method} ({pc.sharing})"
    else:
        base = c["encoder"]
        how = "full fine-tuning" + (f" (model.freeze: {config.model.freeze})" if config.model.freeze != "none" else "")
    return {"fine_tuning": how, "encoder_parameters": base, "adapter_parameters": c["adapter"],
            "head_parameters": c["heads"],
            "checkpoint_bytes": Path(weights_file).stat().st_size if Path(weights_file).is_file() else None}


def summary_line(s: dict) -> str:
    size = "?" if s["checkpoint_bytes"] is None else megabytes(s["checkpoint_bytes"])
    share = 100 * s["adapter_parameters"] / max(s["encoder_parameters"], 1)
    adapter = f", adapter {s['adapter_parameters']:,} ({share:.2f}% of the encoder)" if s["adapter_parameters"] else ""
    return (f"{s['fine_tuning']}: encoder {s['encoder_parameters']:,} parameters{adapter}, heads "
            f"{s['head_parameters']:,}; checkpoint weights {size}")
