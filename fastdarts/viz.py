"""Pictures of a search: architecture heat maps and trajectories, cell diagrams, training curves.

``fastdarts plot RUN_DIR`` (:func:`plot_run`) writes into ``RUN_DIR/plots/``:

* ``alpha_<cell>.png``: the normalised architecture weights (edges × ops) of each cell type at
  the last epoch, annotated, with the ops the genotype kept outlined;
* ``trajectory_<cell>.png``: the same weights over the epochs, one panel per edge;
* ``gates_<cell>.png`` (PR-DARTS): P(gate ≠ 0) per edge and op; ``beta_<cell>.png`` (PC-DARTS,
  GAEA-PC-DARTS): the edge weights β, node × input;
* ``cell_<cell>.png``: the derived cell (``cell_nb201.png`` for NAS-Bench-201), drawn by graphviz
  when the ``dot`` program is installed, by matplotlib otherwise;
* ``curves.png``: loss and accuracy per epoch (search and retraining runs).

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot state), so the search loop can
log them to TensorBoard (:func:`log_arch_figures`) without touching a display.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import tempfile
from typing import Sequence

import torch
import yaml

from fastdarts.arch_history import HISTORY_FILE, ArchHistory, ArchView, darts_input_name
from fastdarts.genotype import Genotype, NB201Genotype, load_genotype

PLOTS_DIR = "plots"

# Parameter-free ops in greys and blues, convolutions in warm colours (same colour in every figure).
OP_COLOURS = {
    "none": "#b0b0b0", "skip_connect": "#4d4d4d", "max_pool_3x3": "#1f77b4", "avg_pool_3x3": "#17becf",
    "noise": "#8c564b", "sep_conv_3x3": "#d62728", "sep_conv_5x5": "#ff7f0e", "sep_conv_7x7": "#bcbd22",
    "dil_conv_3x3": "#2ca02c", "dil_conv_5x5": "#9467bd", "conv_7x1_1x7": "#e377c2",
    "nor_conv_1x1": "#9467bd", "nor_conv_3x3": "#d62728",
}
_SPARE = ("#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")


def op_colour(op: str) -> str:
    """The colour of ``op`` in every figure (registered custom ops get a spare colour by name)."""
    return OP_COLOURS.get(op) or _SPARE[sum(map(ord, op)) % len(_SPARE)]


def tex_label(label: str) -> str:
    """``"n1←c_{k-1}"`` with the cell inputs as mathtext subscripts, for tick labels."""
    return label.replace("c_{k-2}", "$c_{k-2}$").replace("c_{k-1}", "$c_{k-1}$")


def _figure(width: float, height: float):
    """A figure with its own Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _cmap(name: str):
    """A colour map drawing missing (NaN) cells light grey."""
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#eeeeee")


def _columns(op_names: Sequence[Sequence[str]]) -> list[str]:
    """All op names of a view, in first-appearance order (edges may differ, RobustDARTS S1)."""
    cols: list[str] = []
    for ops in op_names:
        cols += [p for p in ops if p not in cols]
    return cols


def _grid(view: ArchView) -> tuple[list[str], torch.Tensor]:
    """``[E, n_cols]`` matrix of an ``"ops"`` view over the union of op names; NaN where an edge lacks the op."""
    cols = _columns(view.op_names)
    grid = torch.full((len(view.op_names), len(cols)), math.nan)
    for e, ops in enumerate(view.op_names):
        for k, op in enumerate(ops):
            grid[e, cols.index(op)] = float(view.values[e, k])
    return cols, grid


def genotype_edges(genotype) -> dict[str, list[tuple[str, str]]]:
    """The ``(edge label, op)`` pairs a genotype keeps, per cell type: ``{"normal": [...], ...}``."""
    if isinstance(genotype, NB201Genotype):
        return {"cell": [(f"n{i + 1}←n{j}", op) for i, node in enumerate(genotype) for op, j in node]}
    return {kind: [(f"n{g // 2}←{darts_input_name(j)}", op) for g, (op, j) in enumerate(getattr(genotype, kind))]
            for kind in ("normal", "reduce")}


def heatmap_figure(view: ArchView, title: str, kept: Sequence[tuple[str, str]] = (), kept_note: str = ""):
    """Edges × ops heat map of an ``"ops"`` view, each cell annotated, ``kept`` (edge label, op) outlined
    (``kept_note`` says how the genotype ranked them, when not by these values alone)."""
    from matplotlib.patches import Rectangle

    cols, grid = _grid(view)
    E, K = grid.shape
    fig = _figure(2.4 + 0.95 * K, 1.7 + 0.36 * E)
    ax = fig.add_subplot()
    finite = grid[torch.isfinite(grid)]
    vmax = float(finite.max()) if finite.numel() else 1.0
    vmax = vmax if vmax > 0 else 1.0
    img = ax.imshow(grid.numpy(), cmap=_cmap("viridis"), vmin=0.0, vmax=vmax, aspect="auto")
    for e in range(E):
        for k in range(K):
            v = float(grid[e, k])
            if math.isfinite(v):
                ax.text(k, e, f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                        color="white" if v < 0.6 * vmax else "black")
    rows = {label: e for e, label in enumerate(view.edge_labels)}
    for label, op in kept:
        if label in rows and op in cols:
            ax.add_patch(Rectangle((cols.index(op) - 0.5, rows[label] - 0.5), 1, 1, fill=False, ec="#ff2d2d", lw=2))
    prev = None
    for e, label in enumerate(view.edge_labels):  # thin lines between the nodes' groups of edges
        node = label.split("←")[0]
        if prev is not None and node != prev:
            ax.axhline(e - 0.5, color="white", lw=1.5)
        prev = node
    ax.set_xticks(range(K), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(E), [tex_label(s) for s in view.edge_labels], fontsize=8)
    ax.set_xlabel("operation")
    ax.set_ylabel("edge (node ← input)")
    bar = fig.colorbar(img, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(view.quantity)
    ax.set_title(title + (f"\nred boxes: ops kept in the genotype{kept_note}" if kept else ""), fontsize=9)
    fig.tight_layout()
    return fig


def beta_figure(view: ArchView, title: str):
    """Node × input matrix of an ``"edges"`` view (β), annotated; blank where a node has no such input."""
    labels = view.edge_labels
    nodes = list(dict.fromkeys(s.split("←")[0] for s in labels))
    inputs = list(dict.fromkeys(s.split("←")[1] for s in labels))
    grid = torch.full((len(nodes), len(inputs)), math.nan)
    for e, s in enumerate(labels):
        n, j = s.split("←")
        grid[nodes.index(n), inputs.index(j)] = float(view.values[e])
    fig = _figure(2.6 + 0.95 * len(inputs), 1.9 + 0.5 * len(nodes))
    ax = fig.add_subplot()
    img = ax.imshow(grid.numpy(), cmap=_cmap("magma"), vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(len(nodes)):
        for c in range(len(inputs)):
            v = float(grid[r, c])
            if math.isfinite(v):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(inputs)), [tex_label(s) for s in inputs], fontsize=8)
    ax.set_yticks(range(len(nodes)), nodes, fontsize=8)
    ax.set_xlabel("input")
    ax.set_ylabel("node")
    bar = fig.colorbar(img, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(view.quantity)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def trajectory_figure(history: ArchHistory, name: str, title: str):
    """One panel per edge (rows: nodes, columns: inputs), one line per op, over the history's epochs."""
    from matplotlib.ticker import MaxNLocator

    meta = next(m for m in history.meta if m["name"] == name)
    values = history.values[name]  # [T, E, K]
    labels = meta["edge_labels"]
    nodes = list(dict.fromkeys(s.split("←")[0] for s in labels))
    per_node = {n: [e for e, s in enumerate(labels) if s.startswith(n + "←")] for n in nodes}
    ncols = max(len(v) for v in per_node.values())
    width, height = 2.3 * ncols + 0.6, 1.75 * len(nodes) + 1.5
    fig = _figure(width, height)
    axes = fig.subplots(len(nodes), ncols, sharex=True, sharey=True, squeeze=False)
    epochs = history.epochs
    handles = {}
    for r, n in enumerate(nodes):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(per_node[n]):
                ax.set_visible(False)
                continue
            e = per_node[n][c]
            for k, op in enumerate(meta["op_names"][e]):
                (line,) = ax.plot(epochs, values[:, e, k].numpy(), color=op_colour(op), lw=1.4,
                                  marker="o" if len(epochs) < 12 else None, ms=2.5)
                handles.setdefault(op, line)
            ax.set_title(tex_label(labels[e]), fontsize=8.5)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(meta["quantity"], fontsize=7)
            if r == len(nodes) - 1 or c >= len(per_node.get(nodes[min(r + 1, len(nodes) - 1)], [])):
                ax.set_xlabel("epoch", fontsize=7)
                ax.tick_params(labelbottom=True)
    rows = math.ceil(len(handles) / 4)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 4), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    # Fixed margins in inches (tight_layout costs ~1 s per figure of 20 panels here): title, legend rows,
    # tick labels and the y label on the left.
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, top=1 - 0.75 / height,
                        bottom=(0.55 + 0.2 * rows) / height, hspace=0.45, wspace=0.12)
    return fig


# ---------------------------------------------------------------------------------- cell diagrams


def _darts_cell_spec(genotype: Genotype, cell: str):
    """(state names, op edges (src, dst, op), output name, concatenated states) of a DARTS cell."""
    gene = getattr(genotype, cell)
    concat = list(getattr(genotype, f"{cell}_concat"))
    steps = len(gene) // 2
    states = [darts_input_name(j) for j in range(steps + 2)]
    edges = [(states[j], states[g // 2 + 2], op) for g, (op, j) in enumerate(gene)]
    return states, edges, "c_{k}", [states[i] for i in concat]


def _nb201_cell_spec(genotype: NB201Genotype):
    states = [f"n{i}" for i in range(len(genotype) + 1)]
    edges = [(f"n{j}", f"n{i + 1}", op) for i, node in enumerate(genotype) for op, j in node]
    return states, edges


def cell_dot(genotype, cell: str = "normal", title: str = "") -> str:
    """Graphviz DOT source of a derived cell (DARTS ``cell`` = "normal"/"reduce", or a NAS-Bench-201 genotype)."""
    def q(s: str) -> str:
        return '"' + s.replace('"', r"\"") + '"'

    lines = ["digraph cell {", "  rankdir=LR; fontname=Helvetica; labelloc=t;",
             f"  label={q(title)};",
             "  node [shape=circle, style=filled, fontname=Helvetica, fillcolor=\"#dde8f5\", fixedsize=true, "
             "width=0.7];",
             "  edge [fontname=Helvetica, fontsize=11];"]
    if isinstance(genotype, NB201Genotype):
        states, edges = _nb201_cell_spec(genotype)
        lines.append(f"  {q(states[0])} [fillcolor=\"#a9d18e\"]; {q(states[-1])} [fillcolor=\"#ffe699\"];")
        for src, dst, op in edges:
            style = ", style=dashed" if op == "none" else ""
            lines.append(f"  {q(src)} -> {q(dst)} [label={q(op)}, color={q(op_colour(op))}{style}];")
    else:
        states, edges, out, concat = _darts_cell_spec(genotype, cell)
        for s in states[:2]:
            lines.append(f"  {q(s)} [label={q(s.replace('_{', '[').replace('}', ']'))}, fillcolor=\"#a9d18e\"];")
        lines.append(f"  {q(out)} [label=\"c[k]\", fillcolor=\"#ffe699\"];")
        for src, dst, op in edges:
            lines.append(f"  {q(src)} -> {q(dst)} [label={q(op)}, color={q(op_colour(op))}, penwidth=2];")
        for s in concat:
            lines.append(f"  {q(s)} -> {q(out)} [color=gray60];")
    lines.append("}")
    return "\n".join(lines)


def _place_labels(ax, fig, items, avoid):
    """Place each ``(text, candidate points, colour)`` at its first candidate whose box overlaps no
    earlier label or ``avoid`` box (display coordinates); the least-overlapping candidate otherwise."""
    renderer = fig.canvas.get_renderer()
    placed = list(avoid)

    def overlap(a, b) -> float:
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        return max(w, 0.0) * max(h, 0.0)

    for text, points, colour in items:
        best, best_cost = None, None
        for x, y in points:
            t = ax.text(x, y, text, ha="center", va="center", fontsize=8, color=colour, zorder=5,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colour, lw=0.6))
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            cost = sum(overlap(box, b) for b in placed)
            if best is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (t, box), cost
            else:
                t.remove()
            if cost == 0:
                break
        placed.append(best[1])


def _arc_points(p0, p1, rad: float, ts=(0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78)):
    """Points at parameters ``ts`` of matplotlib's ``arc3`` Bézier from ``p0`` to ``p1``."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    return [((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t * t * x1,
             (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t * t * y1) for t in ts]


_SPACING = 2.0  # distance between neighbouring states in the cell drawings (data units)


def _arc_rad(dx: float, height: float) -> float:
    """``arc3`` curvature whose Bézier apex lies ``height`` above the chord of length ``dx``
    (negative: above for a left-to-right edge)."""
    return -2.0 * height / dx


def _draw_graph(fig, ax, pos: dict, edges, extra_edges, node_fill: dict, title: str, spacing: float):
    """Circles at ``pos`` (one row, left to right), op edges as coloured arcs above the row (a second
    op between the same two states below it) with labels placed clear of each other, and
    ``extra_edges`` as grey arcs below."""
    from matplotlib.patches import Circle

    radius = 0.34
    circles = {}
    for name, (x, y) in pos.items():
        c = Circle((x, y), radius, fc=node_fill.get(name, "#dde8f5"), ec="#333333", lw=1.2, zorder=3)
        ax.add_patch(c)
        circles[name] = c
        ax.text(x, y, f"${name}$" if "_" in name else name, ha="center", va="center", fontsize=10, zorder=4)
    seen: dict[tuple, int] = {}
    items, top, bottom = [], 0.6, -0.6
    for src, dst, op in edges:
        n = seen.get((src, dst), 0)
        seen[(src, dst)] = n + 1
        dx = pos[dst][0] - pos[src][0]
        # Apex height grows with the span, so a longer arc clears the shorter ones under it.
        height = 0.55 + 0.45 * (round(abs(dx) / spacing) - 1)
        rad = _arc_rad(dx, height) * (1 if n == 0 else -1)
        top, bottom = max(top, height + 0.35), min(bottom, -height - 0.35) if n else bottom
        style = "dashed" if op == "none" else "solid"
        ax.annotate("", xy=pos[dst], xytext=pos[src], zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color=op_colour(op), lw=2.0, ls=style, mutation_scale=16,
                                    connectionstyle=f"arc3,rad={rad}", patchA=circles[src], patchB=circles[dst]))
        items.append((op, _arc_points(pos[src], pos[dst], rad), op_colour(op)))
    for src, dst in extra_edges:
        dx = pos[dst][0] - pos[src][0]
        depth = 0.35 + 0.12 * abs(dx) / spacing
        bottom = min(bottom, -depth - 0.3)
        ax.annotate("", xy=pos[dst], xytext=pos[src], zorder=1,
                    arrowprops=dict(arrowstyle="-|>", color="#999999", lw=1.0, mutation_scale=10,
                                    connectionstyle=f"arc3,rad={-_arc_rad(dx, depth)}", patchA=circles[src],
                                    patchB=circles[dst]))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(bottom, top)
    # Size the figure to the drawing (equal aspect), plus room for the two-line title.
    scale = 0.62  # inches per data unit: node labels and op labels stay legible, nothing is cramped
    width, height = max(scale * (max(xs) - min(xs) + 1.4), 5.5), scale * (top - bottom) + 0.75
    fig.set_size_inches(width, height)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / height)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    renderer = fig.canvas.get_renderer()
    _place_labels(ax, fig, items, [c.get_window_extent(renderer) for c in circles.values()])


def cell_figure(genotype, cell: str = "normal", title: str = ""):
    """A matplotlib drawing of a derived cell: states left to right, op edges as labelled arcs above,
    the concatenation into the cell output as grey arcs below (NAS-Bench-201: the 4-node cell)."""
    if isinstance(genotype, NB201Genotype):
        states, edges = _nb201_cell_spec(genotype)
        spacing = 1.5 * _SPACING  # 4 states: room for the labels of the 6 edges
        pos = {s: (spacing * i, 0.0) for i, s in enumerate(states)}
        fig = _figure(6, 3)
        ax = fig.add_subplot()
        _draw_graph(fig, ax, pos, edges, [], {states[0]: "#a9d18e", states[-1]: "#ffe699"}, title, spacing)
        return fig
    states, edges, out, concat = _darts_cell_spec(genotype, cell)
    pos = {s: (_SPACING * i, 0.0) for i, s in enumerate(states)}
    pos[out] = (_SPACING * len(states), 0.0)
    fig = _figure(10, 3)
    ax = fig.add_subplot()
    _draw_graph(fig, ax, pos, edges, [(s, out) for s in concat],
                {states[0]: "#a9d18e", states[1]: "#a9d18e", out: "#ffe699"}, title, _SPACING)
    return fig


def dot_available() -> bool:
    return shutil.which("dot") is not None


def write_cell_diagram(genotype, path: str, cell: str = "normal", title: str = "", engine: str = "auto") -> str:
    """Draw a derived cell into ``path`` (PNG) with graphviz (``engine="dot"``, or "auto" when ``dot``
    is on PATH) or matplotlib; returns the engine used.

    Raises:
        ValueError: for an unknown engine, or ``engine="dot"`` without the ``dot`` program.
    """
    if engine not in ("auto", "dot", "matplotlib"):
        raise ValueError(f"unknown diagram engine {engine!r}; choose auto, dot or matplotlib")
    if engine == "dot" and not dot_available():
        raise ValueError("engine 'dot' needs the graphviz program dot on PATH (e.g. apt-get install graphviz)")
    if engine == "dot" or (engine == "auto" and dot_available()):
        with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as f:
            f.write(cell_dot(genotype, cell, title))
        try:
            subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", path, f.name], check=True, capture_output=True)
        finally:
            os.unlink(f.name)
        return "dot"
    fig = cell_figure(genotype, cell, title)
    fig.savefig(path)
    return "matplotlib"


# ---------------------------------------------------------------------------------- curves


def read_metrics(path: str) -> list[dict]:
    """Rows of a run's ``metrics.csv`` with numeric values as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v)
            except (TypeError, ValueError):
                parsed[k] = v
        out.append(parsed)
    return out


def curves_figure(rows: list[dict], title: str):
    """Loss (left) and accuracy (right) per epoch from ``metrics.csv`` rows of a search or a retraining."""
    fig = _figure(10, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for key, label in (("train_loss", "training loss"), ("arch_loss", "architecture loss")):
        vals = [r.get(key) for r in rows]
        if any(isinstance(v, float) and math.isfinite(v) for v in vals):
            ax_loss.plot(epochs, vals, marker="o" if len(rows) < 30 else None, ms=3, label=label)
    for key, label in (("train_acc", "training accuracy"), ("test_acc", "held-out accuracy")):
        vals = [r.get(key) for r in rows]
        if any(isinstance(v, float) and math.isfinite(v) for v in vals):
            ax_acc.plot(epochs, vals, marker="o" if len(rows) < 30 else None, ms=3, label=label)
    ax_loss.set_ylabel("loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- whole runs


def _titles(run_dir: str) -> tuple[str, str, int | None]:
    """(run name, method, planned epochs) from the run's config.yaml; a retraining run's "method" is
    ``retraining <genotype file>``."""
    run = os.path.basename(os.path.normpath(run_dir))
    path = os.path.join(run_dir, "config.yaml")
    cfg = {}
    if os.path.isfile(path):
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    if "method" in cfg:
        method = cfg["method"]
    elif cfg.get("genotype"):
        parts = os.path.normpath(str(cfg["genotype"])).split(os.sep)
        method = "retraining " + "/".join(parts[-2:])  # e.g. "darts-...-seed2/genotype.json"
    else:
        method = "?"
    return run, method, cfg.get("epochs")


def _epoch_text(done: int, total: int | None) -> str:
    return "initialisation" if done == 0 else f"epoch {done}" + (f"/{total}" if total else "")


def arch_figures(views: list[ArchView], genotype, head: str, *, diagrams: bool = True) -> dict[str, object]:
    """The heat maps (with the genotype's ops outlined), gate and β maps, and (``diagrams``) the
    derived-cell drawings of one epoch: ``{file stem: Figure}``."""
    kept = genotype_edges(genotype) if genotype is not None else {}
    with_beta = {v.cell for v in views if v.kind == "edges"}
    figs = {}
    for v in views:
        what = f"{v.quantity}, {v.cell} cell" if v.cell != "cell" else v.quantity
        if v.kind == "edges":
            figs[f"beta_{v.cell}"] = beta_figure(v, f"{head}\n{what}")
        elif v.name.endswith("/gate"):
            figs[f"gates_{v.cell}"] = heatmap_figure(v, f"{head}\n{what}")
        else:
            note = " (ranked by these values × β)" if v.cell in with_beta else ""
            figs[f"alpha_{v.cell}"] = heatmap_figure(v, f"{head}\n{what}", kept.get(v.cell, ()), note)
    if diagrams and isinstance(genotype, NB201Genotype):
        figs["cell_nb201"] = cell_figure(genotype, "cell", f"{head}\nderived NAS-Bench-201 cell")
    elif diagrams and genotype is not None:
        for cell in ("normal", "reduce"):
            figs[f"cell_{cell}"] = cell_figure(genotype, cell, f"{head}\nderived {cell} cell")
    return figs


def log_arch_figures(writer, views: list[ArchView], genotype, run_dir: str, method: str, epochs_done: int,
                     epochs: int | None = None) -> None:
    """Log the heat maps and cell diagrams after ``epochs_done`` epochs to TensorBoard
    (``arch/<name>``, at step ``epochs_done - 1``, the step of that epoch's scalars)."""
    head = f"{os.path.basename(os.path.normpath(run_dir))} · {method} · {_epoch_text(epochs_done, epochs)}"
    for name, fig in arch_figures(views, genotype, head).items():
        fig.set_dpi(80)  # TensorBoard shows them small; 110 dpi costs ~40 % more CPU per epoch
        writer.add_figure(f"arch/{name}", fig, max(epochs_done - 1, 0))


def plot_run(run_dir: str, out_dir: str | None = None, *, engine: str = "auto") -> list[str]:
    """Write every plot of a search (or retraining) run directory as PNG; returns the paths.

    Uses ``arch_history.pt`` (heat maps, trajectories, gates, β), ``genotype.json`` (cell
    diagrams) and ``metrics.csv`` (curves), whichever the run has.

    Raises:
        FileNotFoundError: when ``run_dir`` holds none of them.
    """
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir} not found")
    paths = {name: os.path.join(run_dir, name) for name in (HISTORY_FILE, "genotype.json", "metrics.csv")}
    if not any(os.path.isfile(p) for p in paths.values()):
        raise FileNotFoundError(f"{run_dir} holds no {HISTORY_FILE}, genotype.json or metrics.csv: "
                                "not a fastdarts run directory")
    out_dir = out_dir or os.path.join(run_dir, PLOTS_DIR)
    os.makedirs(out_dir, exist_ok=True)
    run, method, total = _titles(run_dir)
    is_search = os.path.isfile(os.path.join(run_dir, "search.log")) or os.path.isfile(paths[HISTORY_FILE])
    genotype = load_genotype(paths["genotype.json"]) if is_search and os.path.isfile(paths["genotype.json"]) else None
    written = []

    def save(fig, name: str) -> None:
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path)
        written.append(path)

    if os.path.isfile(paths[HISTORY_FILE]):
        history = ArchHistory.load(paths[HISTORY_FILE])
        head = f"{run} · {method} · {_epoch_text(history.epochs[-1], total)}"
        for name, fig in arch_figures(history.views_at(-1), genotype, head, diagrams=False).items():
            save(fig, name)
        span = f"epochs {history.epochs[0]}–{history.epochs[-1]}"
        for m in history.meta:
            if m["kind"] == "ops" and len(history) > 1:
                what = m["quantity"] + (f", {m['cell']} cell" if m["cell"] != "cell" else "")
                prefix = "gate_trajectory" if m["name"].endswith("/gate") else "trajectory"
                save(trajectory_figure(history, m["name"], f"{run} · {method} · {span} (0 = initialisation)\n{what}"),
                     f"{prefix}_{m['cell']}")
    if genotype is not None:
        cells = ["cell"] if isinstance(genotype, NB201Genotype) else ["normal", "reduce"]
        for cell in cells:
            name = "cell_nb201" if cell == "cell" else f"cell_{cell}"
            path = os.path.join(out_dir, f"{name}.png")
            what = "derived NAS-Bench-201 cell" if cell == "cell" else f"derived {cell} cell"
            write_cell_diagram(genotype, path, cell, f"{run} · {method} · final genotype\n{what}", engine)
            written.append(path)
    if os.path.isfile(paths["metrics.csv"]):
        rows = read_metrics(paths["metrics.csv"])
        if rows:
            n = len(rows)
            what = f"search, {n} epoch{'s' if n != 1 else ''}" if is_search else f"{n} epoch{'s' if n != 1 else ''}"
            final = rows[-1].get("test_acc")
            if isinstance(final, float) and math.isfinite(final):
                what += f", final held-out accuracy {final:.2f}%"
            save(curves_figure(rows, f"{run} · {method} · {what}"), "curves")
    return written
