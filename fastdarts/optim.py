"""Architecture optimisers."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch


class ExponentiatedGradient(torch.optim.Optimizer):
    """GAEA's mirror-descent step for architecture tensors whose rows lie on the simplex.

    ``step()`` does, for every parameter ``p`` with gradient ``g``::

        g ← g + kl_weight · (log(K·p) + 1)        # gradient of Σ p·log(K·p), GAEA's κ (default 0)
        p ← p · exp(−lr · g)
        p ← clamp(p, min=min_value);  p ← p / Σ_row p      (clamp_first=True, GAEA EDARTS)
        p ← p / Σ_row p;  p ← clamp(p, min=min_value)      (clamp_first=False, GAEA EGDAS)

    computed in log space so that any finite step gives finite rows: ``z = log p − lr·g``;
    EDARTS clamps there (``z ← max(z, log min_value)``, the same floor on the unnormalised
    ``p·exp(−lr·g)`` as GAEA's ``clamp`` before normalising), then ``exp(z − max_row z)`` and the
    row normalisation; EGDAS clamps after it. Subtracting the row maximum cancels in the
    normalisation, so the result is GAEA's formula wherever that one does not overflow. Entries
    whose exact value is below the dtype's smallest normal number are stored as that number.

    Rows are the last dimension. For edge weights normalised per node (GAEA PC-DARTS β),
    give the parameter group ``groups=[(start, stop), ...]``: a 1-D tensor is then
    normalised (and max-shifted) within each ``p[start:stop]`` instead of over the whole last
    dimension.

    Args:
        params: tensors (or parameter groups) on the simplex.
        lr: step size η (GAEA: 0.1 for DARTS/PC-DARTS, 0.01 for GDAS).
        min_value: floor applied around the renormalisation.
        kl_weight: κ, weight of the entropic pull towards uniform (0 except GAEA GDAS: 0.01).
        clamp_first: clamp before normalising (EDARTS) or after (EGDAS).
        groups: optional index ranges for 1-D tensors, as above.
    """

    def __init__(self, params: Iterable, lr: float = 0.1, min_value: float = 1e-5, *, kl_weight: float = 0.0,
                 clamp_first: bool = True, groups: Sequence[tuple[int, int]] | None = None):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if min_value < 0:
            raise ValueError(f"min_value must be non-negative, got {min_value}")
        defaults = dict(lr=lr, min_value=min_value, kl_weight=kl_weight, clamp_first=clamp_first, groups=groups)
        super().__init__(params, defaults)

    @staticmethod
    def _softmax(z: torch.Tensor, groups) -> torch.Tensor:
        """``exp(z) / Σ exp(z)`` per row (or per ``groups`` range), shifted by the maximum: the
        largest entry becomes exp(0) = 1, so nothing overflows and each sum is ≥ 1."""
        if groups is None:
            e = torch.exp(z - z.amax(dim=-1, keepdim=True))
            return e / e.sum(dim=-1, keepdim=True)
        if z.dim() != 1:
            raise ValueError(f"groups= applies to 1-D tensors, got shape {tuple(z.shape)}")
        out = torch.empty_like(z)
        for start, stop in groups:
            e = torch.exp(z[start:stop] - z[start:stop].max())
            out[start:stop] = e / e.sum()
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["kl_weight"]:
                    g = g + group["kl_weight"] * (torch.log(p.shape[-1] * p) + 1)
                z = torch.log(p) - group["lr"] * g
                if group["clamp_first"] and group["min_value"] > 0:
                    z.clamp_(min=math.log(group["min_value"]))
                new = self._softmax(z, group["groups"])
                # The exact result is > 0 but may be below the dtype's range; the smallest normal
                # number (≤ `tiny` off the exact value) keeps log p, and so the next step, finite.
                tiny = torch.finfo(new.dtype).tiny
                new.clamp_(min=tiny if group["clamp_first"] else max(group["min_value"], tiny))
                p.copy_(new)  # in place: the tensor object (held by the supernet) stays the same
        return loss
