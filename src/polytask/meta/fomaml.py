"""First-order MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning"; the first-order
approximation of their section 5.2).

After the inner loop adapted the encoder to ``θ'`` on an episode's support rows, the meta-gradient is the
gradient of the query loss at ``θ'``, applied to ``θ`` — MAML's gradient without the second-order terms
through the inner steps.
"""

from __future__ import annotations

import torch

from polytask.meta.base import META, OuterUpdate


@META.register("fomaml")
class FOMAML(OuterUpdate):
    """Meta-gradient ``∇_θ' L_query(θ')`` per episode (mean over a step's episodes); parameters the query loss
    does not reach get zero.

    Example::

        FOMAML().gradient([torch.zeros(1)], [torch.ones(1)], [torch.tensor([0.3])])  # [tensor([0.3])]
    """

    needs_query = True

    def gradient(self, start, adapted, query_grads):
        return [torch.zeros_like(s) if g is None else g.detach().to(s.dtype) for s, g in zip(start, query_grads)]
