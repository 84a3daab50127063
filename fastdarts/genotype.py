"""Genotypes: derivation rules and JSON files (never ``eval``)."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from typing import Sequence

import torch

_DartsTuple = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")


class Genotype(_DartsTuple):
    """A DARTS-space genotype, field-compatible with quark0/darts' ``Genotype`` namedtuple.

    ``normal``/``reduce``: lists of ``(op_name, input_index)`` pairs, two per node;
    ``*_concat``: node indices concatenated into the cell output.
    """

    space = "darts"

    def to_dict(self) -> dict:
        return {
            "space": self.space,
            "normal": [[op, int(j)] for op, j in self.normal],
            "normal_concat": [int(i) for i in self.normal_concat],
            "reduce": [[op, int(j)] for op, j in self.reduce],
            "reduce_concat": [int(i) for i in self.reduce_concat],
        }

    def save(self, path: str) -> None:
        save_genotype(self, path)


class NB201Genotype(tuple):
    """A NAS-Bench-201 cell: for nodes 1..3, the ``(op_name, input_node)`` of each incoming edge."""

    space = "nb201"

    def __new__(cls, nodes: Sequence[Sequence[tuple[str, int]]]):
        return super().__new__(cls, tuple(tuple((str(op), int(j)) for op, j in node) for node in nodes))

    def tostr(self) -> str:
        """The NAS-Bench-201 architecture string, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self)

    def to_dict(self) -> dict:
        return {"space": self.space, "arch": self.tostr(), "nodes": [[[op, j] for op, j in node] for node in self]}

    def save(self, path: str) -> None:
        save_genotype(self, path)


def derive_darts_cell(scores: torch.Tensor, primitives: Sequence[Sequence[str]], steps: int = 4) -> list:
    """DARTS rule: per node keep the 2 incoming edges with the best non-``none`` score, and on each
    the arg-max op other than ``none``.

    ``scores``: ``[E, K]`` (softmax(α), or α·β, ...); ``primitives[e]``: op names of edge ``e``
    (edges may differ, as in RobustDARTS S1). Ties keep the lower index, as Python's stable
    ``sorted`` does in quark0/darts.
    """
    scores = scores.detach().float().cpu()
    gene, start = [], 0
    for i in range(steps):
        n = i + 2
        best = []
        for j in range(n):
            e = start + j
            allowed = [k for k, p in enumerate(primitives[e]) if p != "none"]
            if not allowed:
                raise ValueError(f"edge {e} has only 'none' and cannot be chosen")
            k_best = max(allowed, key=lambda k: (scores[e, k].item(), -k))
            best.append((scores[e, k_best].item(), j, primitives[e][k_best]))
        edges = sorted(range(n), key=lambda j: -best[j][0])[:2]
        gene += [(best[j][2], j) for j in edges]
        start += n
    return gene


def derive_topk_pairs_cell(scores: torch.Tensor, primitives: Sequence[Sequence[str]], steps: int = 4) -> list:
    """GDAS/PR-DARTS rule: per node, the 2 best (op, input) pairs over all incoming edges, ``none``
    excluded; both may come from the same input."""
    scores = scores.detach().float().cpu()
    gene, start = [], 0
    for i in range(steps):
        cands = []
        for j in range(i + 2):
            e = start + j
            cands += [(scores[e, k].item(), j, p) for k, p in enumerate(primitives[e]) if p != "none"]
        cands.sort(key=lambda c: -c[0])
        gene += [(p, j) for _, j, p in cands[:2]]
        start += i + 2
    return gene


def derive_nb201(scores: torch.Tensor, primitives: Sequence[str], max_nodes: int = 4) -> NB201Genotype:
    """NAS-Bench-201 rule: arg-max over all ops (``none`` allowed) on each of the 6 edges."""
    scores = scores.detach().float().cpu()
    nodes, e = [], 0
    for i in range(1, max_nodes):
        node = []
        for j in range(i):
            node.append((primitives[int(scores[e].argmax())], j))
            e += 1
        nodes.append(node)
    return NB201Genotype(nodes)


def genotype_from_dict(d: dict):
    """Rebuild a genotype from its JSON dict, validating the fields."""
    if not isinstance(d, dict):
        raise ValueError(f"a genotype must be a JSON object, got {type(d).__name__}: {d!r}")
    space = d.get("space", "darts")
    if space == "nb201":
        try:
            return NB201Genotype([[(op, j) for op, j in node] for node in d["nodes"]])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a NAS-Bench-201 genotype dict ({err!r}): {d}") from err
    try:
        return Genotype(
            normal=[(str(op), int(j)) for op, j in d["normal"]],
            normal_concat=[int(i) for i in d["normal_concat"]],
            reduce=[(str(op), int(j)) for op, j in d["reduce"]],
            reduce_concat=[int(i) for i in d["reduce_concat"]],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a DARTS genotype dict ({err}): {d}") from err


def save_genotype(genotype, path: str) -> None:
    """Write a genotype as JSON (atomically: a temporary file then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(genotype.to_dict(), f, indent=1)
    os.replace(tmp, path)


def load_genotype(path: str):
    """Read a genotype JSON file written by :func:`save_genotype` (or ``fastdarts search``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"genotype file {path} not found")
    with open(path) as f:
        try:
            d = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"genotype file {path} is not valid JSON: {err}") from err
    return genotype_from_dict(d)
