"""Genotypes: derivation rules and JSON files (never ``eval``)."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from typing import Sequence

import torch

from fastdarts.validate import did_you_mean

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


def _check_op(op, where: str) -> None:
    from fastdarts.ops import OPS

    if not isinstance(op, str) or op not in OPS:
        close = did_you_mean(op, OPS)
        raise ValueError(f"{where} uses unknown op {op!r}{close}" if close else
                         f"{where} uses unknown op {op!r} (known ops: {', '.join(sorted(OPS))})")


def _check_index(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    return value


def _check_darts_cell(gene, concat, cell: str, src: str) -> None:
    if not isinstance(gene, (list, tuple)) or not gene or len(gene) % 2:
        n = len(gene) if isinstance(gene, (list, tuple)) else gene
        raise ValueError(f"{src}: '{cell}' must list 2 (op, input) pairs per node, got {n!r} pairs")
    steps = len(gene) // 2
    for p, pair in enumerate(gene):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"{src}: {cell}[{p}] must be an [op, input] pair, got {pair!r}")
        op, j = pair
        _check_op(op, f"{src}: {cell}[{p}]")
        node = p // 2
        # States 0 and 1 are the cell inputs; node i writes state i + 2 and may read any earlier state.
        if not 0 <= _check_index(j, f"{src}: input of {cell}[{p}]") <= node + 1:
            raise ValueError(f"{src}: {cell}[{p}] = [{op!r}, {j}] reads state {j}, but node {node} of a "
                             f"{steps}-node cell can only read states 0..{node + 1} (0, 1: the cell inputs)")
    if not isinstance(concat, (list, tuple, range)) or not concat:
        raise ValueError(f"{src}: '{cell}_concat' must be a non-empty list of states, got {concat!r}")
    states = [_check_index(i, f"{src}: {cell}_concat entry") for i in concat]
    if len(set(states)) != len(states) or not all(0 <= i < steps + 2 for i in states):
        raise ValueError(f"{src}: '{cell}_concat' {list(states)} must list distinct states in 0..{steps + 1} "
                         f"of a {steps}-node cell (usually {list(range(2, steps + 2))})")


# NAS-Bench-201: node i (1..3) has one edge from each earlier node: 1 + 2 + 3 = 6 edges.
NB201_NODES = 3
NB201_EDGES = NB201_NODES * (NB201_NODES + 1) // 2


def _check_nb201_nodes(nodes, src: str) -> None:
    if not isinstance(nodes, (list, tuple)):
        raise ValueError(f"{src}: NAS-Bench-201 'nodes' must be a list of nodes, got {nodes!r}")
    edges = sum(len(n) if isinstance(n, (list, tuple)) else 1 for n in nodes)
    shape = [len(n) if isinstance(n, (list, tuple)) else n for n in nodes]
    if len(nodes) != NB201_NODES or shape != list(range(1, NB201_NODES + 1)):
        raise ValueError(f"{src}: a NAS-Bench-201 cell has {NB201_EDGES} edges (1, 2, 3 into nodes 1, 2, 3), "
                         f"got {edges} edges shaped {shape}")
    for i, node in enumerate(nodes, start=1):
        seen = []
        for pair in node:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{src}: node {i} edges must be [op, input] pairs, got {pair!r}")
            op, j = pair
            _check_op(op, f"{src}: node {i}")
            if not 0 <= _check_index(j, f"{src}: input of node {i}") < i:
                raise ValueError(f"{src}: node {i} takes input {j}, but it can only read nodes 0..{i - 1}")
            seen.append(j)
        if sorted(seen) != list(range(i)):
            raise ValueError(f"{src}: node {i} must take each of nodes 0..{i - 1} once, got inputs {seen}")


def parse_nb201(arch: str, src: str = "NAS-Bench-201 string") -> NB201Genotype:
    """Parse and validate ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (never ``eval``)."""
    if not isinstance(arch, str):
        raise ValueError(f"{src}: a NAS-Bench-201 architecture must be a string, got {arch!r}")
    nodes = []
    for node_str in arch.split("+"):
        node = []
        for item in filter(None, node_str.split("|")):
            op, sep, j = item.rpartition("~")
            if not sep or not j.isdigit():
                raise ValueError(f"{src}: bad edge {item!r} in {arch!r}; edges are written op~input")
            node.append((op, int(j)))
        nodes.append(node)
    _check_nb201_nodes(nodes, src)
    return NB201Genotype(nodes)


def validate_genotype(genotype, src: str = "genotype") -> None:
    """Check a genotype's structure: known ops, inputs in range, concat lists, NB201 edge count.

    Raises:
        ValueError: naming the first problem (and ``src``, e.g. the file it came from).
        TypeError: for an object that is no genotype.
    """
    if isinstance(genotype, NB201Genotype):
        _check_nb201_nodes(genotype, src)
    elif isinstance(genotype, Genotype):
        _check_darts_cell(genotype.normal, genotype.normal_concat, "normal", src)
        _check_darts_cell(genotype.reduce, genotype.reduce_concat, "reduce", src)
    else:
        raise TypeError(f"{src}: expected a Genotype or NB201Genotype, got {type(genotype).__name__}")


_DARTS_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")


def genotype_from_dict(d: dict, src: str = "genotype"):
    """Rebuild a genotype from its JSON dict and validate it (:func:`validate_genotype`)."""
    if not isinstance(d, dict):
        raise ValueError(f"{src}: a genotype must be a JSON object, got {type(d).__name__}")
    space = d.get("space", "darts")
    if space == "nb201":
        if "nodes" not in d and "arch" not in d:
            raise ValueError(f"{src}: a NAS-Bench-201 genotype needs 'arch' (the |op~j|+... string) or 'nodes'")
        if "nodes" in d:
            _check_nb201_nodes(d["nodes"], src)
            g = NB201Genotype([[(op, j) for op, j in node] for node in d["nodes"]])
            if "arch" in d and d["arch"] != g.tostr():
                raise ValueError(f"{src}: 'arch' {d['arch']!r} and 'nodes' ({g.tostr()!r}) disagree")
            return g
        return parse_nb201(d["arch"], src)
    if space != "darts":
        raise ValueError(f"{src}: unknown genotype space {space!r}; expected 'darts' or 'nb201'")
    missing = [k for k in _DARTS_KEYS if k not in d]
    if missing:
        raise ValueError(f"{src} has no {', '.join(repr(k) for k in missing)} (a DARTS genotype needs "
                         f"{', '.join(_DARTS_KEYS)})")
    _check_darts_cell(d["normal"], d["normal_concat"], "normal", src)
    _check_darts_cell(d["reduce"], d["reduce_concat"], "reduce", src)
    return Genotype(
        normal=[(op, j) for op, j in d["normal"]], normal_concat=list(d["normal_concat"]),
        reduce=[(op, j) for op, j in d["reduce"]], reduce_concat=list(d["reduce_concat"]),
    )


def save_genotype(genotype, path: str) -> None:
    """Write a genotype as JSON (atomically: a temporary file then a rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(genotype.to_dict(), f, indent=1)
    os.replace(tmp, path)


def load_genotype(path: str):
    """Read and validate a genotype JSON file written by :func:`save_genotype` (or ``fastdarts search``).

    The file is parsed as JSON only (never ``eval``); see :func:`validate_genotype` for the checks.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "not found"
        raise FileNotFoundError(f"genotype file {path} {what}")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"genotype file {path} is not valid JSON ({err})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"genotype file {path} cannot be read ({type(err).__name__}: {err})") from err
    return genotype_from_dict(d, f"genotype file {path}")
