"""Adversarial method SMART: see the class docstring."""

from __future__ import annotations

import torch

from polytask.adversarial.base import ADVERSARIAL, Adversarial, Perturbable


@ADVERSARIAL.register("smart")
class SMART(Adversarial):
    """SMART — smoothness-inducing adversarial regularisation (Jiang, He, Chen, Liu, Gao & Zhao 2020, "SMART:
    Robust and Efficient Fine-Tuning for Pre-trained Natural Language Models through Principled Regularized
    Optimization", ACL).

    The task trains on ``L(x) + weight * D(f(x + r), f(x))`` where ``r`` starts as Gaussian noise (``sigma``) and
    takes ``steps`` normalised ascent steps of size ``step_size`` on the divergence, projected onto the ball of
    radius ``epsilon``. ``D`` suits each head (``TaskType.divergence``): symmetric KL of the softmax for
    classification and tagging (per labelled token), of per-label Bernoulli outputs for multi-label, squared
    error for regression. The term needs no labels beyond the token mask.

    Two deliberate differences from the paper: the perturbation is measured per example in L2 like the other
    adversarial methods (the paper uses an l-inf ball with epsilon 1e-5, at which the term is negligible for
    these encoders; set ``epsilon``, ``step_size`` and ``sigma`` to taste), and the paper's second component,
    Bregman proximal point optimisation (a momentum teacher), is not implemented.

    Example::

        train:
          adversarial: {method: smart, weight: 1.0, epsilon: 0.15}

    Default ``epsilon`` 0.15: the best of a 10-trial ``polytask tune`` study on ATIS with the noisy-validation
    objective (every epsilon up to 0.3 scored within 0.002 of it; 0.8 and above cost accuracy).
    """

    options = {"weight": 1.0, "epsilon": 0.15, "step_size": 1.0, "sigma": 1.0e-3, "steps": 1}
    integer_options = ("steps",)

    def objective(self, p: Perturbable):
        r = p.normal(self.opts["sigma"])
        with torch.no_grad():
            target = p.ascent([None])[0]  # f(x), the fixed point the ascent moves away from
        for _ in range(self.opts["steps"]):
            r = r.detach().requires_grad_(True)
            noisy = p.ascent([r])[0]
            div = sum(p.divergence(t, noisy[t], target[t]) for t in p.adversarial)
            (g,) = torch.autograd.grad(div, r)
            r = p.project(r.detach() + self.opts["step_size"] * p.normalize(g), self.opts["epsilon"])
        clean, (adv,) = p.final([r])
        losses = {t: p.loss(t, clean[t]) for t in clean}
        objective = {t: loss + (self.opts["weight"] * p.divergence(t, adv[t], clean[t]) if t in adv else 0.0)
                     for t, loss in losses.items()}
        return objective, losses
