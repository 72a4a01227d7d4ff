"""Routing rules for a customer-service model: from one message's predictions (intent, slots, sentiment) to a
decision — which queue, what to ask when a required detail is missing, when to escalate to a person — with
the reason spelled out.

A rules file (YAML)::

    tasks: {intent: intent, slots: slots, sentiment: sentiment}   # the model's task playing each role
    queues:                          # intent label -> queue
      atis_flight: booking
      atis_airfare: fares
    default_queue: general           # an intent without a queue (optional; default "general")
    required_slots:                  # intent -> details it needs, in the order they are asked for
      atis_flight:
        - {slot: fromloc.city_name, ask: "Where are you flying from?"}
        - {slot: toloc.city_name, ask: "Where would you like to fly to?"}
    escalate:                        # negative messages go to a person first (optional)
      label: negative
      threshold: 0.6                 # the sentiment's probability at or above which to escalate
      queue: human_agent

The decision, in order: escalate when the sentiment task predicts ``escalate.label`` with probability ≥
``threshold``; else ask the question of the first required slot the message lacks; else route to the intent's
queue. Every role is optional but ``intent``. Labels and slot names are checked against the model, and every
problem in the file is reported with its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polytask.errors import UserError

ROLES = ("intent", "slots", "sentiment")


@dataclass
class Slot:
    slot: str
    ask: str


@dataclass
class RoutingRules:
    path: str
    tasks: dict[str, str]
    queues: dict[str, str]
    default_queue: str = "general"
    required_slots: dict[str, list[Slot]] = field(default_factory=dict)
    escalate_label: str | None = None
    escalate_threshold: float = 0.5
    escalate_queue: str = "human_agent"

    # -- reading ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, predictor=None) -> RoutingRules:
        """Read and check a rules file; with ``predictor``, its task names, labels and slots must be the model's."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"rules file not found: {path}")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 (byte {e.start})") from None
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        reader = _Reader(path)
        top = reader.mapping(root, "the file", {"tasks", "queues", "default_queue", "required_slots", "escalate"})
        if "tasks" not in top:
            raise UserError(f"{path}:1: missing 'tasks' (which of the model's tasks is the intent, the slots, the "
                            "sentiment)")
        tasks_node = top["tasks"]
        tasks = {role: reader.string(node, f"tasks.{role}")
                 for role, node in reader.mapping(tasks_node, "tasks", set(ROLES)).items()}
        if "intent" not in tasks:
            raise reader.error(tasks_node, "tasks: 'intent' is required (the task whose label picks the queue)")
        queues = {}
        if "queues" in top:
            queues = {label: reader.string(node, f"queues.{label}")
                      for label, node in reader.mapping(top["queues"], "queues").items()}
        rules = cls(path=str(path), tasks=tasks, queues=queues)
        if "default_queue" in top:
            rules.default_queue = reader.string(top["default_queue"], "default_queue")
        if "required_slots" in top:
            if "slots" not in tasks:
                raise reader.error(top["required_slots"], "required_slots needs tasks.slots (the slot-tagging task)")
            for intent, seq in reader.mapping(top["required_slots"], "required_slots").items():
                if not isinstance(seq, yaml.SequenceNode):
                    raise reader.error(seq, f"required_slots.{intent}: expected a list of {{slot: ..., ask: ...}}")
                slots = []
                for k, item in enumerate(seq.value):
                    entry = reader.mapping(item, f"required_slots.{intent}[{k}]", {"slot", "ask"})
                    for key in ("slot", "ask"):
                        if key not in entry:
                            raise reader.error(item, f"required_slots.{intent}[{k}]: missing '{key}'")
                    slots.append(Slot(reader.string(entry["slot"], f"required_slots.{intent}[{k}].slot"),
                                      reader.string(entry["ask"], f"required_slots.{intent}[{k}].ask")))
                rules.required_slots[intent] = slots
        if "escalate" in top:
            if "sentiment" not in tasks:
                raise reader.error(top["escalate"], "escalate needs tasks.sentiment (the sentiment task)")
            esc = reader.mapping(top["escalate"], "escalate", {"label", "threshold", "queue"})
            if "label" not in esc:
                raise reader.error(top["escalate"], "escalate: missing 'label' (the negative sentiment label)")
            rules.escalate_label = reader.string(esc["label"], "escalate.label")
            if "threshold" in esc:
                rules.escalate_threshold = reader.number(esc["threshold"], "escalate.threshold", 0.0, 1.0)
            if "queue" in esc:
                rules.escalate_queue = reader.string(esc["queue"], "escalate.queue")
        if predictor is not None:
            rules.check(predictor, reader, top)
        return rules

    def check(self, predictor, reader: _Reader, top: dict[str, yaml.Node]) -> None:
        """Task names, intent labels, slot names and the escalation label must exist in the model."""
        tasks = predictor.tasks
        roles = reader.mapping(top["tasks"], "tasks", set(ROLES))
        for role, name in self.tasks.items():
            if name not in tasks:
                raise reader.error(roles[role], f"tasks.{role}: the model has no task '{name}' (it has: "
                                                f"{', '.join(tasks)})")
        want = {"intent": ("classification", "multilabel_classification"), "slots": ("token_classification",),
                "sentiment": ("classification",)}
        for role, name in self.tasks.items():
            if tasks[name].type_name not in want[role]:
                raise reader.error(roles[role], f"tasks.{role}: task '{name}' is {tasks[name].type_name}, expected "
                                                f"{' or '.join(want[role])}")
        intents = set(tasks[self.tasks["intent"]].labels)
        for section in ("queues", "required_slots"):
            if section in top:
                for label, node in reader.mapping(top[section], section).items():
                    if label not in intents:
                        raise reader.error(node, f"{section}: '{label}' is not an intent of task "
                                                 f"'{self.tasks['intent']}' ({_few(intents)})")
        if self.required_slots:
            slot_task = tasks[self.tasks["slots"]]
            names = {t.split("-", 1)[1] for t in slot_task.labels if "-" in t}
            for intent, node in reader.mapping(top["required_slots"], "required_slots").items():
                for k, slot in enumerate(self.required_slots[intent]):
                    if slot.slot not in names:
                        raise reader.error(node.value[k], f"required_slots.{intent}[{k}].slot: '{slot.slot}' is not "
                                                          f"a slot of task '{self.tasks['slots']}' ({_few(names)})")
        if self.escalate_label is not None:
            labels = tasks[self.tasks["sentiment"]].labels
            if self.escalate_label not in labels:
                esc = reader.mapping(top["escalate"], "escalate")
                raise reader.error(esc["label"], f"escalate.label: '{self.escalate_label}' is not a label of task "
                                                 f"'{self.tasks['sentiment']}' ({', '.join(labels)})")

    # -- deciding -----------------------------------------------------------------------------------------------
    def decide(self, prediction: dict[str, Any]) -> dict[str, Any]:
        """``{"action": "escalate" | "ask" | "route", "queue", "intent", "question"?, "missing"?, "reason"}``."""
        intent, confidence = self._intent(prediction[self.tasks["intent"]])
        queue = self.queues.get(intent, self.default_queue)
        why_queue = (f"intent {intent} ({confidence:.2f}) -> queue {queue}" if intent in self.queues
                     else f"intent {intent} ({confidence:.2f}) has no queue -> {queue}")
        out: dict[str, Any] = {"intent": intent, "queue": queue}
        if self.escalate_label is not None:
            sentiment = prediction[self.tasks["sentiment"]]
            if sentiment["label"] == self.escalate_label and sentiment["score"] >= self.escalate_threshold:
                return {**out, "action": "escalate", "queue": self.escalate_queue,
                        "reason": f"sentiment {sentiment['label']} {sentiment['score']:.2f} >= "
                                  f"{self.escalate_threshold:g} -> escalate to {self.escalate_queue} ({why_queue})"}
        needed = self.required_slots.get(intent, [])
        if needed:
            found = {s["label"] for s in prediction[self.tasks["slots"]]["spans"]}
            missing = [s for s in needed if s.slot not in found]
            if missing:
                return {**out, "action": "ask", "question": missing[0].ask, "missing": [s.slot for s in missing],
                        "reason": f"{why_queue}; missing {', '.join(s.slot for s in missing)} -> ask"}
        return {**out, "action": "route", "reason": why_queue + ("; every required slot found" if needed else "")}

    @staticmethod
    def _intent(pred: dict[str, Any]) -> tuple[str, float]:
        if "labels" in pred:  # multi-label: the most probable label
            label = pred["labels"][0]
            return label, float(pred["scores"][label])
        return pred["label"], float(pred["score"])

    def tasks_needed(self) -> list[str]:
        return list(dict.fromkeys(self.tasks.values()))


class _Reader:
    """Checks a composed YAML tree, naming the line of whatever is wrong."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, node: yaml.Node, message: str) -> UserError:
        return UserError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def mapping(self, node: yaml.Node | None, what: str, allowed: set[str] | None = None) -> dict[str, yaml.Node]:
        if node is None:
            raise UserError(f"{self.path}:1: the rules file is empty")
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what}: expected a mapping (key: value lines)")
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"{what}: keys must be plain names")
            if allowed is not None and key.value not in allowed:
                raise self.error(key, f"{what}: unknown key '{key.value}' (expected one of: "
                                      f"{', '.join(sorted(allowed))})")
            if key.value in out:
                raise self.error(key, f"{what}: '{key.value}' is given twice")
            out[key.value] = value
        return out

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or not node.value.strip():
            raise self.error(node, f"{what}: expected a non-empty string")
        return node.value

    def number(self, node: yaml.Node, what: str, low: float, high: float) -> float:
        try:
            value = float(node.value) if isinstance(node, yaml.ScalarNode) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise self.error(node, f"{what}: expected a number in [{low:g}, {high:g}], got "
                                   f"{getattr(node, 'value', '?')!r}")
        return value


def _few(names) -> str:
    names = sorted(names)
    return "e.g. " + ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def route(predictor, rules: RoutingRules, records: list[dict[str, Any]], batch_size: int = 32,
          where: list[str] | None = None) -> list[dict[str, Any]]:
    """Each record's predictions (the rules' tasks, one encoder pass) plus ``"route"``: the decision."""
    preds = predictor.predict(records, tasks=rules.tasks_needed(), batch_size=batch_size, where=where)
    return [{**p, "route": rules.decide(p)} for p in preds]
