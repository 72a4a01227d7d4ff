"""Adversarial method FGM: see the class docstring."""

from __future__ import annotations

from polytask.adversarial.base import ADVERSARIAL, Adversarial, Perturbable


@ADVERSARIAL.register("fgm")
class FGM(Adversarial):
    """FGM — the fast gradient method on word embeddings (Miyato, Dai & Goodfellow 2017, "Adversarial Training
    Methods for Semi-Supervised Text Classification", ICLR).

    One gradient step: ``r = epsilon * g / ||g||`` with ``g`` the gradient of the loss with respect to the
    example's word embeddings; the task trains on ``L(x) + L(x + r)``.

    Example::

        train:
          adversarial: {method: fgm, epsilon: 0.01, tasks: [intent]}

    Default ``epsilon`` 0.01: the best of a 10-trial ``polytask tune`` study on ATIS with the noisy-validation
    objective (``examples/tune/atis_adversarial.yaml``; 1.0, the earlier default, cost 4-8 points of clean
    accuracy). At that size FGM regularises — clean accuracy rises — rather than shrinking the noise drop.
    """

    options = {"epsilon": 0.01}

    def objective(self, p: Perturbable):
        r = self.opts["epsilon"] * p.normalize(self.ascend(p, p.zeros()))
        clean, (adv,) = p.final([r])
        losses = {t: p.loss(t, clean[t]) for t in clean}
        objective = {t: loss + (p.loss(t, adv[t]) if t in adv else 0.0) for t, loss in losses.items()}
        return objective, losses
