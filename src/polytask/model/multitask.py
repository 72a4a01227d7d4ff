"""The multi-task model: one shared encoder, one head per task, one forward for any subset of tasks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from polytask.tasks import TaskType


class MultiTaskModel(nn.Module):
    """A shared Hugging Face encoder with a dropout + linear head per task.

    Sequence-level heads read a pooled vector (``pooling``: masked mean of the last hidden states, or the
    first token); token-level heads read every position. ``forward`` runs the encoder once and returns the
    logits of each requested task: ``{task: [B, C]}`` or ``{task: [B, T, C]}`` for token tasks.

    Inputs: ``input_ids``, ``attention_mask`` and optional ``token_type_ids``, each ``[B, T]``;
    ``tasks``: names of the heads to run (default: all).

    Example::

        model = MultiTaskModel(encoder, {"intent": intent_task, "slots": slot_task})
        out = model(input_ids=ids, attention_mask=mask, tasks=["intent", "slots"])
        out["intent"].shape  # [B, num_intents]
    """

    def __init__(self, encoder: nn.Module, tasks: dict[str, TaskType], pooling: str = "mean",
                 dropout: float = 0.1, adapters: dict[str, str] | None = None):
        super().__init__()
        self.encoder = encoder
        # per-task PEFT adapters (task -> adapter name): tasks of one batch run one encoder pass per adapter
        self.adapters = adapters
        self.pooling = pooling
        self.levels = {name: t.level for name, t in tasks.items()}
        # tasks whose batches mix short and long rows by design (retrieval: long queries, short documents)
        self.mixed_lengths = {name for name, t in tasks.items() if t.expands_rows}
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: t.build_head(hidden, dropout) for name, t in tasks.items()})

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], attention_mask [B, T] -> [B, H]."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, tasks: Iterable[str] | None = None,
                inputs_embeds: torch.Tensor | None = None,
                segments: list[dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
        """Logits of ``tasks`` for one batch — or, with ``segments``, for several batches of different lengths
        in ONE call: each segment (``input_ids``, ``attention_mask``, ``token_type_ids``, ``tasks``) runs through
        the encoder padded to its own length, and the result holds every segment's tasks. One call means one
        DDP forward, so the step's single backward still synchronises every head (``sampling: all_tasks``)."""
        if segments is not None:
            out: dict[str, torch.Tensor] = {}
            for seg in segments:
                out.update(self.run_heads(seg["input_ids"], seg["attention_mask"], seg.get("token_type_ids"),
                                          seg["tasks"]))
            return out
        return self.run_heads(input_ids, attention_mask, token_type_ids, tasks, inputs_embeds)

    def run_heads(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                  token_type_ids: torch.Tensor | None = None, tasks: Iterable[str] | None = None,
                  inputs_embeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One batch through the encoder and the requested heads (what ``forward`` does per segment)."""
        kwargs = self.encoder_inputs(input_ids, attention_mask, token_type_ids, inputs_embeds)
        if self.adapters is None:
            names = list(self.heads) if tasks is None else list(tasks)
            groups = self.length_groups(attention_mask, names)
            if groups is not None:
                return self.pooled_heads(kwargs, attention_mask, groups, names)
            hidden = self.encoder(**kwargs).last_hidden_state  # [B, T, H]
            return self.heads_from_hidden(hidden, attention_mask, names)
        from polytask.model.adapters import activate

        groups: dict[str, list[str]] = {}
        for name in (list(self.heads) if tasks is None else tasks):
            groups.setdefault(self.adapters[name], []).append(name)
        out = {}
        for adapter, names in groups.items():  # one pass per adapter over the same inputs
            activate(self.encoder, adapter)
            out.update(self.heads_from_hidden(self.encoder(**kwargs).last_hidden_state, attention_mask, names))
        return out

    def length_groups(self, attention_mask: torch.Tensor, names: list[str]) -> list[tuple[torch.Tensor, int]] | None:
        """For a batch that mixes short and long rows by design (a retrieval batch: queries, then documents) and
        feeds sequence-level heads only: ``[(rows, length)]``, the rows no longer than half the padded length
        (trimmed to their longest) and the others — two encoder passes instead of padding every document to the
        longest query. None when the batch gains nothing from it."""
        if not self.mixed_lengths.intersection(names) or any(self.levels[n] == "token" for n in names):
            return None
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():  # (ONNX export: no data-dependent branch)
            return None
        lengths = attention_mask.sum(1)  # [B]
        width = attention_mask.shape[1]
        short = lengths <= width // 2
        if bool(short.all()) or not bool(short.any()):
            return None
        rows_short, rows_long = short.nonzero().squeeze(1), (~short).nonzero().squeeze(1)
        return [(rows_short, int(lengths[rows_short].max())), (rows_long, width)]

    def pooled_heads(self, kwargs: dict[str, torch.Tensor], attention_mask: torch.Tensor,
                     groups: list[tuple[torch.Tensor, int]], names: list[str]) -> dict[str, torch.Tensor]:
        """Sequence-level heads over a batch encoded in ``groups`` of rows, each padded only to its own length;
        the pooled vectors go back to the batch's row order."""
        parts, order = [], []
        for rows, length in groups:
            sub = {k: v[rows, :length] for k, v in kwargs.items()}  # [b, length] (inputs_embeds [b, length, H])
            parts.append(self.pool(self.encoder(**sub).last_hidden_state, attention_mask[rows, :length]))
            order.append(rows)
        inverse = torch.empty_like(torch.cat(order))
        inverse[torch.cat(order)] = torch.arange(inverse.numel(), device=inverse.device)
        pooled = torch.cat(parts)[inverse]  # [B, H] in the batch's order
        return {name: self.heads[name](pooled) for name in names}

    def encoder_inputs(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
                       token_type_ids: torch.Tensor | None = None,
                       inputs_embeds: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The keyword arguments of the encoder's forward (token types only where the encoder has them)."""
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = token_type_ids
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        return kwargs

    def heads_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                          tasks: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """The requested heads' logits from the encoder's last hidden states ``hidden`` [B, T, H]."""
        names = list(self.heads) if tasks is None else list(tasks)
        pooled = None
        out = {}
        for name in names:
            if self.levels[name] == "token":
                out[name] = self.heads[name](hidden)  # [B, T, C]
            else:
                if pooled is None:
                    pooled = self.pool(hidden, attention_mask)  # [B, H]
                out[name] = self.heads[name](pooled)  # [B, C]
        return out

    def input_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The encoder's word embeddings of ``input_ids`` ([B, T] -> [B, T, H]), from its own
        ``get_input_embeddings()`` module; ``forward(..., inputs_embeds=...)`` takes them (perturbed) back."""
        return self.encoder.get_input_embeddings()(input_ids)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable encoder parameters (what gradient-surgery weighting methods act on)."""
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the encoder's top layer (GradNorm measures gradient norms there)."""
        from polytask.model.encoder import encoder_layers

        params = [p for p in encoder_layers(self.encoder)[-1].parameters() if p.requires_grad]
        return params or self.shared_parameters()[-2:]

    def head_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())


def build_model(encoder: nn.Module, tasks: dict[str, TaskType], model_cfg) -> MultiTaskModel:
    """The multi-task model of a ``model:`` config section over ``encoder``: wrapped by its PEFT adapter(s) first
    when ``model.peft`` is set (``polytask.model.adapters``)."""
    adapters = None
    if model_cfg.peft.enabled:
        from polytask.model.adapters import adapter_names, wrap_encoder

        encoder = wrap_encoder(encoder, model_cfg.peft, tasks, model_cfg.max_length)
        if model_cfg.peft.sharing == "per_task":
            adapters = adapter_names(model_cfg.peft, tasks)
    return MultiTaskModel(encoder, tasks, pooling=model_cfg.pooling, dropout=model_cfg.dropout, adapters=adapters)
