"""What ``fastdarts search`` prints at the end: the cells, a collapse check, the plots, next commands."""

from __future__ import annotations

import functools
import glob
import os
import shlex

from fastdarts.arch_history import darts_input_name
from fastdarts.genotype import Genotype, NB201Genotype

# Fraction of parameter-free ops in the normal cell from which the summary warns of the collapse
# (5 of 8: the DARTS failure mode RobustDARTS and PR-DARTS describe, cells of mostly skips and pools).
COLLAPSE_FRACTION = 5 / 8
COLLAPSE_HINT = ("the normal cell collapsed to parameter-free ops, a known DARTS failure; see "
                 "`fastdarts search prdarts-cifar10` or the collapse study (examples/collapse_study.py)")


@functools.lru_cache(maxsize=None)
def is_parameter_free(op: str) -> bool:
    """Whether ``op`` (a name in :data:`fastdarts.ops.OPS`) has no learnable parameters at stride 1.

    Built from the op table itself, so registered custom ops are classified too: ``none``,
    ``skip_connect``, the pools and ``noise`` are parameter-free; the convolutions are not.
    """
    from fastdarts.ops import OPS

    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    return not any(True for _ in OPS[op](4, 1, True).parameters())


def parameter_free_count(genotype) -> tuple[int, int]:
    """(parameter-free ops, all ops) of the normal cell of a DARTS genotype, or of a NAS-Bench-201 cell."""
    ops = [op for node in genotype for op, _ in node] if isinstance(genotype, NB201Genotype) else \
        [op for op, _ in genotype.normal]
    return sum(is_parameter_free(op) for op in ops), len(ops)


def collapsed(genotype) -> bool:
    """True when at least :data:`COLLAPSE_FRACTION` of the normal cell's ops are parameter-free."""
    free, total = parameter_free_count(genotype)
    return total > 0 and free >= COLLAPSE_FRACTION * total


def cell_table(genotype) -> str:
    """The derived cells as a compact text table: one row per node, its two inputs and ops per cell type."""
    if isinstance(genotype, NB201Genotype):
        rows = [("node", "inputs (op ← node)")]
        rows += [(f"n{i + 1}", ", ".join(f"{op} ← n{j}" for op, j in node)) for i, node in enumerate(genotype)]
    else:
        rows = [("node", "normal cell", "reduce cell")]
        for i in range(len(genotype.normal) // 2):
            rows.append((f"n{i}", *(", ".join(f"{op} ← {darts_input_name(j)}" for op, j in
                                              getattr(genotype, kind)[2 * i: 2 * i + 2])
                                    for kind in ("normal", "reduce"))))
        rows.append(("out", *(f"concat({', '.join(darts_input_name(j) for j in getattr(genotype, f'{kind}_concat'))})"
                              for kind in ("normal", "reduce"))))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def search_summary(genotype, run_dir: str, test_acc: float | None = None) -> str:
    """The end-of-search report: cells, parameter-free count (and the collapse hint), plots, next commands."""
    free, total = parameter_free_count(genotype)
    where = "the cell" if isinstance(genotype, NB201Genotype) else "the normal cell"
    lines = ["", "derived genotype:", cell_table(genotype), "",
             f"parameter-free ops in {where}: {free} of {total}"]
    if isinstance(genotype, Genotype) and collapsed(genotype):
        lines.append(f"hint: {COLLAPSE_HINT}")
    if test_acc is not None:
        lines.append(f"held-out accuracy of the supernet: {test_acc:.2f}%")
    plots = sorted(glob.glob(os.path.join(run_dir, "plots", "*.png")))
    if plots:
        lines += ["", f"plots ({len(plots)}, in {os.path.join(run_dir, 'plots')}):"]
        lines += [f"  {os.path.basename(p)}" for p in plots]
    commands = [(f"fastdarts plot {shlex.quote(run_dir)}", "redraw the plots"),
                (f"fastdarts train {shlex.quote(os.path.join(run_dir, 'genotype.json'))}", "retrain the derived cell")]
    width = max(len(c) for c, _ in commands)
    lines += ["", "next:"] + [f"  {c.ljust(width)}  # {why}" for c, why in commands]
    return "\n".join(lines)
