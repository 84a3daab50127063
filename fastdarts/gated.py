"""``GatedMixedOp``: a mixed edge that computes only the candidates a sampler selected.

Sampled-gate methods (PR-DARTS binary gates, DropNAS masks, GDAS one-hot) draw, once per
forward, a gate row (``[K]``, straight-through values) and the indices of the candidates to
run. The edge returns ``Σ_{k∈active} gates[k] · op_k(x)``; the other candidates are never
called, so they cost neither compute nor memory and get no gradient.
"""

from __future__ import annotations

import torch

from fastdarts.functional import gated_mixed_sum, resolve_backend
from fastdarts.mixed import MixedOp, _common_dtype, recompute_forward
from fastdarts.ops import Zero, relu_tail


class GatedMixedOp(MixedOp):
    """Mixed edge with sparse gates: ``forward(x, gates, active) = Σ_{k∈active} gates[k]·op_k(x)``.

    Same constructor, candidates and state_dict layout as :class:`~fastdarts.mixed.MixedOp`.
    ``active`` is required (a non-empty sequence of candidate indices). On the non-eager
    backends ``none`` is skipped (its output is zero and so is its gate gradient), ReLU(x) is
    shared by the ReLU-first candidates and the sum is :func:`~fastdarts.functional.gated_mixed_sum`.
    """

    def _gated(self, x: torch.Tensor, gates: torch.Tensor, active) -> torch.Tensor:
        backend = resolve_backend(self.backend, x.device.type)
        if backend == "eager":
            return self._eager_sum(x, gates, active)
        outs, keep, shared_relu = [], [], None
        for k in active:
            op = self._ops[k]
            if isinstance(op, Zero):
                continue
            tail = relu_tail(op)
            if tail is not None:
                if shared_relu is None:
                    shared_relu = torch.relu(x)
                outs.append(tail(shared_relu))
            else:
                outs.append(op(x))
            keep.append(k)
        if not outs:  # only `none` is active: zeros that still depend on the gates
            return self._eager_sum(x, gates, active)
        return gated_mixed_sum(_common_dtype(outs), gates, keep, backend=backend)

    def forward(self, x: torch.Tensor, gates: torch.Tensor, active=None) -> torch.Tensor:
        if active is None:
            raise ValueError("GatedMixedOp needs the active candidate indices (active=...)")
        active = tuple(int(k) for k in active)
        self._check_weights(gates)
        self._check_active(active)
        if self.recompute:
            return recompute_forward(self, self._gated, x, gates, active)
        return self._gated(x, gates, active)
