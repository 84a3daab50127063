"""D-X-Y's NASNet-super search network on the DARTS space (GDAS, PR-DARTS).

Follows D-X-Y/AutoDL-Projects ``xautodl/models/cell_searchs/search_model_gdas_nasnet.py``
(``NASNetworkGDAS``), ``search_cells.py`` (``NASNetSearchCell``, ``MixedOp``) and
``cell_operations.py``, which salesforce/PR-DARTS copies for ``search_model_prdarts_nasnet.py``.
Against quark0's search ``Network`` it differs in:

* macro: ``3N`` cells laid out ``[n]*N, R, [n]*(N-1), R, [n]*(N-1)`` (N=2: ``[n, n, R, n, R, n]``),
  and a final BN+ReLU (``lastact``) before global pooling;
* op order ``none, skip_connect, sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5,
  avg_pool_3x3, max_pool_3x3`` (D-X-Y's ``dua_sepc_k`` is sep_conv_k, ``dil_sepc_k`` dil_conv_k;
  fastdarts uses the DARTS names, so genotypes build with ``fastdarts train``);
* pools without BatchNorm; D-X-Y's op modules (``DualSepConv`` = two ``SepConv`` blocks ``op_a``,
  ``op_b``; ``FactorizedReduce`` with ``convs`` and a pad), so the state_dict keys are D-X-Y's;
* every BatchNorm inside the cells is affine-free with a ``track_running_stats`` flag, and the 1×1
  convs before those BatchNorms carry a bias in D-X-Y's current code (``bias=not affine``) but
  not in PR-DARTS' copy (``bias=False``): flag ``conv_bias``;
* genotype: per node the 2 best (op, input) pairs over all incoming edges, ``none`` excluded.

With the same weights, architecture tensors and gates, logits and gradients equal D-X-Y's
``forward_gdas`` / ``forward_darts`` and PR-DARTS' ``forward_prdarts``
(``tests/reference_nasnet.py``). The edge of a sampled-gate forward is ``Σ_{o active} h[o]·op_o(x)``
and nothing else: D-X-Y's NASNet ``MixedOp.forward_gdas`` (``search_cells.py:180-181``) adds no
zero-valued gate scalars, so a mixing's ``edge_bias`` is not used here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fastdarts.gates import Mixing
from fastdarts.genotype import Genotype, derive_topk_pairs_cell
from fastdarts.mixed import MixedOp
from fastdarts.ops import Identity, ReLUConvBN, Zero, check_primitives, make_search_op
from fastdarts.recompute import recompute_forward
from fastdarts.spaces.common import CellTypeSupernet
from fastdarts.spaces.darts import _per_edge_primitives, num_edges
from fastdarts.spaces.nb201 import _disable_running_stats

# D-X-Y's DARTS_SPACE order (cell_operations.py), in DARTS op names.
NASNET_PRIMITIVES = (
    "none",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
)
# D-X-Y's names of the same ops; accepted in ``primitives=``.
DXY_TO_DARTS = {"dua_sepc_3x3": "sep_conv_3x3", "dua_sepc_5x5": "sep_conv_5x5",
                "dil_sepc_3x3": "dil_conv_3x3", "dil_sepc_5x5": "dil_conv_5x5"}

# Supernet settings of each method's published search (overridable as build_supernet options):
# PR-DARTS builds its cells with track_running_stats=False (test_PRDARTS.py:246, --track_running_stats
# default 0) from its copy of cell_operations.py, whose convs have no bias. GDAS: D-X-Y's defaults
# (NASNet-space-search-by-GDAS.sh passes track_running_stats 1).
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "prdarts": {"track_running_stats": False, "conv_bias": False},
}


def method_settings(method: str) -> dict[str, Any]:
    """The NASNet-super constructor options of ``method``'s published search (empty: D-X-Y's defaults)."""
    return dict(METHOD_SETTINGS.get(method, {}))


# ----------------------------------------------------------------------------------------------
# D-X-Y's op modules (cell_operations.py), affine-free as in every search cell


def _bn(C: int, track_running_stats: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(C, affine=False, track_running_stats=track_running_stats)


class NasnetSepConv(nn.Module):
    """D-X-Y's ``SepConv``: ReLU → depthwise k×k (dilated) → pointwise 1×1 → BN (``dil_sepc_k`` alone)."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 track_running_stats: bool = True, conv_bias: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=conv_bias),
            _bn(C_out, track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class NasnetDualSepConv(nn.Module):
    """D-X-Y's ``DualSepConv`` (``dua_sepc_k`` = DARTS sep_conv_k): ``op_b(op_a(x))``, only ``op_a`` strided."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 track_running_stats: bool = True, conv_bias: bool = True):
        super().__init__()
        self.op_a = NasnetSepConv(C_in, C_in, kernel_size, stride, padding, 1, track_running_stats, conv_bias)
        self.op_b = NasnetSepConv(C_in, C_out, kernel_size, 1, padding, 1, track_running_stats, conv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op_b(self.op_a(x))

    def forward_after_relu(self, r: torch.Tensor) -> torch.Tensor:
        """The op from ReLU(x) (mixed ops share one ReLU per edge, :func:`fastdarts.ops.relu_tail`)."""
        for m in list(self.op_a.op)[1:]:
            r = m(r)
        return self.op_b(r)


class NasnetFactorizedReduce(nn.Module):
    """D-X-Y's stride-2 ``FactorizedReduce``: ReLU, two 1×1 stride-2 convs (the second on the input padded
    right/bottom and shifted by one pixel), concat, BN."""

    def __init__(self, C_in: int, C_out: int, track_running_stats: bool = True, conv_bias: bool = True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.convs = nn.ModuleList(nn.Conv2d(C_in, c, 1, stride=2, padding=0, bias=conv_bias)
                                   for c in (C_out // 2, C_out - C_out // 2))
        self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0)
        self.bn = _bn(C_out, track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_after_relu(self.relu(x))

    def forward_after_relu(self, r: torch.Tensor) -> torch.Tensor:
        y = self.pad(r)
        return self.bn(torch.cat([self.convs[0](r), self.convs[1](y[:, :, 1:, 1:])], dim=1))


def nasnet_op(primitive: str, C: int, stride: int, track_running_stats: bool = True,
              conv_bias: bool = True) -> nn.Module:
    """One candidate of a NASNet-super edge with D-X-Y's module layout (pools without BN).

    Other registered primitives are built as in quark0's search cells, without the pool BN."""
    if primitive == "none":
        return Zero(stride)
    if primitive == "skip_connect":
        return Identity() if stride == 1 else NasnetFactorizedReduce(C, C, track_running_stats, conv_bias)
    if primitive in ("sep_conv_3x3", "sep_conv_5x5"):
        k = int(primitive[-1])
        return NasnetDualSepConv(C, C, k, stride, k // 2, track_running_stats, conv_bias)
    if primitive in ("dil_conv_3x3", "dil_conv_5x5"):
        k = int(primitive[-1])
        return NasnetSepConv(C, C, k, stride, k - 1, 2, track_running_stats, conv_bias)
    op = make_search_op(primitive, C, stride, pool_bn=False)
    if not track_running_stats:
        _disable_running_stats(op)
    return op


class NasnetMixedOp(MixedOp):
    """A NASNet-super edge: :class:`~fastdarts.mixed.MixedOp` over D-X-Y's candidate modules.

    ``_ops`` holds one module per primitive, laid out like D-X-Y's ``MixedOp._ops``.
    """

    def __init__(self, C: int, stride: int, primitives=NASNET_PRIMITIVES, *, backend: str = "auto",
                 track_running_stats: bool = True, conv_bias: bool = True):
        # The base builds quark0's candidates; start it from `none` alone (no parameters, no RNG
        # draws) and put D-X-Y's candidates in its place.
        super().__init__(C, stride, ("none",), backend=backend)
        self.primitives = check_primitives(primitives)
        self._ops = nn.ModuleList(nasnet_op(p, C, stride, track_running_stats, conv_bias) for p in self.primitives)


class NasnetSearchCell(nn.Module):
    """D-X-Y's ``NASNetSearchCell``: preprocess both inputs, node i = Σ_j edge ``'{i}<-{j}'`` (state j).

    ``edges`` is an ``nn.ModuleDict`` keyed ``'{i}<-{j}'`` (D-X-Y's state_dict keys); α row ``e`` is
    edge ``_ops[e]``, in node-major order, which is D-X-Y's sorted-name order for up to 8 nodes.
    """

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, edge_primitives, backend: str, track_running_stats: bool, conv_bias: bool):
        super().__init__()
        self.reduction = reduction
        self._steps, self._multiplier = steps, multiplier
        if reduction_prev:  # D-X-Y: OPS["skip_connect"](C_prev_prev, C, 2, ...)
            self.preprocess0 = NasnetFactorizedReduce(C_prev_prev, C, track_running_stats, conv_bias)
        else:  # OPS["nor_conv_1x1"]
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False, bias=conv_bias,
                                          track_running_stats=track_running_stats)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False, bias=conv_bias,
                                      track_running_stats=track_running_stats)
        self.edges = nn.ModuleDict()
        self.edge_keys: list[str] = []
        for i in range(steps):
            for j in range(2 + i):
                key = f"{i}<-{j}"
                stride = 2 if reduction and j < 2 else 1
                self.edges[key] = NasnetMixedOp(C, stride, edge_primitives[len(self.edge_keys)], backend=backend,
                                                track_running_stats=track_running_stats, conv_bias=conv_bias)
                self.edge_keys.append(key)

    @property
    def _ops(self) -> list[NasnetMixedOp]:
        """The mixed edges in α row order (as ``SearchCell._ops`` of the quark0 supernet)."""
        return [self.edges[key] for key in self.edge_keys]

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, active=None) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        edges = self._ops
        offset = 0
        for _ in range(self._steps):
            states.append(sum(edges[offset + j](h, weights[offset + j], None if active is None else active[offset + j])
                              for j, h in enumerate(states)))
            offset += len(states) - 1
        return torch.cat(states[-self._multiplier:], dim=1)


def nasnet_layout(layers: int) -> list[tuple[int, bool]]:
    """(channel multiple of C, is_reduction) of each of the ``layers = 3N`` cells (D-X-Y's layer lists)."""
    if layers < 3 or layers % 3:
        raise ValueError(f"the NASNet-super supernet has 3N cells (N per stage); layers={layers} is not a "
                         "positive multiple of 3 (the published search uses layers=6), or use supernet='quark0'")
    N = layers // 3
    channels = [1] * N + [2] + [2] * (N - 1) + [4] + [4] * (N - 1)
    reductions = [False] * N + [True] + [False] * (N - 1) + [True] + [False] * (N - 1)
    return list(zip(channels, reductions))


class NasnetSupernet(CellTypeSupernet):
    """D-X-Y's NASNet-super search network (``NASNetworkGDAS`` / ``NASNetworkPRDARTS``); ``forward(x) -> logits``.

    Args:
        C, num_classes: initial width and classes (published: 16, 10).
        layers: number of cells, ``3N`` (published: 6, i.e. N=2: ``[n, n, R, n, R, n]``).
        primitives: op names for every edge (default :data:`NASNET_PRIMITIVES`; D-X-Y's names are
            accepted), or ``{"normal": [...], "reduce": [...]}`` with one list per edge.
        mixing: how α become edge weights or gates (:mod:`fastdarts.gates`); no edge weights β.
        steps, multiplier, stem_multiplier: nodes per cell, nodes concatenated, stem width factor (4, 4, 3).
        track_running_stats: BatchNorm flag inside the cells (PR-DARTS False, GDAS True); the stem and
            ``lastact`` BatchNorms always track, as in both originals.
        conv_bias: bias of the 1×1 convs before the cells' BatchNorms (D-X-Y True, PR-DARTS False).
        backend, recompute, in_channels: as for the quark0 supernet.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 6, *, primitives=None,
                 mixing: Mixing | None = None, steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3,
                 in_channels: int = 3, backend: str = "auto", recompute: bool = False,
                 track_running_stats: bool = True, conv_bias: bool = True):
        super().__init__()
        self._init_arch()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._steps, self._multiplier = steps, multiplier
        self.recompute = recompute
        self.mixing = mixing or Mixing()
        if self.mixing.uses_betas:
            raise ValueError(f"{type(self.mixing).__name__} uses edge weights β, which the NASNet-super supernet "
                             "does not have; use supernet='quark0'")
        E = num_edges(steps)
        self.edge_primitives = _per_edge_primitives(_dxy_names_to_darts(primitives), E)

        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        C_prev_prev, C_prev, reduction_prev = C_stem, C_stem, False
        self.cells = nn.ModuleList()
        for mult, reduction in nasnet_layout(layers):
            kind = "reduce" if reduction else "normal"
            self.cells.append(NasnetSearchCell(steps, multiplier, C_prev_prev, C_prev, mult * C, reduction,
                                               reduction_prev, self.edge_primitives[kind], backend,
                                               track_running_stats, conv_bias))
            C_prev_prev, C_prev, reduction_prev = C_prev, multiplier * mult * C, reduction
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self._register_alphas(E)

    def forward(self, x: torch.Tensor, cell_weights=None) -> torch.Tensor:
        """Logits of ``x``. ``cell_weights``: optional precomputed weights, a dict by cell type (as
        :meth:`cell_weights` returns) or a list with one :class:`~fastdarts.gates.CellWeights` per cell."""
        weights = self._weights_per_cell(x, cell_weights)
        s0 = s1 = self.stem(x)
        for cell, cw in zip(self.cells, weights):
            if cw.edge_weights is not None:
                raise ValueError("the NASNet-super supernet has no edge weights β")
            args = (s0, s1, cw.weights, cw.active)
            out = recompute_forward(cell, cell, *args) if self.recompute else cell(*args)
            s0, s1 = s1, out
        out = self.global_pooling(self.lastact(s1))
        return self.classifier(out.view(out.size(0), -1))

    def genotype(self) -> Genotype:
        """Per node the 2 best (op, input) pairs of the mixing's scores (softmax(α) for GDAS and PR-DARTS),
        ``none`` excluded; both may come from the same input (D-X-Y's and PR-DARTS' ``genotype``)."""
        return self._derive_genotype(derive_topk_pairs_cell)


def _dxy_names_to_darts(primitives):
    """Primitive lists with D-X-Y's names (``dua_sepc_k``, ``dil_sepc_k``) renamed to the DARTS names."""
    if primitives is None:
        return NASNET_PRIMITIVES
    if isinstance(primitives, dict):
        return {kind: [[DXY_TO_DARTS.get(p, p) for p in edge] for edge in edges] for kind, edges in primitives.items()}
    return [DXY_TO_DARTS.get(p, p) for p in primitives]
