"""Seeds and seeded draws: every random choice of the data pipeline starts here.

A seed is :func:`_mix` of the run seed, a stream id (which loader), a purpose tag (which decision)
and the epoch / batch / step index, so a choice never depends on what was drawn before it.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream ids (which loader) and purpose tags (which random decision); mixed into every seed.
_STREAM_TRAIN, _STREAM_VALID, _STREAM_TEST = 1, 2, 3
_TAG_SHUFFLE, _TAG_AUGMENT, _TAG_RANDOM, _TAG_RANDOM_AUG, _TAG_SPLIT, _TAG_SUBSET = 11, 12, 13, 14, 15, 16


def _mix(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy SeedSequence hashing; platform independent)."""
    ss = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys])
    return int(ss.generate_state(1, np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_mix(*keys))
    return g


def _seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _stratified_pick(labels: torch.Tensor, frac_of, g: torch.Generator, pool: torch.Tensor | None = None,
                     at_least_one: bool = False) -> torch.Tensor:
    """Per class ``c``, pick ``frac_of(c)`` random indices among ``pool`` (default: all) with label ``c``."""
    pool = torch.arange(labels.numel()) if pool is None else pool
    pool_labels = labels.index_select(0, pool)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = pool[pool_labels == c]
        k = min(int(frac_of(c)), members.numel())
        if at_least_one and k == 0 and members.numel() >= 2:
            k = 1
        if k > 0:
            chosen.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values


def _class_counts(labels: torch.Tensor) -> dict[int, int]:
    values, counts = torch.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
