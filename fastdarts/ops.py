"""Candidate operations and the primitive registry.

The DARTS primitives reproduce quark0/darts ``cnn/operations.py`` module for module
(same ``nn.Sequential`` layouts, so state_dict keys and shapes match); the NAS-Bench-201
primitives reproduce D-X-Y/AutoDL-Projects ``cell_operations.py``. Users add their own
primitives with :func:`register_primitive`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

# quark0/darts order; MixedOp's default and the column order of alphas.
DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
# D-X-Y/AutoDL-Projects NAS-Bench-201 order.
NB201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class ReLUConvBN(nn.Module):
    """ReLU → Conv → BN (quark0 ``ReLUConvBN``; ``bias`` is used by the NAS-Bench-201 variant)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, dilation=1, bias=False,
                 track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU → depthwise dilated conv → pointwise conv → BN."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU → depthwise → pointwise → BN) blocks; only the first is strided."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size=kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros of the (strided) input shape. Mixed ops skip it entirely."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        out = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        return out.mul(0.0)


class FactorizedReduce(nn.Module):
    """ReLU → two 1×1 stride-2 convs (the second on the input shifted by one pixel) → concat → BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, r):
        return self.bn(torch.cat([self.conv_1(r), self.conv_2(r[:, :, 1:, 1:])], dim=1))


class Noise(nn.Module):
    """RobustDARTS S4 ``noise``: fresh N(0, 1) of the (strided) input shape, no gradient to the input."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        out = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        return torch.randn_like(out)


class PoolBN(nn.Sequential):
    """Pooling followed by an affine-free BatchNorm, as quark0's search MixedOp wraps pools."""


# A factory takes (C, stride, affine) and returns an nn.Module mapping C channels to C channels.
OpFactory = Callable[[int, int, bool], nn.Module]

OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    ),
    "noise": lambda C, stride, affine: Noise(stride),
    # NAS-Bench-201: ReLU-Conv-BN with a conv bias when BN is affine-free (D-X-Y: bias=not affine).
    "nor_conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine, bias=not affine),
    "nor_conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine, bias=not affine),
    "nor_conv_7x7": lambda C, stride, affine: ReLUConvBN(C, C, 7, stride, 3, affine, bias=not affine),
}

# Primitives whose search-cell version is followed by BatchNorm(affine=False) (quark0/PC-DARTS).
_POOLS_WITH_BN = {"max_pool_3x3", "avg_pool_3x3"}


def register_primitive(name: str, factory: OpFactory, *, overwrite: bool = False) -> None:
    """Register a candidate operation under ``name``.

    ``factory(C, stride, affine)`` must return a module mapping ``[N, C, H, W]`` to
    ``[N, C, H/stride, W/stride]``. Registered names can be used in ``primitives=`` lists.
    """
    if name in OPS and not overwrite:
        raise ValueError(f"primitive {name!r} is already registered; pass overwrite=True to replace it")
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    OPS[name] = factory


def check_primitives(primitives) -> tuple[str, ...]:
    """Validate a primitive list and return it as a tuple; unknown names raise a ValueError."""
    primitives = tuple(primitives)
    if not primitives:
        raise ValueError("a mixed op needs at least one primitive")
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"unknown primitive(s) {unknown}; registered: {sorted(OPS)}")
    return primitives


def make_search_op(primitive: str, C: int, stride: int, *, pool_bn: bool = True) -> nn.Module:
    """Build one candidate op of a search cell (affine-free BN, pools followed by BN when ``pool_bn``)."""
    op = OPS[check_primitives([primitive])[0]](C, stride, False)
    if pool_bn and primitive in _POOLS_WITH_BN:
        op = PoolBN(op, nn.BatchNorm2d(C, affine=False))
    return op


def relu_tail(op: nn.Module):
    """If ``op`` starts with a non-inplace ReLU, return a callable computing the rest of it from ReLU(x).

    Mixed ops use this to compute ReLU(x) once per edge instead of once per conv op
    (quark0 computes it four times: sep3, sep5, dil3, dil5), which saves one activation per op.
    """
    after_relu = getattr(op, "forward_after_relu", None)  # FactorizedReduce and D-X-Y's composite ops
    if after_relu is not None:
        return after_relu
    seq = getattr(op, "op", None)
    if isinstance(seq, nn.Sequential) and len(seq) > 1 and type(seq[0]) is nn.ReLU:
        rest = list(seq)[1:]

        def run(r):
            for m in rest:
                r = m(r)
            return r

        return run
    return None
