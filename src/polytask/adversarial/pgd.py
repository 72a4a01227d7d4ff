"""Adversarial method PGD: see the class docstring."""

from __future__ import annotations

from polytask.adversarial.base import ADVERSARIAL, Adversarial, Perturbable


@ADVERSARIAL.register("pgd")
class PGD(Adversarial):
    """PGD — projected gradient descent adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu 2018,
    "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR), on word embeddings.

    ``steps`` ascent steps from ``r = 0``: ``r <- Proj_{||r|| <= epsilon}(r + alpha * g / ||g||)``; the task trains
    on ``L(x) + L(x + r)`` (the clean term keeps clean accuracy, as the NLP variants of PGD do).

    Example::

        train:
          adversarial: {method: pgd, epsilon: 1.0, alpha: 0.3, steps: 3}
    """

    options = {"epsilon": 1.0, "alpha": 0.3, "steps": 3}
    integer_options = ("steps",)

    def objective(self, p: Perturbable):
        r = p.zeros()
        for _ in range(self.opts["steps"]):
            r = p.project(r + self.opts["alpha"] * p.normalize(self.ascend(p, r)), self.opts["epsilon"])
        clean, (adv,) = p.final([r])
        losses = {t: p.loss(t, clean[t]) for t in clean}
        objective = {t: loss + (p.loss(t, adv[t]) if t in adv else 0.0) for t, loss in losses.items()}
        return objective, losses
