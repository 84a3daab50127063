"""The DARTS CNN search space: search cell, supernet and the discrete evaluation network.

The supernet reproduces quark0/darts ``cnn/model_search.py`` ``Network`` (and, with
partial channels, PC-DARTS' ``model_search.py``) module for module, so an original
state_dict loads with ``strict=True`` and equal weights and α give equal logits.
The evaluation networks reproduce quark0/darts ``cnn/model.py`` ``NetworkCIFAR`` and
``NetworkImageNet`` module for module (same state_dict keys and shapes).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdarts.functional import mixed_sum, resolve_backend
from fastdarts.gates import Mixing
from fastdarts.genotype import Genotype, derive_darts_cell, derive_topk_pairs_cell
from fastdarts.mixed import MixedOp, PartialMixedOp
from fastdarts.ops import DARTS_PRIMITIVES, OPS, FactorizedReduce, Identity, ReLUConvBN
from fastdarts.recompute import recompute_forward
from fastdarts.spaces.common import CellTypeSupernet

NUM_EDGES = 14  # 2 + 3 + 4 + 5 incoming edges of the 4 intermediate nodes


def num_edges(steps: int) -> int:
    return sum(i + 2 for i in range(steps))


class SearchCell(nn.Module):
    """A DARTS search cell: preprocess both inputs, then each node sums its mixed incoming edges."""

    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev,
                 edge_primitives: Sequence[Sequence[str]], partial_k: int | None, backend: str):
        super().__init__()
        self.reduction = reduction
        self.backend = backend
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        edge = 0
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                prims = edge_primitives[edge]
                if partial_k:
                    op = PartialMixedOp(C, stride, k=partial_k, primitives=prims, backend=backend)
                else:
                    op = MixedOp(C, stride, primitives=prims, backend=backend)
                self._ops.append(op)
                edge += 1

    def forward(self, s0, s1, weights, edge_weights=None, active=None):
        # No per-edge scalars (CellWeights.edge_bias) here: D-X-Y's NASNet cell computes a GDAS
        # edge as op_idx(x)·h[idx] only (search_cells.py:180-181, MixedOp.forward_gdas); only
        # the NAS-Bench-201 cell adds Σ_{o≠idx} h[o].
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        fused = edge_weights is not None and resolve_backend(self.backend, s0.device.type) != "eager"
        for _ in range(self._steps):
            outs = [self._ops[offset + j](h, weights[offset + j], None if active is None else active[offset + j])
                    for j, h in enumerate(states)]
            if edge_weights is None:
                s = sum(outs)
            elif fused:  # PC-DARTS node: Σ_i β_i·y_i is itself a weighted sum
                s = mixed_sum(outs, edge_weights[offset: offset + len(states)], backend=self.backend)
            else:
                s = sum(edge_weights[offset + j] * y for j, y in enumerate(outs))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class DartsSupernet(CellTypeSupernet):
    """DARTS / PC-DARTS search network (stem, ``layers`` cells with reductions at 1/3 and 2/3, GAP, linear).

    Args:
        C, num_classes, layers: width, classes and number of cells (quark0 defaults 16, 10, 8).
        primitives: op names for every edge (default: the 8 DARTS primitives), or a dict
            ``{"normal": [...14 lists...], "reduce": [...]}`` with per-edge lists (RobustDARTS).
        partial_k: PC-DARTS channel proportion (None: full channels, as DARTS).
        mixing: how α (and β) become edge weights (:mod:`fastdarts.gates`).
        backend, recompute: mixed-op backend; ``recompute`` recomputes each whole cell
            (preprocessing included) in backward, keeping only the cell inputs.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, *, primitives=None,
                 partial_k: int | None = None, mixing: Mixing | None = None, steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3, backend: str = "auto", recompute: bool = False):
        super().__init__()
        self._init_arch()
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._steps, self._multiplier = steps, multiplier
        self.recompute = recompute
        self.mixing = mixing or Mixing()
        E = num_edges(steps)
        self.edge_primitives = _per_edge_primitives(primitives, E)

        C_curr = stem_multiplier * C
        reduction_prev = self._build_stem(in_channels, C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            kind = "reduce" if reduction else "normal"
            cell = SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                              self.edge_primitives[kind], partial_k, backend)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self._register_alphas(E)
        if self.mixing.uses_betas:
            self.register_arch("betas_normal", self.mixing.init_beta(E, steps))
            self.register_arch("betas_reduce", self.mixing.init_beta(E, steps))

    def _build_stem(self, in_channels: int, C_stem: int) -> bool:
        """quark0's CIFAR stem (3×3 conv + BN at full resolution, ``self.stem``). Returns whether cell 0's
        first input ``s0`` has twice the resolution of ``s1`` (its ``reduction_prev``): no, both are the stem."""
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        return False

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs ``(s0, s1)`` of cell 0."""
        s = self.stem(x)
        return s, s

    def forward(self, x: torch.Tensor, cell_weights=None) -> torch.Tensor:
        """Logits of ``x``. ``cell_weights``: optional precomputed weights, either a dict by cell type
        (as :meth:`cell_weights` returns) or a list with one :class:`CellWeights` per cell (Λ-DARTS
        gives every cell its own copy)."""
        weights = self._weights_per_cell(x, cell_weights)
        s0, s1 = self._stem_forward(x)
        for cell, cw in zip(self.cells, weights):
            args = (s0, s1, cw.weights, cw.edge_weights, cw.active)
            out = recompute_forward(cell, cell, *args) if self.recompute else cell(*args)
            s0, s1 = s1, out
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))

    def genotype(self) -> Genotype:
        """Derive the genotype from the mixing's scores (softmax(α), α·β, ...) with the mixing's
        ``genotype_rule``: "darts" (default) or "topk_pairs" (GDAS / PR-DARTS)."""
        rule = getattr(self.mixing, "genotype_rule", "darts")
        return self._derive_genotype({"darts": derive_darts_cell, "topk_pairs": derive_topk_pairs_cell}[rule])


def _per_edge_primitives(primitives, E: int) -> dict[str, list[tuple[str, ...]]]:
    if primitives is None:
        primitives = DARTS_PRIMITIVES
    if isinstance(primitives, dict):
        out = {}
        for kind in ("normal", "reduce"):
            edges = primitives[kind]
            if len(edges) != E:
                raise ValueError(f"{kind} primitives: expected {E} per-edge lists, got {len(edges)}")
            out[kind] = [tuple(p) for p in edges]
        return out
    return {kind: [tuple(primitives)] * E for kind in ("normal", "reduce")}


# ----------------------------------------------------------------------------------------------
# Discrete evaluation network (quark0/darts cnn/model.py)


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (not in place)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    def __init__(self, genotype: Genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        gene, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal,
                                                                                   genotype.normal_concat)
        op_names, indices = zip(*gene)
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(concat)
        self._ops = nn.ModuleList()
        for name, index in zip(op_names, indices):
            if name not in OPS:
                raise ValueError(f"genotype uses unknown op {name!r}")
            self._ops.append(OPS[name](C, 2 if reduction and index < 2 else 1, True))
        self._indices = list(indices)

    def forward(self, s0, s1, drop_prob: float):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            hs = []
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """quark0's CIFAR auxiliary head (for 8×8 inputs); smaller maps are pooled adaptively to 2×2.

    ``pool_stride`` and ``last_bn`` (the BatchNorm after the 768-channel convolution) are the two
    places where quark0's ImageNet head differs (:class:`AuxiliaryHeadImageNet`).
    """

    def __init__(self, C: int, num_classes: int, pool_stride: int = 3, last_bn: bool = True):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            *([nn.BatchNorm2d(768)] if last_bn else []),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        if x.shape[-1] < 5:
            x = F.adaptive_avg_pool2d(F.relu(x), 2)
            x = self.features[2:](x)
        else:
            x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class _EvalNetwork(nn.Module):
    """The cell stack quark0's ``NetworkCIFAR`` and ``NetworkImageNet`` share: ``layers`` cells, the
    ones at ``layers // 3`` and ``2 * layers // 3`` reducing (and doubling C), the auxiliary head after
    the second, global pooling and the classifier. Subclasses build their stem, then call
    :meth:`_build_cells`, and run :meth:`_run_cells` on the stem's two outputs."""

    def __init__(self, layers: int, auxiliary: bool, drop_path_prob: float):
        super().__init__()
        self._layers = layers
        self._auxiliary = auxiliary
        self.drop_path_prob = drop_path_prob

    def _build_cells(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C_curr: int, reduction_prev: bool,
                     num_classes: int, head_cls) -> None:
        self.cells = nn.ModuleList()
        C_aux = None
        for i in range(self._layers):
            reduction = i in (self._layers // 3, 2 * self._layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * self._layers // 3:
                C_aux = C_prev
        if self._auxiliary:
            self.auxiliary_head = head_cls(C_aux, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1)), logits_aux


class NetworkCIFAR(_EvalNetwork):
    """The discrete DARTS network (``forward`` returns ``(logits, aux_logits or None)``)."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__(layers, auxiliary, drop_path_prob)
        C_stem = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self._build_cells(genotype, C_stem, C_stem, C, False, num_classes, AuxiliaryHead)

    def forward(self, x):
        s = self.stem(x)
        return self._run_cells(s, s)


class AuxiliaryHeadImageNet(AuxiliaryHead):
    """quark0's ImageNet auxiliary head (``model.py`` ``AuxiliaryHeadImageNet``), for the 7×7 maps after
    the second reduction at 224 px: average pooling with stride 2; like the CIFAR head, maps under
    5 px are pooled adaptively to 2×2.

    ⚠ quark0 left out the BatchNorm after the 768-channel convolution ("omitted in my earlier
    implementation due to a typo", kept out for the paper's experiments); so does this head.
    """

    def __init__(self, C: int, num_classes: int):
        super().__init__(C, num_classes, pool_stride=2, last_bn=False)


class NetworkImageNet(_EvalNetwork):
    """quark0's discrete ImageNet network (``forward`` returns ``(logits, aux_logits or None)``).

    ``stem0`` = Conv3×3 s2 (3 → C/2), BN, ReLU, Conv3×3 s2 (→ C), BN; ``stem1`` = ReLU, Conv3×3 s2, BN:
    cell 0 sees 1/4 and 1/8 of the input side and reduces the first (``reduction_prev``). quark0 pools
    the last 7×7 maps with ``AvgPool2d(7)`` (224 px only); the global average here is the same mean
    and takes other sizes (multiples of 32, at least 64 px).
    """

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, drop_path_prob: float = 0.0):
        super().__init__(layers, auxiliary, drop_path_prob)
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self._build_cells(genotype, C, C, C, True, num_classes, AuxiliaryHeadImageNet)

    def forward(self, x):
        s0 = self.stem0(x)
        return self._run_cells(s0, self.stem1(s0))
