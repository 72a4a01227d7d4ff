"""Noisy copies of the training rows, and a consistency term between clean and noisy predictions.

Embedding-space perturbations (FGM, PGD, FreeLB, SMART) do little against character-level noise: a typo changes
the tokens, not a small step in embedding space. Training on noisy copies does (data augmentation), and a
consistency term that pulls the noisy prediction toward the clean one does more (UDA, Xie et al. 2020; SMART's
smoothness term, Jiang et al. 2020, with a real perturbation of the text instead of a virtual one).

Each training batch gets, for every row with probability ``prob``, a noisy copy appended: one noise of
``train.augment.noise`` (those that apply to the row's language and task type, as in ``polytask robustness``)
drawn per row, hitting each word (or Chinese character) with probability ``rate``. Tags follow the words exactly
as the robustness suite realigns them; under joint batches every task of the row sees the same noisy text.
The draws depend only on ``(train.seed, step, source, row)``: a run, and a resumed run, see the same copies.

The copies are labelled rows like the others (the task loss covers clean and noisy rows). With ``consistency:
w > 0`` each task's objective also gets ``w ×`` the task type's divergence between the clean prediction (held
fixed: the target) and the noisy one — per example for sentence tasks, per word kept by the noise for word
tagging. Character-tagged tasks train on noisy copies but take no consistency term (their tokens do not map
one-to-one onto characters): the config is refused with a consistency weight for them.
"""

from __future__ import annotations

import random
import sys
import zlib
from typing import Any

import torch

from polytask.data.features import pad_inputs
from polytask.errors import NotSupportedError, UserError
from polytask.robustness.noise import applies
from polytask.robustness.runner import perturb_units, task_language
from polytask.tasks.base import IGNORE_INDEX


class NoiseAugmentation:
    """Noisy copies appended to each training batch (see the module doc).

    Built from ``train.augment`` (``noise``: names from the suite, ``rate``, ``prob``, ``consistency``,
    ``tasks``: the tasks whose rows get copies, default all), the tasks, their data and the sources of the
    run. ``extend(batch, source, rows, step)`` returns the batch with its copies; ``objective(objective,
    logits, batch)`` adds the consistency term. The model is never stored: logits are passed in.

    Example::

        train:
          augment: {noise: [typo_swap, typo_drop, typo_keyboard, casing], rate: 0.1, prob: 0.5, consistency: 1.0}
    """

    def __init__(self, cfg, tasks: dict[str, Any], data: dict[str, Any], sources: dict[str, Any], tokenizer,
                 max_length: int, seed: int):
        self.cfg, self.tasks, self.data, self.tokenizer = cfg, tasks, data, tokenizer
        self.max_length, self.seed = max_length, seed
        self.chosen = set(cfg.tasks or tasks)
        self.noises: dict[str, list[str]] = {}  # source -> the noises that apply to every chosen task it trains
        self.notes: list[str] = []
        self.drawn: dict[str, list[int]] = {}  # source -> [copies drawn, copies dropped] (joint rows that split)
        # per task: (Chinese text?, None | "words" | "chars" tagging), read once from its training rows
        self.kind = {t: (task_language(d.examples["train"]), _tagging(tasks[t], d.examples["train"]))
                     for t, d in data.items() if t in tasks}
        for s in sources.values():
            names = [t for t in s.tasks if t in self.chosen and s.split == "train"]
            if not names:
                continue
            usable = [n for n in cfg.noise if all(self._applies(n, t) for t in names)]
            if usable:
                self.noises[s.name] = usable
                dropped = [n for n in cfg.noise if n not in usable]
                if dropped:
                    self.notes.append(f"augment: {s.name} gets {', '.join(usable)} ({', '.join(dropped)} do not "
                                      "apply to its text)")
            elif cfg.tasks:
                raise UserError(f"config key 'train.augment.noise': none of {', '.join(cfg.noise)} applies to task "
                                f"'{names[0]}' ({self._kind(names[0])}); choose from the noises polytask robustness "
                                "uses for it")
            else:
                self.notes.append(f"augment: no noise of {', '.join(cfg.noise)} applies to {s.name} "
                                  f"({self._kind(s.tasks[0])}); it trains on clean rows only")
        if cfg.consistency > 0:
            chars = [t for s in self.noises for t in sources[s].tasks
                     if t in self.chosen and self.kind[t][1] == "chars"]
            if chars:
                raise NotSupportedError(f"train.augment.consistency with task '{chars[0]}' (character tagging) is "
                                        "not supported: its tokens do not map one-to-one onto characters; set "
                                        "train.augment.tasks to leave it out, or consistency: 0")

    def _applies(self, noise: str, task: str) -> bool:
        return applies(noise, *self.kind[task])

    def _kind(self, task: str) -> str:
        chinese, tagged = self.kind[task]
        return ("Chinese" if chinese else "English") + " text" + (f", {tagged} tagged" if tagged else "")

    def describe(self) -> list[str]:
        c = self.cfg
        return [f"augment: a noisy copy of each training row with probability {c.prob} ({', '.join(c.noise)}; "
                f"rate {c.rate})" + (f", consistency weight {c.consistency}" if c.consistency else "")] + self.notes

    # -- the copies ----------------------------------------------------------------------------------------
    def extend(self, batch: dict[str, Any], source, rows: list[int], step: int) -> dict[str, Any]:
        """``batch`` (from ``collate_source``) with the noisy copies of some of its rows appended, their labels
        in ``parts``, and ``batch["pairs"]``: per task, which clean and noisy outputs correspond (for the
        consistency term)."""
        noises = self.noises.get(source.name)
        if not noises or source.split != "train":
            return batch
        drawn = []  # (position of the clean row in the batch, {task: (noisy example, origin, feature index)})
        for k, r in enumerate(rows):
            rng = random.Random(zlib.crc32(f"{self.seed}:{step}:{source.name}:{r}".encode()))
            if rng.random() >= self.cfg.prob:
                continue
            noise, noise_seed = rng.choice(noises), rng.randrange(2 ** 31)
            made = {}
            for t in source.tasks:  # (a task left out by train.augment.tasks gets no label on the copy)
                i = source.index[t][r]
                if i >= 0 and t in self.chosen:
                    ex, origin = perturb_units(self.data[t].examples["train"][i], self.tasks[t], noise,
                                               self.cfg.rate, noise_seed, 0)
                    made[t] = (ex, origin, i)
            drawn.append((k, made))
        encoded: dict[str, list[dict[str, Any]]] = {}  # one tokenizer call per task for the batch's copies
        for t in source.tasks:
            mine = [made[t][0] for _, made in drawn if t in made]
            if mine:
                encoded[t] = self.tasks[t].encode(mine, self.tokenizer, self.max_length)
        copies = []  # (position of the clean row in the batch, {task: (feature, origin, clean feature)})
        seen = {t: 0 for t in encoded}
        for k, made in drawn:
            row, inputs = {}, set()
            for t, (_, origin, i) in made.items():
                feature = encoded[t][seen[t]]
                seen[t] += 1
                row[t] = (feature, origin, self.data[t].features["train"][i])
                inputs.add((tuple(feature["input_ids"]), tuple(feature.get("token_type_ids", ()))))
            if row and len(inputs) == 1:  # the tasks of a joint row must still read one input
                copies.append((k, row))
        self._count(source.name, len(drawn), len(drawn) - len(copies))
        if not copies:
            return batch
        pad_id = self.tokenizer.pad_token_id or 0
        extra = pad_inputs([next(iter(made.values()))[0] for _, made in copies], pad_id)  # the copies [n, T']
        n_clean, seq = batch["input_ids"].shape[0], max(batch["input_ids"].shape[1], extra["input_ids"].shape[1])
        out = dict(batch)
        for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("token_type_ids", 0)):
            a = torch.nn.functional.pad(batch[key], (0, seq - batch[key].shape[1]), value=value)
            b = torch.nn.functional.pad(extra[key], (0, seq - extra[key].shape[1]), value=value)
            out[key] = torch.cat([a, b])  # [B + n, T]: the clean rows, then their copies
        parts, pairs = {}, {}
        for t, (pos, labels) in batch["parts"].items():
            task = self.tasks[t]
            mine = [(j, made[t]) for j, (_, made) in enumerate(copies) if t in made]
            if task.level == "token" and labels.shape[1] < seq:  # clean token labels [n_t, T] to the new length
                labels = torch.nn.functional.pad(labels, (0, seq - labels.shape[1]), value=IGNORE_INDEX)
            if not mine:
                parts[t] = (pos, labels)
                continue
            noisy_labels = task.collate_labels([m[0]["labels"] for _, m in mine], seq)
            parts[t] = (torch.cat([pos, torch.tensor([n_clean + j for j, _ in mine], dtype=torch.long)]),
                        torch.cat([labels, noisy_labels]))
            clean_rows = [copies[j][0] for j, _ in mine]
            if task.level != "token":
                pairs[t] = (torch.tensor(clean_rows), torch.tensor([n_clean + j for j, _ in mine]))
            else:  # word w of the clean row <-> each noisy word that came from w (first sub-tokens)
                cr, ct, nr, nt = [], [], [], []
                for (j, (feature, origin, clean)), row in zip(mine, clean_rows):
                    for new, o in enumerate(origin or []):
                        if o is not None and o < len(clean["first_token"]) and new < len(feature["first_token"]):
                            cr.append(row)
                            ct.append(clean["first_token"][o])
                            nr.append(n_clean + j)
                            nt.append(feature["first_token"][new])
                if cr:
                    pairs[t] = tuple(torch.tensor(x) for x in (cr, ct, nr, nt))
        out["parts"], out["pairs"] = parts, pairs
        return out

    def _count(self, source: str, drawn: int, dropped: int) -> None:
        """Say once when most copies of a joint source are lost: its tasks tokenise the noisy text differently
        (e.g. a Chinese sentence task perturbed per character beside a word-list tagging task)."""
        seen = self.drawn.setdefault(source, [0, 0])
        before = seen[0]
        seen[0], seen[1] = seen[0] + drawn, seen[1] + dropped
        if before < 50 <= seen[0] and seen[1] * 2 > seen[0]:
            print(f"polytask: augment: {seen[1]} of the first {seen[0]} noisy copies of {source} were dropped: its "
                  "tasks read the noisy text differently; set train.augment.tasks to one of them", file=sys.stderr,
                  flush=True)

    # -- the consistency term ------------------------------------------------------------------------------
    def objective(self, objective: dict[str, torch.Tensor], logits: dict[str, torch.Tensor],
                  batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Each task's objective plus ``consistency ×`` the divergence of its noisy outputs from the clean ones
        (the clean side detached: it is the target)."""
        w = self.cfg.consistency
        if w <= 0 or not batch.get("pairs"):
            return objective
        out = dict(objective)
        for t, pair in batch["pairs"].items():
            if t not in out:
                continue
            task, x = self.tasks[t], logits[t]
            device = x.device
            if len(pair) == 2:  # sentence tasks: rows [n, C]
                clean, noisy = x[pair[0].to(device)], x[pair[1].to(device)]
                mask = torch.zeros(clean.shape[0], dtype=torch.long, device=device)
            else:  # word tagging: the matched first sub-tokens [P, C], as one sequence [1, P, C]
                cr, ct, nr, nt = (p.to(device) for p in pair)
                clean, noisy = x[cr, ct][None], x[nr, nt][None]
                mask = torch.zeros(clean.shape[:2], dtype=torch.long, device=device)
            out[t] = out[t] + w * task.divergence(clean.detach(), noisy, mask)
        return out


def _tagging(task, examples) -> str | None:
    """How a task tags: None (a sentence task), "words" (a word list per row) or "chars" (a string)."""
    if task.level != "token":
        return None
    return "words" if examples and isinstance(examples[0].text, list) else "chars"
