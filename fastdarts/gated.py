"""``GatedMixedOp``: a mixed edge that computes only the candidates a sampler selected.

Sampled-gate methods (PR-DARTS binary gates, DropNAS masks, GDAS one-hot) draw, once per
forward, a gate row (``[K]``, straight-through values) and the indices of the candidates to
run. The edge returns ``Σ_{k∈active} gates[k] · op_k(x)``; the other candidates are never
called, so they cost neither compute nor memory and get no gradient.
"""

from __future__ import annotations

import torch

from fastdarts.mixed import MixedOp


class GatedMixedOp(MixedOp):
    """Mixed edge with sparse gates: ``forward(x, gates, active) = Σ_{k∈active} gates[k]·op_k(x)``.

    Same constructor, candidates and state_dict layout as :class:`~fastdarts.mixed.MixedOp`;
    ``active`` is required (a non-empty sequence of candidate indices). On the non-eager
    backends ``none`` is skipped, ReLU(x) is shared by the ReLU-first candidates and the sum is
    :func:`~fastdarts.functional.gated_mixed_sum` (gradients reach ``gates`` at the active entries).
    """

    def forward(self, x: torch.Tensor, gates: torch.Tensor, active=None) -> torch.Tensor:
        if active is None:
            raise ValueError("GatedMixedOp needs the active candidate indices (active=...)")
        return super().forward(x, gates, tuple(int(k) for k in active))
