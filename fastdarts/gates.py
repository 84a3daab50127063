"""How an edge turns architecture tensors into mixing weights (softmax, simplex, sampled gates).

A :class:`Mixing` is owned by a supernet. Once per forward and per cell type it maps the
architecture tensors (α: ``[E, K]`` op logits or simplex rows, optionally β: ``[E]`` edge
weights) to a :class:`CellWeights`, shared by every cell of that type.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastdarts.spaces.common import node_edge_slices


@dataclass
class CellWeights:
    """Weights used by the cells of one type for one forward.

    ``weights``: ``[E, K]`` float32 op weights. ``edge_weights``: ``[E]`` or None (PC-DARTS β).
    ``active``: per edge, the candidate indices to compute (sampled gates), or None for all.
    ``edge_bias``: ``[E]`` scalars added to each edge output, or None (GDAS adds the zero-valued
    sum of the unselected straight-through gates so that every logit receives a gradient).
    """

    weights: torch.Tensor
    edge_weights: torch.Tensor | None = None
    active: list[tuple[int, ...]] | None = None
    edge_bias: torch.Tensor | None = None


def normalize_per_node(beta: torch.Tensor, steps: int, fn) -> torch.Tensor:
    """Apply ``fn`` (softmax or sum-normalisation) to β within each node's incoming edges."""
    return torch.cat([fn(beta[s]) for s in node_edge_slices(steps)], dim=0)


class Mixing:
    """DARTS: ``weights = softmax(α)`` per edge; α initialised ``1e-3·N(0, 1)``."""

    uses_betas = False

    def init_alpha(self, num_edges: int, num_ops: int) -> torch.Tensor:
        return 1e-3 * torch.randn(num_edges, num_ops)

    def init_beta(self, num_edges: int, steps: int) -> torch.Tensor:
        return 1e-3 * torch.randn(num_edges)

    def cell_weights(self, alpha: torch.Tensor, beta: torch.Tensor | None, steps: int) -> CellWeights:
        return CellWeights(F.softmax(alpha, dim=-1))

    def genotype_weights(self, alpha: torch.Tensor, beta: torch.Tensor | None, steps: int) -> torch.Tensor:
        """Per-edge, per-op scores that the DARTS genotype rule ranks."""
        return self.cell_weights(alpha, beta, steps).weights


class PartialChannelMixing(Mixing):
    """PC-DARTS: ``softmax(α)`` per edge and ``softmax(β)`` over each node's incoming edges."""

    uses_betas = True

    def cell_weights(self, alpha, beta, steps):
        return CellWeights(F.softmax(alpha, dim=-1), normalize_per_node(beta, steps, lambda b: F.softmax(b, dim=-1)))

    def genotype_weights(self, alpha, beta, steps):
        cw = self.cell_weights(alpha, beta, steps)
        return cw.weights * cw.edge_weights[:, None]


class SimplexMixing(Mixing):
    """GAEA: α rows live on the simplex and are used directly (no softmax); β sums to 1 per node.

    α starts uniform (1/K); β starts at 1/(number of inputs of the node) (liamcli/gaea_release).
    """

    def __init__(self, uses_betas: bool = False):
        self.uses_betas = uses_betas

    def init_alpha(self, num_edges, num_ops):
        return torch.full((num_edges, num_ops), 1.0 / num_ops)

    def init_beta(self, num_edges, steps):
        return torch.cat([torch.full((s.stop - s.start,), 1.0 / (s.stop - s.start)) for s in node_edge_slices(steps)])

    def cell_weights(self, alpha, beta, steps):
        return CellWeights(alpha, beta if self.uses_betas else None)

    def genotype_weights(self, alpha, beta, steps):
        return alpha * beta[:, None] if self.uses_betas else alpha
