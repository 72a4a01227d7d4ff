"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

After the inner loop moved the encoder from ``θ`` to ``θ'`` on an episode, the meta-gradient is ``θ - θ'``: a
plain SGD step of size ε on it is Reptile's ``θ <- θ + ε (θ' - θ)``; the run's optimizer (AdamW at
``train.meta.meta_lr``) treats it as any gradient, as the paper suggests for Adam. No query set is read.
"""

from __future__ import annotations

from polytask.meta.base import META, OuterUpdate


@META.register("reptile")
class Reptile(OuterUpdate):
    """Meta-gradient ``θ - θ'`` per episode (mean over a step's episodes).

    Example::

        Reptile().gradient([torch.tensor([1.0])], [torch.tensor([0.5])], None)  # [tensor([0.5])]
    """

    needs_query = False

    def gradient(self, start, adapted, query_grads):
        return [s - a for s, a in zip(start, adapted)]
