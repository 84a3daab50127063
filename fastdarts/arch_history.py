"""Named, normalised views of a supernet's architecture tensors, and their per-epoch history.

:func:`arch_views` turns a supernet's architecture tensors into what a person reads: per edge
and op, the weights the cells use (softmax(α) for DARTS, α itself on GAEA's simplex), the
probability that a sampled gate is open (PR-DARTS), and the per-node edge weights β of
PC-DARTS / GAEA-PC-DARTS, each with its edge labels ("n1←c_{k-1}") and op names.

:class:`ArchHistory` keeps these views for every epoch in ``RUN_DIR/arch_history.pt``
(a plain dict of lists, strings and tensors: ``torch.load(weights_only=True)`` reads it).
Entry ``t`` is the state after ``t`` epochs; entry 0 is the initialisation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastdarts.gates import (
    GumbelMixing,
    HardConcreteMixing,
    PartialChannelMixing,
    SimplexMixing,
    hard_concrete_prob_nonzero,
    normalize_per_node,
)

HISTORY_FILE = "arch_history.pt"
_FORMAT = 1


@dataclass
class ArchView:
    """One named architecture quantity of one cell type.

    ``kind`` is ``"ops"`` (``values``: ``[E, K]``, one row per edge, columns in α order) or
    ``"edges"`` (``values``: ``[E]``, one weight per edge). ``op_names[e]`` names the columns of
    edge ``e`` (RobustDARTS S1 has different ops on different edges).
    """

    name: str  # unique key, e.g. "normal", "normal/gate", "normal/beta", "cell" (NAS-Bench-201)
    cell: str  # "normal", "reduce" or "cell"
    quantity: str  # what the values are, e.g. "softmax(α)"
    kind: str  # "ops" | "edges"
    values: torch.Tensor
    edge_labels: list[str]
    op_names: list[tuple[str, ...]]

    def meta(self) -> dict:
        """Everything but the values (stored once per history)."""
        return {"name": self.name, "cell": self.cell, "quantity": self.quantity, "kind": self.kind,
                "edge_labels": list(self.edge_labels), "op_names": [list(p) for p in self.op_names]}


def steps_of(num_edges: int) -> int:
    """Intermediate nodes of a DARTS cell with ``num_edges`` edges (node i has i + 2 inputs)."""
    steps, total = 0, 0
    while total < num_edges:
        total += steps + 2
        steps += 1
    if total != num_edges:
        raise ValueError(f"{num_edges} edges do not make a DARTS cell (2 + 3 + ... inputs per node)")
    return steps


def darts_input_name(j: int) -> str:
    """Name of cell state ``j`` in the genotype's numbering: the two cell inputs, then nodes n0, n1, ..."""
    return ("c_{k-2}", "c_{k-1}")[j] if j < 2 else f"n{j - 2}"


def darts_edge_labels(num_edges: int) -> list[str]:
    """``"n{i}←{input}"`` for every edge of a DARTS cell, in α row order."""
    labels = []
    for i in range(steps_of(num_edges)):
        labels += [f"n{i}←{darts_input_name(j)}" for j in range(i + 2)]
    return labels


def nb201_edge_labels(max_nodes: int = 4) -> list[str]:
    """``"n{i}←n{j}"`` for the NAS-Bench-201 edges in D-X-Y's sorted order (node 0 is the cell input)."""
    return [f"n{i}←n{j}" for i, j in sorted(((i, j) for i in range(1, max_nodes) for j in range(i)),
                                             key=lambda e: f"{e[0]}<-{e[1]}")]


def _op_quantity(mixing) -> str:
    if isinstance(mixing, SimplexMixing):
        return "α (on the simplex)"
    if isinstance(mixing, GumbelMixing):
        # The arg-max of log_softmax(α) + Gumbel noise is op k with probability softmax(α)_k.
        return "softmax(α) = P(op sampled)"
    return "softmax(α)"


@torch.no_grad()
def arch_views(model) -> list[ArchView]:
    """The architecture of ``model`` (a fastdarts supernet) as named, normalised views.

    DARTS-space supernets give ``normal`` and ``reduce`` (edges × ops); with sampled PR-DARTS
    gates also ``normal/gate`` and ``reduce/gate`` (P(gate ≠ 0) at the current temperature); with
    edge weights β also ``normal/beta`` and ``reduce/beta``. The NAS-Bench-201 supernet gives
    ``cell``. Samplers are never called (no random draw, no RNG advance).

    Raises:
        ValueError: for a model without the architecture tensors of a fastdarts supernet.
    """
    names = model.arch_names()
    mixing = model.mixing
    if "alphas" in names:  # NAS-Bench-201: one cell type
        cells = {"cell": (model.alphas, None)}
        labels = nb201_edge_labels(model.max_nodes)
        prims = {"cell": [tuple(p) for p in model.edge_primitives["normal"]]}
    elif "alphas_normal" in names:
        cells = {kind: (getattr(model, f"alphas_{kind}"),
                        getattr(model, f"betas_{kind}") if f"betas_{kind}" in names else None)
                 for kind in ("normal", "reduce")}
        labels = darts_edge_labels(cells["normal"][0].shape[0])
        prims = {kind: [tuple(p) for p in model.edge_primitives[kind]] for kind in ("normal", "reduce")}
    else:
        raise ValueError(f"cannot read the architecture of {type(model).__name__}: expected architecture tensors "
                         f"'alphas' or 'alphas_normal', got {names}")
    views = []
    for cell, (alpha, beta) in cells.items():
        a = alpha.detach().float().cpu()
        if isinstance(mixing, SimplexMixing):
            ops = a
        else:
            ops = F.softmax(a, dim=-1)
        views.append(ArchView(cell, cell, _op_quantity(mixing), "ops", ops, labels, prims[cell]))
        if isinstance(mixing, HardConcreteMixing):
            # The quantity is stored once per history: the temperature of each entry is that epoch's τ.
            views.append(ArchView(f"{cell}/gate", cell, "P(gate≠0) at the epoch's temperature τ", "ops",
                                  hard_concrete_prob_nonzero(a, mixing.tau), labels, prims[cell]))
        if beta is not None:
            b = beta.detach().float().cpu()
            if isinstance(mixing, PartialChannelMixing):
                b, what = normalize_per_node(b, steps_of(b.numel()), lambda v: F.softmax(v, dim=-1)), "softmax(β)"
            else:  # GAEA: β is kept normalised per node by its optimiser
                what = "β"
            views.append(ArchView(f"{cell}/beta", cell, f"{what} over each node's inputs", "edges", b, labels,
                                  prims[cell]))
    return views


class ArchHistory:
    """The views of every epoch of a search, stored in ``RUN_DIR/arch_history.pt``.

    ``epochs[t]`` is the number of epochs completed when entry ``t`` was taken (0: the
    initialisation); ``values[name]`` is a tensor ``[T, ...]`` per view.
    """

    def __init__(self, meta: list[dict], epochs: list[int], values: dict[str, torch.Tensor]):
        self.meta = meta
        self.epochs = list(epochs)
        self.values = dict(values)

    @classmethod
    def empty(cls) -> "ArchHistory":
        return cls([], [], {})

    @classmethod
    def load(cls, path: str) -> "ArchHistory":
        """Read a history file written by :meth:`save`.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ValueError: when the file is not an architecture history.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"architecture history {path} not found")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for truncated files
            raise ValueError(f"architecture history {path} is corrupt or unreadable ({type(err).__name__})") from err
        if not isinstance(d, dict) or d.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a fastdarts architecture history (format {_FORMAT})")
        return cls(d["views"], d["epochs"], d["values"])

    @classmethod
    def resume(cls, path: str, epochs_done: int) -> "ArchHistory":
        """The history of a run resumed after ``epochs_done`` epochs: the file's entries up to that
        epoch (a crash between the history write and the checkpoint leaves one entry too many),
        or an empty history when the file does not exist."""
        if not os.path.isfile(path):
            return cls.empty()
        hist = cls.load(path)
        keep = [t for t, e in enumerate(hist.epochs) if e <= epochs_done]
        hist.epochs = [hist.epochs[t] for t in keep]
        hist.values = {k: v[keep] for k, v in hist.values.items()}
        return hist

    def append(self, epochs_done: int, views: list[ArchView]) -> None:
        """Add the state after ``epochs_done`` epochs (the first call fixes the view names)."""
        if not self.meta:
            self.meta = [v.meta() for v in views]
        if [m["name"] for m in self.meta] != [v.name for v in views]:
            raise ValueError(f"views {[v.name for v in views]} differ from the history's "
                             f"{[m['name'] for m in self.meta]}")
        self.epochs.append(int(epochs_done))
        for v in views:
            new = v.values.detach().float().cpu().unsqueeze(0)
            old = self.values.get(v.name)
            self.values[v.name] = new if old is None else torch.cat([old, new])

    def views_at(self, t: int = -1) -> list[ArchView]:
        """The views of entry ``t`` (default: the latest)."""
        return [ArchView(m["name"], m["cell"], m["quantity"], m["kind"], self.values[m["name"]][t],
                         list(m["edge_labels"]), [tuple(p) for p in m["op_names"]]) for m in self.meta]

    def save(self, path: str) -> None:
        """Write atomically (temporary file + rename)."""
        tmp = f"{path}.tmp"
        torch.save({"format": _FORMAT, "views": self.meta, "epochs": self.epochs, "values": self.values}, tmp)
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self.epochs)
