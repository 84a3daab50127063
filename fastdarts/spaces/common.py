"""Pieces shared by the search spaces: architecture-tensor ownership and node grouping of edges."""

from __future__ import annotations

import torch
import torch.nn as nn


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
