"""Adversarial method FreeLB: see the class docstring."""

from __future__ import annotations

from polytask.adversarial.base import ADVERSARIAL, Adversarial, Perturbable


@ADVERSARIAL.register("freelb")
class FreeLB(Adversarial):
    """FreeLB — free large-batch adversarial training (Zhu, Cheng, Gan, Sun, Goldstein & Liu 2020, "FreeLB:
    Enhanced Adversarial Training for Natural Language Understanding", ICLR).

    From a small random start ``r_0`` (uniform, norm about ``init``), ``steps`` perturbations
    ``r_k = Proj_{||r|| <= epsilon}(r_{k-1} + alpha * g / ||g||)``; an adversarial task trains on the mean of its
    losses over all of them, ``1/K sum_k L(x + r_k)`` (no clean term, as in the paper). ``epsilon: 0`` leaves
    the perturbation unbounded. Cost: polytask finds each ``r_k`` with its own gradient pass and then runs the K
    perturbed copies in one forward and backward, so the paper's reuse of the ascent backward for the weights
    ("free") is not realised: about 2K-1 forwards per step (see BENCHMARKS.md for the measured cost).

    Example::

        train:
          adversarial: {method: freelb, epsilon: 0.01, alpha: 0.1, steps: 2, init: 0.1}
    """

    # epsilon: the best of a 10-trial `polytask tune` study on ATIS with the noisy-validation objective (epsilon and
    # alpha searched; examples/tune/atis_adversarial.yaml): as for FGM, the smallest perturbations scored best
    options = {"epsilon": 0.01, "alpha": 0.1, "steps": 2, "init": 0.1}
    integer_options = ("steps",)

    def objective(self, p: Perturbable):
        rs = [p.project(p.uniform(self.opts["init"]), self.opts["epsilon"])]
        for _ in range(self.opts["steps"] - 1):
            r = rs[-1]
            rs.append(p.project(r + self.opts["alpha"] * p.normalize(self.ascend(p, r)), self.opts["epsilon"]))
        clean, advs = p.final(rs)
        losses = {t: p.loss(t, clean[t]) for t in clean}
        objective = {t: (sum(p.loss(t, a[t]) for a in advs) / len(advs) if t in advs[0] else loss)
                     for t, loss in losses.items()}
        return objective, losses
