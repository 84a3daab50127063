"""Architecture optimisers."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class ExponentiatedGradient(torch.optim.Optimizer):
    """GAEA's mirror-descent step for architecture tensors whose rows lie on the simplex.

    ``step()`` does, for every parameter ``p`` with gradient ``g``::

        g ← g + kl_weight · (log(K·p) + 1)        # gradient of Σ p·log(K·p), GAEA's κ (default 0)
        p ← p · exp(−lr · g)
        p ← clamp(p, min=min_value);  p ← p / Σ_row p      (clamp_first=True, GAEA EDARTS)
        p ← p / Σ_row p;  p ← clamp(p, min=min_value)      (clamp_first=False, GAEA EGDAS)

    Rows are the last dimension. For edge weights normalised per node (GAEA PC-DARTS β),
    give the parameter group ``groups=[(start, stop), ...]``: a 1-D tensor is then
    normalised within each ``p[start:stop]`` instead of over the whole last dimension.

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
    def _normalize(p: torch.Tensor, groups) -> None:
        if groups is None:
            p.div_(p.sum(dim=-1, keepdim=True))
            return
        if p.dim() != 1:
            raise ValueError(f"groups= applies to 1-D tensors, got shape {tuple(p.shape)}")
        for start, stop in groups:
            p[start:stop].div_(p[start:stop].sum())

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
                p.mul_(torch.exp(-group["lr"] * g))
                if group["clamp_first"]:
                    p.clamp_(min=group["min_value"])
                    self._normalize(p, group["groups"])
                else:
                    self._normalize(p, group["groups"])
                    p.clamp_(min=group["min_value"])
        return loss
