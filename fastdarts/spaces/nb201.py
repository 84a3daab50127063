"""The NAS-Bench-201 search space: search cell, supernet and the discrete network.

The supernet follows D-X-Y/AutoDL-Projects ``xautodl/models/cell_searchs/search_model_darts.py``
(``TinyNetworkDarts``) and ``search_cells.py`` (``SearchCell``): a stem, three stages of
``N`` search cells (C, 2C, 4C channels) separated by stride-2 ResNet basic blocks, BN+ReLU,
global pooling and a linear classifier. A cell has one input (node 0) and three nodes; node
``i`` sums the mixed edges from every earlier node and the cell output is node 3. One α of
shape ``6×5`` is shared by all cells. Pools inside the cells have no BatchNorm, and every
BatchNorm inside the cells is affine-free with ``track_running_stats`` set by a flag.

The discrete network follows ``xautodl/models/cell_infers/tiny_network.py`` (``TinyNetwork``)
and ``cells.py`` (``InferCell``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from fastdarts.gates import Mixing
from fastdarts.genotype import NB201Genotype, derive_nb201
from fastdarts.mixed import MixedOp
from fastdarts.ops import NB201_PRIMITIVES, OPS, ReLUConvBN, check_primitives, make_search_op
from fastdarts.recompute import recompute_forward
from fastdarts.spaces.common import ArchMixin

MAX_NODES = 4  # node 0 is the cell input
NUM_EDGES = MAX_NODES * (MAX_NODES - 1) // 2  # 6
STEPS = MAX_NODES - 1  # 3 computed nodes


def _edge_keys(max_nodes: int = MAX_NODES) -> list[str]:
    """``'{i}<-{j}'`` edge names in D-X-Y's sorted order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2."""
    return sorted(f"{i}<-{j}" for i in range(1, max_nodes) for j in range(i))


def _disable_running_stats(module: nn.Module) -> None:
    """Turn every BatchNorm in ``module`` into one that always normalises with batch statistics.

    Equivalent to constructing it with ``track_running_stats=False`` (D-X-Y's BN0 runs): no
    running buffers, so nothing of the kind appears in the state_dict.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


class NB201MixedOp(MixedOp):
    """A NAS-Bench-201 mixed edge: :class:`~fastdarts.mixed.MixedOp` whose pools carry no BatchNorm.

    D-X-Y's ``POOLING`` op is the bare pool when input and output channels agree (always
    inside a cell), unlike quark0's search ``MixedOp`` which appends BN(affine=False) to pools.

    Args:
        C: channels. stride: 1 inside NAS-Bench-201 cells.
        primitives: candidate names (default: the 5 NAS-Bench-201 primitives).
        backend, recompute: as for :class:`~fastdarts.mixed.MixedOp`.
        track_running_stats: False makes every BatchNorm of the edge use batch statistics only.
    """

    def __init__(self, C: int, stride: int = 1, primitives=None, *, backend: str = "auto",
                 recompute: bool = False, track_running_stats: bool = True):
        primitives = NB201_PRIMITIVES if primitives is None else primitives
        super().__init__(C, stride, primitives, backend=backend, recompute=recompute)
        # Replace the candidates built by the base class (pools + BN) with the bare-pool versions.
        self._ops = nn.ModuleList(make_search_op(p, C, stride, pool_bn=False) for p in self.primitives)
        if not track_running_stats:
            _disable_running_stats(self._ops)


class NB201SearchCell(nn.Module):
    """D-X-Y's NAS-Bench-201 ``SearchCell``: node i = Σ_{j<i} edge(j→i)(node j); output = node 3.

    ``edges`` is an ``nn.ModuleDict`` keyed ``'{i}<-{j}'``; its sorted key order is the row
    order of α (``edge2index``).
    """

    def __init__(self, C: int, primitives=None, backend: str = "auto", *, track_running_stats: bool = True,
                 max_nodes: int = MAX_NODES):
        super().__init__()
        self.primitives = check_primitives(NB201_PRIMITIVES if primitives is None else primitives)
        self.max_nodes = max_nodes
        self.in_dim = self.out_dim = C
        self.backend = backend
        keys = _edge_keys(max_nodes)
        self.edge_keys = keys
        self.edge2index = {key: e for e, key in enumerate(keys)}
        self.num_edges = len(keys)
        self.edges = nn.ModuleDict(
            (key, NB201MixedOp(C, 1, self.primitives, backend=backend, track_running_stats=track_running_stats))
            for key in keys
        )

    def forward(self, inputs: torch.Tensor, weights: torch.Tensor, active=None, edge_bias=None) -> torch.Tensor:
        if weights.dim() != 2 or weights.shape[0] != self.num_edges:
            raise ValueError(f"NB201SearchCell expects weights of shape [{self.num_edges}, K], "
                             f"got {tuple(weights.shape)}")
        nodes = [inputs]
        for i in range(1, self.max_nodes):
            outs = []
            for j in range(i):
                key = f"{i}<-{j}"
                e = self.edge2index[key]
                out = self.edges[key](nodes[j], weights[e], None if active is None else active[e])
                # GDAS: + Σ_{o≠idx} h[o], zero in value (D-X-Y NAS201SearchCell.forward_gdas adds the
                # unselected gates; its NASNet cell does not, see spaces/darts.py SearchCell).
                outs.append(out if edge_bias is None else out + edge_bias[e])
            nodes.append(sum(outs))
        return nodes[-1]

    def extra_repr(self) -> str:
        return f"C={self.in_dim}, max_nodes={self.max_nodes}, primitives={list(self.primitives)}"


class ResNetBasicblock(nn.Module):
    """D-X-Y's ``ResNetBasicblock``: two ReLU-Conv3×3-BN plus a shortcut (AvgPool2×2 + Conv1×1 at stride 2)."""

    def __init__(self, inplanes: int, planes: int, stride: int, affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicblock stride must be 1 or 2, got {stride}")
        self.conv_a = ReLUConvBN(inplanes, planes, 3, stride, 1, affine=affine, bias=not affine,
                                 track_running_stats=track_running_stats)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1, 1, affine=affine, bias=not affine,
                                 track_running_stats=track_running_stats)
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
            )
        elif inplanes != planes:
            self.downsample = ReLUConvBN(inplanes, planes, 1, 1, 0, affine=affine, bias=not affine,
                                         track_running_stats=track_running_stats)
        else:
            self.downsample = None
        self.in_dim, self.out_dim, self.stride = inplanes, planes, stride

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        basicblock = self.conv_b(self.conv_a(inputs))
        residual = inputs if self.downsample is None else self.downsample(inputs)
        return residual + basicblock


def _stage_layout(C: int, N: int) -> list[tuple[int, bool]]:
    """(channels, is_reduction) of every cell: N cells, a reduction, N cells, a reduction, N cells."""
    channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
    reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
    return list(zip(channels, reductions))


class NB201Supernet(ArchMixin):
    """NAS-Bench-201 search network (D-X-Y ``TinyNetworkDarts``); ``forward(x) -> logits``.

    Args:
        C, num_classes, N: initial width, classes and search cells per stage (D-X-Y: 16, 10, 5).
        mixing: how α becomes edge weights (:mod:`fastdarts.gates`; default softmax).
        backend: mixed-op backend. recompute: recompute each whole search cell in backward,
            keeping only its input.
        in_channels: image channels. primitives: candidate names (default the 5 NB201 ops).
        track_running_stats: BatchNorm flag of the search cells (D-X-Y's BN1 / BN0 runs).
    """

    def __init__(self, C: int = 16, num_classes: int = 10, N: int = 5, *, mixing: Mixing | None = None,
                 backend: str = "auto", recompute: bool = False, in_channels: int = 3, primitives=None,
                 track_running_stats: bool = True):
        super().__init__()
        self._init_arch()
        self._C, self._num_classes, self._layerN = C, num_classes, N
        self._steps = STEPS
        self.max_nodes = MAX_NODES
        self.recompute = recompute
        self.mixing = mixing or Mixing()
        if self.mixing.uses_betas:
            raise ValueError(f"{type(self.mixing).__name__} uses edge weights β, which the "
                             "NAS-Bench-201 supernet does not have")
        self.primitives = check_primitives(NB201_PRIMITIVES if primitives is None else primitives)
        self.edge_primitives = {"normal": [self.primitives] * NUM_EDGES}

        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in _stage_layout(C, N):
            if reduction:
                cell = ResNetBasicblock(C_prev, C_curr, 2)
            else:
                if C_prev != C_curr:  # never happens with this layout
                    raise AssertionError("search cell channels must not change")
                cell = NB201SearchCell(C_curr, self.primitives, backend, track_running_stats=track_running_stats)
            self.cells.append(cell)
            C_prev = cell.out_dim
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self.register_arch("alphas", self.mixing.init_alpha(NUM_EDGES, len(self.primitives)))

    def cell_weights(self):
        """This forward's weights (samplers draw here, once per forward; shared by all cells)."""
        return self.mixing.all_cell_weights({"normal": (self.alphas, None)}, self._steps)

    def forward(self, x: torch.Tensor, cell_weights=None) -> torch.Tensor:
        """Logits of ``x``. ``cell_weights``: optional precomputed weights, a dict ``{"normal": CellWeights}``
        or a list with one :class:`CellWeights` per search cell (Λ-DARTS)."""
        if x.dim() != 4:
            raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
        weights = self.cell_weights() if cell_weights is None else cell_weights
        search_cells = [c for c in self.cells if isinstance(c, NB201SearchCell)]
        if isinstance(weights, (list, tuple)) and len(weights) != len(search_cells):
            raise ValueError(f"got {len(weights)} per-cell weights for {len(search_cells)} search cells")
        h = self.stem(x)
        idx = 0
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                cw = weights[idx] if isinstance(weights, (list, tuple)) else weights["normal"]
                idx += 1
                args = (h, cw.weights, cw.active, cw.edge_bias)
                h = recompute_forward(cell, cell, *args) if self.recompute else cell(*args)
            else:
                h = cell(h)
        out = self.global_pooling(self.lastact(h))
        return self.classifier(out.view(out.size(0), -1))

    def genotype(self) -> NB201Genotype:
        """Arg-max op (``none`` included) of every edge, from the mixing's scores."""
        with torch.no_grad():
            scores = self.mixing.genotype_weights(self.alphas, None, self._steps)
        return derive_nb201(scores, self.primitives, self.max_nodes)


# ----------------------------------------------------------------------------------------------
# Discrete network (D-X-Y cell_infers/tiny_network.py, cells.py)


def _as_nb201_genotype(genotype) -> NB201Genotype:
    if isinstance(genotype, NB201Genotype):
        return genotype
    if isinstance(genotype, str):  # "|op~0|+|op~0|op~1|+|op~0|op~1|op~2|"
        nodes = []
        for node_str in genotype.split("+"):
            node = []
            for item in filter(None, node_str.split("|")):
                op, sep, j = item.rpartition("~")
                if not sep:
                    raise ValueError(f"bad NAS-Bench-201 architecture string {genotype!r}")
                node.append((op, int(j)))
            nodes.append(node)
        return NB201Genotype(nodes)
    if isinstance(genotype, Sequence):
        return NB201Genotype(genotype)
    raise TypeError(f"expected an NB201Genotype, got {type(genotype).__name__}")


class NB201InferCell(nn.Module):
    """D-X-Y's ``InferCell``: one fixed op per edge of the genotype, affine BatchNorm."""

    def __init__(self, genotype: NB201Genotype, C: int):
        super().__init__()
        self.layers = nn.ModuleList()
        self.node_IX: list[list[int]] = []
        self.node_IN: list[list[int]] = []
        for i, node in enumerate(genotype, start=1):
            index, innod = [], []
            for op_name, j in node:
                if op_name not in OPS:
                    raise ValueError(f"genotype uses unknown op {op_name!r}")
                if not 0 <= j < i:
                    raise ValueError(f"node {i} cannot take node {j} as input")
                index.append(len(self.layers))
                innod.append(j)
                self.layers.append(OPS[op_name](C, 1, True))
            self.node_IX.append(index)
            self.node_IN.append(innod)
        self.in_dim = self.out_dim = C

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        nodes = [inputs]
        for index, innod in zip(self.node_IX, self.node_IN):
            nodes.append(sum(self.layers[k](nodes[j]) for k, j in zip(index, innod)))
        return nodes[-1]


class NB201Network(nn.Module):
    """The discrete NAS-Bench-201 network (D-X-Y ``TinyNetwork``); ``forward`` returns ``(logits, None)``."""

    def __init__(self, genotype, C: int = 16, num_classes: int = 10, N: int = 5, in_channels: int = 3):
        super().__init__()
        self.genotype = _as_nb201_genotype(genotype)
        self._C, self._layerN = C, N
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_prev = C
        for C_curr, reduction in _stage_layout(C, N):
            cell = ResNetBasicblock(C_prev, C_curr, 2, True) if reduction else NB201InferCell(self.genotype, C_curr)
            self.cells.append(cell)
            C_prev = cell.out_dim
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor):
        h = self.stem(x)
        for cell in self.cells:
            h = cell(h)
        out = self.global_pooling(self.lastact(h))
        return self.classifier(out.view(out.size(0), -1)), None
