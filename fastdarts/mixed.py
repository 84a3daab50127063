"""Mixed operations: drop-in replacements for quark0/darts' and PC-DARTS' ``MixedOp``.

``MixedOp`` and ``PartialMixedOp`` keep the exact submodule layout of the originals (an
``nn.ModuleList`` named ``_ops``, plus ``mp`` for PC-DARTS), so an original state_dict
loads with ``strict=True``. On every backend but ``"eager"`` the forward

* skips ``none`` (its output is zero and ∂w_none = ⟨g, 0⟩ = 0; α_none still gets its
  gradient through the softmax),
* computes ReLU(x) once per edge for all ReLU-first ops instead of once per op,
* fuses Σ_k w_k·op_k(x) into one kernel (:func:`fastdarts.functional.mixed_sum`).

``recompute=True`` keeps only the edge input, the weights and the RNG state, and
recomputes the op outputs in backward, with BatchNorm running statistics updated once.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdarts.functional import (
    check_backend_name,
    gated_mixed_sum,
    mixed_sum,
    partial_channel_combine,
    resolve_backend,
)
from fastdarts.ops import DARTS_PRIMITIVES, Zero, check_primitives, make_search_op, relu_tail
from fastdarts.recompute import recompute_forward


def _common_dtype(outs: list[torch.Tensor]) -> list[torch.Tensor]:
    # Under autocast, identity/pool outputs can stay fp32 while convs give bf16/fp16.
    dtype = outs[0].dtype
    if all(o.dtype == dtype for o in outs):
        return outs
    wide = outs[0].dtype
    for o in outs[1:]:
        wide = torch.promote_types(wide, o.dtype)
    return [o.to(wide) for o in outs]


class _MixedBase(nn.Module):
    """Shared machinery: candidate construction, backend choice and the fused forward."""

    def __init__(self, C_ops: int, stride: int, primitives, backend: str, recompute: bool):
        super().__init__()
        self.primitives = check_primitives(DARTS_PRIMITIVES if primitives is None else primitives)
        self.backend = check_backend_name(backend)
        self.recompute = bool(recompute)
        self.stride = stride
        self._channels = C_ops  # channels the candidates take (C/k for PartialMixedOp)
        self._ops = nn.ModuleList(make_search_op(p, C_ops, stride) for p in self.primitives)

    def _check_weights(self, weights: torch.Tensor) -> None:
        if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.shape[0] != len(self._ops):
            raise ValueError(f"{type(self).__name__} has {len(self._ops)} candidates "
                             f"{list(self.primitives)}; weights must have shape [{len(self._ops)}], "
                             f"got {tuple(getattr(weights, 'shape', ())) or type(weights).__name__}")

    def _check_inputs(self, x: torch.Tensor, weights: torch.Tensor, channels: int) -> None:
        """Shape, dtype and device checks of ``forward``'s tensors (metadata only: no host sync)."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name} expects input of shape [N, {channels}, H, W], got {got}")
        if not x.is_floating_point():
            raise ValueError(f"{name} input must be floating point, got {x.dtype}")
        if not torch.is_autocast_enabled(x.device.type):  # autocast casts per op; otherwise dtypes must agree
            state = next((t for t in itertools.chain(self._ops.parameters(), self._ops.buffers())
                          if t.is_floating_point()), None)
            if state is not None and state.dtype != x.dtype:
                raise ValueError(f"{name} input is {x.dtype} but its parameters are {state.dtype}; cast one to "
                                 "the other (or run under torch.autocast)")
        self._check_weights(weights)
        if not weights.is_floating_point():
            raise ValueError(f"{name} weights must be floating point, got {weights.dtype}")
        if weights.device != x.device:
            raise ValueError(f"{name} weights are on {weights.device} but the input on {x.device}")

    def _eager_sum(self, x: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        # Literally quark0/darts' MixedOp.forward: the reference every backend is tested against.
        if active is None:
            return sum(w * op(x) for w, op in zip(weights, self._ops))
        return sum(weights[k] * self._ops[k](x) for k in active)

    def _fused_sum(self, x: torch.Tensor, weights: torch.Tensor, backend: str, active=None) -> torch.Tensor:
        outs, keep = [], []
        shared_relu = None
        for k in range(len(self._ops)) if active is None else active:
            op = self._ops[k]
            if isinstance(op, Zero):
                continue
            tail = relu_tail(op)
            if tail is not None:
                if shared_relu is None:
                    shared_relu = F.relu(x)
                outs.append(tail(shared_relu))
            else:
                outs.append(op(x))
            keep.append(k)
        if not outs:  # only `none` candidates: zeros that still depend on the weights
            return self._eager_sum(x, weights, active)
        if len(keep) != len(self._ops):
            return gated_mixed_sum(_common_dtype(outs), weights, keep, backend=backend)
        return mixed_sum(_common_dtype(outs), weights, backend=backend)

    def _check_active(self, active) -> None:
        if active is not None and (not active or not all(0 <= k < len(self._ops) for k in active)):
            raise ValueError(f"active candidates must be a non-empty list of indices in [0, {len(self._ops)}), "
                             f"got {active}")

    def _mixed(self, x: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        backend = resolve_backend(self.backend, x.device.type)
        if backend == "eager":
            return self._eager_sum(x, weights, active)
        return self._fused_sum(x, weights, backend, active)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, backend={self.backend!r}, recompute={self.recompute}"


class MixedOp(_MixedBase):
    """DARTS mixed edge: ``forward(x, weights) = Σ_k weights[k] · op_k(x)``.

    Drop-in for quark0/darts ``cnn/model_search.py`` ``MixedOp(C, stride)``: same default
    primitives in the same order, same ``_ops`` parameters and buffers.

    Args:
        C: channels of the edge input and output.
        stride: 1, or 2 for the input edges of a reduction cell.
        primitives: candidate names (default: the 8 DARTS primitives).
        backend: ``"auto" | "triton" | "cuda" | "cpp" | "eager"``.
        recompute: recompute the candidate outputs in backward instead of keeping them.
    """

    def __init__(self, C: int, stride: int, primitives=None, *, backend: str = "auto", recompute: bool = False):
        super().__init__(C, stride, primitives, backend, recompute)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        """``Σ_k weights[k]·op_k(x)``; with ``active`` (candidate indices) only those are computed."""
        self._check_inputs(x, weights, self._channels)
        self._check_active(active)
        if self.recompute:
            return recompute_forward(self, self._mixed, x, weights, active)
        return self._mixed(x, weights, active)


class PartialMixedOp(_MixedBase):
    """PC-DARTS partial-channel mixed edge (drop-in for PC-DARTS ``model_search.py`` ``MixedOp``).

    The first ``C/k`` channels go through the candidates, the rest bypass them (max-pooled
    2×2 when ``stride == 2``); both are concatenated and channel-shuffled with ``k`` groups.
    On the non-eager backends the concat and shuffle are one gather kernel.
    """

    def __init__(self, C: int, stride: int, k: int = 4, primitives=None, *, backend: str = "auto",
                 recompute: bool = False):
        if C % k != 0:
            raise ValueError(f"PartialMixedOp needs C divisible by k, got C={C}, k={k}")
        super().__init__(C // k, stride, primitives, backend, recompute)
        self.k = k
        self.C = C
        self.mp = nn.MaxPool2d(2, 2)

    def _partial(self, x: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.C:
            raise ValueError(f"PartialMixedOp expects [N, {self.C}, H, W] input, got {tuple(x.shape)}")
        backend = resolve_backend(self.backend, x.device.type)
        xa = x[:, : self.C // self.k]
        if backend == "eager":
            # PC-DARTS' MixedOp.forward, step for step.
            ya = self._eager_sum(xa, weights, active)
            xb = x[:, self.C // self.k:]
            y = torch.cat([ya, xb if ya.shape[2] == x.shape[2] else self.mp(xb)], dim=1)
            n, c, h, w = y.shape
            return y.view(n, self.k, c // self.k, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        ya = self._fused_sum(xa, weights, backend, active)
        return partial_channel_combine(x, ya.to(x.dtype), self.k, self.stride, backend=backend)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        self._check_inputs(x, weights, self.C)
        self._check_active(active)
        if self.recompute:
            return recompute_forward(self, self._partial, x, weights, active)
        return self._partial(x, weights, active)

    def extra_repr(self) -> str:
        return f"k={self.k}, " + super().extra_repr()
