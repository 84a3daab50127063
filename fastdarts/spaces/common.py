"""Pieces shared by the search spaces: architecture-tensor ownership and node grouping of edges."""

from __future__ import annotations

import torch
import torch.nn as nn

from fastdarts.genotype import Genotype


def node_edge_slices(steps: int) -> list[slice]:
    """Edge index ranges of each intermediate node of a DARTS cell: [0:2], [2:5], [5:9], [9:14]."""
    slices, start = [], 0
    for i in range(steps):
        slices.append(slice(start, start + i + 2))
        start += i + 2
    return slices


class ArchMixin(nn.Module):
    """Holds architecture tensors as plain leaf tensors, outside ``state_dict`` and ``parameters()``.

    quark0/darts and PC-DARTS keep α and β as ``Variable``s, not ``nn.Parameter``s, so their
    state_dicts have no architecture keys; keeping them out lets an original state_dict load
    with ``strict=True`` and keeps them out of the weight optimizer. ``.to()``/``.cuda()``/
    ``.double()`` move them in place, so optimizers built before a move keep working.
    """

    def _init_arch(self) -> None:
        self._arch_names: list[str] = []

    def register_arch(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().clone().requires_grad_(True)
        object.__setattr__(self, name, value)
        self._arch_names.append(name)

    def arch_parameters(self) -> list[torch.Tensor]:
        """Architecture tensors in the original code's order."""
        return [getattr(self, n) for n in self._arch_names]

    def arch_names(self) -> list[str]:
        return list(self._arch_names)

    def arch_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n).detach().clone() for n in self._arch_names}

    def load_arch_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self._arch_names) - set(state)
        unexpected = set(state) - set(self._arch_names)
        if missing or unexpected:
            raise KeyError(f"architecture state mismatch: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        with torch.no_grad():
            for n in self._arch_names:
                t = getattr(self, n)
                if state[n].shape != t.shape:
                    raise ValueError(f"architecture tensor {n!r}: expected shape {tuple(t.shape)}, "
                                     f"got {tuple(state[n].shape)}")
                t.copy_(state[n])

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for n in getattr(self, "_arch_names", []):
            t = getattr(self, n)
            with torch.no_grad():
                t.data = fn(t.data)
        return self


class CellTypeSupernet(ArchMixin):
    """What the supernets with a normal and a reduce cell type share (quark0/PC-DARTS, ImageNet, NASNet-super).

    Subclasses set ``mixing``, ``edge_primitives`` (per cell type, one op list per edge), ``cells``
    (each with a ``reduction`` flag), ``_steps`` and ``_multiplier``.
    """

    CELL_TYPES = ("normal", "reduce")

    def _register_alphas(self, num_edges: int) -> None:
        """Register ``alphas_normal`` and ``alphas_reduce`` (``num_edges`` × candidates, the mixing's init)."""
        K = {len(p) for kind in self.CELL_TYPES for p in self.edge_primitives[kind]}
        if len(K) != 1:
            raise ValueError(f"every edge must have the same number of candidates, got {sorted(K)}")
        num_ops = K.pop()
        for kind in self.CELL_TYPES:
            self.register_arch(f"alphas_{kind}", self.mixing.init_alpha(num_edges, num_ops))

    def _arch(self, kind: str):
        beta = getattr(self, f"betas_{kind}") if self.mixing.uses_betas else None
        return getattr(self, f"alphas_{kind}"), beta

    def cell_weights(self):
        """This forward's weights of both cell types (samplers draw here, once per forward)."""
        return self.mixing.all_cell_weights({kind: self._arch(kind) for kind in self.CELL_TYPES}, self._steps)

    def _weights_per_cell(self, x: torch.Tensor, cell_weights) -> list:
        """One ``CellWeights`` per cell: drawn now, or taken from ``cell_weights`` (a dict by cell type,
        as :meth:`cell_weights` returns, or a list with one entry per cell)."""
        if x.dim() != 4:
            raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
        weights = self.cell_weights() if cell_weights is None else cell_weights
        if isinstance(weights, (list, tuple)):
            if len(weights) != len(self.cells):
                raise ValueError(f"got {len(weights)} per-cell weights for {len(self.cells)} cells")
            return list(weights)
        return [weights["reduce" if cell.reduction else "normal"] for cell in self.cells]

    def _derive_genotype(self, derive) -> Genotype:
        """The genotype of both cell types, each derived by ``derive(scores, edge_primitives, steps)``."""
        with torch.no_grad():
            genes = {kind: derive(self.mixing.genotype_weights(*self._arch(kind), self._steps),
                                  self.edge_primitives[kind], self._steps)
                     for kind in self.CELL_TYPES}
        concat = list(range(2 + self._steps - self._multiplier, self._steps + 2))
        return Genotype(normal=genes["normal"], normal_concat=concat, reduce=genes["reduce"], reduce_concat=concat)
