"""Does each method collapse to parameter-free operations? A small, reproducible comparison.

For every space, seed and method: search on the embedded digits data in the method's packaged
recipe (``fastdarts/configs/<method>-cifar10.yaml``; a method without one, GAEA DARTS, takes its
built-in DARTS-space defaults) with the sizes scaled down to the digits data, derive the genotype,
count the parameter-free operations among the 8 ops of the normal cell, then retrain the derived
cell with the ``digits-train`` recipe (epochs, and optionally width/cells, cut) and measure its
held-out accuracy. Runs go seed-major, so a study cut short still compares every method on every
space. The results are rewritten after each run: ``<out>/<name>.json``, ``.md`` and ``.png``.

    python examples/collapse_study.py            # S2, S3 × seeds 0-2 × 6 methods: ~55 CPU-minutes, 1 thread
    python examples/collapse_study.py --resume   # continue a study cut short (same settings)
    python examples/collapse_study.py --spaces s2 --methods darts prdarts --seeds 0 --search-epochs 4
    python examples/collapse_study.py --redraw benchmarks/results/collapse-s2s3-20261202.json

The defaults are the settings of ``benchmarks/results/collapse-s2s3-20261202.*``.

RobustDARTS' S2 (skip_connect, sep_conv_3x3 on every edge) and S3 (none, skip_connect,
sep_conv_3x3) are where DARTS' collapse to skips is strongest. PR-DARTS, DropNAS and GDAS list only
the DARTS space as theirs (their original code searches it), so they search ``space=darts`` with
the S2/S3 candidate list as the supernet's ``primitives``: the same cells as ``space=s2``/``s3``
(on the quark0 network the two build identical supernets), on the network their recipe names.

The sizes are small so the study runs on a CPU; they are far from the papers' CIFAR-10 settings,
so read the table as "what these methods do on this small problem", nothing more.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from typing import Any, Sequence

import torch

from fastdarts.config import SearchConfig, TrainConfig, load_config, recipe_names, recipe_path, resolve_search_config
from fastdarts.methods import get_method
from fastdarts.search import search
from fastdarts.spaces.robust import robust_primitives
from fastdarts.summary import parameter_free_count
from fastdarts.train import train

METHODS = ("darts", "prdarts", "lambda_darts", "dropnas", "gaea", "gdas")
SPACES = ("s2", "s3")
TRAIN_RECIPE = "digits-train"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the study scales down from the recipes (everything else is the recipe's value)."""

    search_epochs: int = 10
    batch_size: int = 64
    image_size: int = 8  # search images (digits are 8×8, upsampled only if larger)
    C: int = 4
    layers: int = 5  # quark0 supernet: reductions after cells 1 and 3
    nasnet_layers: int = 3  # NASNet-super has 3N cells: N=1 is [normal, reduce, reduce]
    train_epochs: int = 6  # of the recipe's 20: what the 2-core CPU budget of the committed study allowed
    train_C: int | None = None  # None: the digits-train recipe's value
    train_layers: int | None = None
    train_image_size: int | None = None


def search_recipe(method: str) -> str | None:
    """The packaged CIFAR-10 search recipe of ``method``, or None when it has none (its defaults apply)."""
    name = f"{method}-cifar10"
    return name if name in recipe_names("search") else None


def search_config(method: str, space: str, seed: int, sizes: Sizes, run_dir: str) -> SearchConfig:
    """The method's recipe on the digits data, with the study's sizes, on RobustDARTS space ``space``."""
    recipe = search_recipe(method)
    overrides = [f"method={method}", "data=digits", "data.root=null", f"data.batch_size={sizes.batch_size}",
                 f"data.image_size={sizes.image_size}", f"epochs={sizes.search_epochs}", f"C={sizes.C}",
                 f"seed={seed}", "device=cpu", f"run_dir={run_dir}"]
    cfg = load_config(SearchConfig, recipe_path(recipe) if recipe else None, overrides)
    if space in get_method(method).spaces:
        cfg.space = space
        if cfg.supernet == "nasnet":  # NASNet-super only builds the DARTS space; the RobustDARTS spaces use quark0
            cfg.supernet = "quark0"
    else:  # the same cells, as an explicit candidate list on the DARTS space (module docstring)
        cfg.space = "darts"
        cfg.method_options["primitives"] = list(robust_primitives(space)["normal"][0])
    cfg.layers = sizes.nasnet_layers if cfg.supernet == "nasnet" else sizes.layers
    if cfg.method_options.get("scheduler_epochs") is not None:  # GAEA's T_s equals its recipe's epochs
        cfg.method_options["scheduler_epochs"] = sizes.search_epochs
    return cfg


def train_config(genotype_path: str, seed: int, sizes: Sizes, run_dir: str) -> TrainConfig:
    """The ``digits-train`` recipe for ``genotype_path``, with the study's cuts."""
    overrides = [f"genotype={genotype_path}", f"epochs={sizes.train_epochs}", f"seed={seed}", "device=cpu",
                 f"run_dir={run_dir}"]
    for key, value in (("C", sizes.train_C), ("layers", sizes.train_layers),
                       ("data.image_size", sizes.train_image_size)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(TrainConfig, recipe_path(TRAIN_RECIPE, "train"), overrides)


def run_one(method: str, space: str, seed: int, sizes: Sizes, tmp: str) -> dict[str, Any]:
    """Search, then retrain the derived cell; one row of the results."""
    tag = f"{space}-{method}-{seed}"
    scfg = search_config(method, space, seed, sizes, os.path.join(tmp, f"search-{tag}"))
    t0 = time.process_time()
    found = search(scfg)
    t1 = time.process_time()
    tcfg = train_config(os.path.join(found.run_dir, "genotype.json"), seed, sizes, os.path.join(tmp, f"train-{tag}"))
    trained = train(tcfg)
    t2 = time.process_time()
    free, total = parameter_free_count(found.genotype)
    return dict(space=space, method=method, seed=seed, recipe=search_recipe(method) or f"{method} defaults",
                searched_space=scfg.space, supernet=scfg.supernet, layers=scfg.layers,
                param_free=free, ops=total, param_free_fraction=free / total,
                normal=[list(x) for x in found.genotype.normal], reduce=[list(x) for x in found.genotype.reduce],
                supernet_acc=found.test_acc, derived_acc=trained.test_acc, derived_params=trained.params,
                search_cpu_s=t1 - t0, train_cpu_s=t2 - t1)


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (space, method), grouped by space: seeds, mean parameter-free count and accuracies."""
    out = []
    spaces = list(dict.fromkeys(r["space"] for r in rows))
    pairs = sorted(dict.fromkeys((r["space"], r["method"]) for r in rows), key=lambda k: spaces.index(k[0]))
    for space, method in pairs:  # by space, then in the order the methods ran
        rs = [r for r in rows if r["space"] == space and r["method"] == method]
        acc = [r["derived_acc"] for r in rs]
        out.append(dict(space=space, method=method, seeds=[r["seed"] for r in rs],
                        param_free=[r["param_free"] for r in rs],
                        param_free_mean=statistics.mean(r["param_free"] for r in rs),
                        collapsed=sum(r["param_free"] >= 5 for r in rs),
                        derived_acc_mean=statistics.mean(acc), derived_acc_std=statistics.pstdev(acc),
                        supernet_acc_mean=statistics.mean(r["supernet_acc"] for r in rs)))
    return out


def recipe_sizes(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method, the sizes its recipe (or, without one, its defaults) sets and the study cuts."""
    out = {}
    for method in methods:
        recipe = search_recipe(method)
        cfg = resolve_search_config(load_config(SearchConfig, recipe_path(recipe) if recipe else None,
                                                [f"method={method}"]))
        out[method] = dict(epochs=cfg.epochs, batch_size=cfg.data.batch_size, C=cfg.C, layers=cfg.layers,
                           supernet=cfg.supernet)
    return out


def settings(sizes: Sizes, planned: dict[str, Any]) -> dict[str, Any]:
    """What the study ran and what it cut, for the JSON and the table header."""
    train_recipe = load_config(TrainConfig, recipe_path(TRAIN_RECIPE, "train"))
    return dict(planned, sizes=dataclasses.asdict(sizes), recipe_sizes=recipe_sizes(planned["methods"]),
                train_recipe=TRAIN_RECIPE,
                train_recipe_epochs=train_recipe.epochs,
                train_C=sizes.train_C or train_recipe.C, train_layers=sizes.train_layers or train_recipe.layers,
                threads=torch.get_num_threads(), torch=torch.__version__)


def markdown(result: dict[str, Any]) -> str:
    """The results table, with a header that names the settings and the cuts."""
    st, sz = result["settings"], result["settings"]["sizes"]
    cut = (f"`{st['train_recipe']}` retraining cut from {st['train_recipe_epochs']} to {sz['train_epochs']} epochs"
           + ("" if sz["train_image_size"] is None else f", images {sz['train_image_size']}×{sz['train_image_size']}"))
    lines = [
        f"Spaces {', '.join(st['spaces'])}; seeds planned {st['seeds']}; digits data. Search: each method's recipe "
        f"(`<method>-cifar10`; GAEA DARTS: its defaults) with sizes cut to {sz['search_epochs']} epochs, batch "
        f"{sz['batch_size']}, {sz['image_size']}×{sz['image_size']} images, C={sz['C']}, {sz['layers']} cells "
        f"(NASNet-super: {sz['nasnet_layers']}). Retraining: {cut} (C={st['train_C']}, {st['train_layers']} cells). "
        f"CPU, {st['threads']} thread(s). {result['runs_done']} of {result['runs_planned']} runs finished.",
        "",
        "Cut from the recipes (CIFAR-10, 32×32): " + "; ".join(
            f"{m} {r['epochs']} epochs, batch {r['batch_size']}, C={r['C']}, {r['layers']} cells ({r['supernet']})"
            for m, r in st["recipe_sizes"].items()) + ".",
        "",
        "| space | method | seeds run | parameter-free ops in normal cell (of 8), per seed | mean "
        "| collapsed (≥ 5 of 8) | derived net held-out acc (%) | supernet acc (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        lines.append(f"| {s['space']} | {s['method']} | {len(s['seeds'])} {s['seeds']} | "
                     f"{', '.join(map(str, s['param_free']))} | {s['param_free_mean']:.1f} | "
                     f"{s['collapsed']} of {len(s['seeds'])} | "
                     f"{s['derived_acc_mean']:.1f} ± {s['derived_acc_std']:.1f} | {s['supernet_acc_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: str) -> None:
    """One row per space: parameter-free ops (left) and derived-network accuracy (right), a marker per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    st, sz, rows = result["settings"], result["settings"]["sizes"], result["rows"]
    spaces = [s for s in st["spaces"] if any(r["space"] == s for r in rows)]
    seeds = sorted({r["seed"] for r in rows})
    markers = dict(zip(seeds, "osD^v<>p"))
    fig, axes = plt.subplots(len(spaces), 2, figsize=(11, 3.3 * len(spaces) + 1.3), squeeze=False)
    for row, space in zip(axes, spaces):
        methods = [m for m in st["methods"] if any(r["space"] == space and r["method"] == m for r in rows)]
        for i, m in enumerate(methods):
            for r in (r for r in rows if r["space"] == space and r["method"] == m):
                x = i + (seeds.index(r["seed"]) - (len(seeds) - 1) / 2) * 0.15  # seeds side by side
                row[0].scatter(x, r["param_free"], color="tab:red", marker=markers[r["seed"]], zorder=3)
                row[1].scatter(x, r["derived_acc"], color="tab:blue", marker=markers[r["seed"]], zorder=3)
        row[0].axhline(4.5, color="grey", lw=0.8, ls="--")
        row[0].set_ylim(-0.5, 8.5)
        row[0].set_yticks(range(9))
        row[0].set_ylabel("parameter-free ops\nin normal cell (of 8)")
        row[1].set_ylabel("derived net\nheld-out acc (%)")
        free = "none, skip" if space == "s3" else "skip"
        for ax, what in zip(row, (f"parameter-free: {free}; above the dashed line: collapsed (≥ 5 of 8)",
                                  f"retrained {st['train_recipe']}, {sz['train_epochs']} epochs")):
            ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", rotation_mode="anchor")
            ax.set_xlim(-0.5, len(methods) - 0.5)
            ax.set_title(f"space {space}: {what}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], ls="", marker=markers[s], color="black", label=f"seed {s}") for s in seeds]
    fig.legend(handles=handles, loc="lower center", ncol=len(seeds), fontsize=9, frameon=False)
    fig.suptitle(f"Collapse study on digits: spaces {', '.join(spaces)}, seeds {seeds} "
                 f"({result['runs_done']} of {result['runs_planned']} runs)\n"
                 f"search: each recipe scaled to {sz['search_epochs']} epochs, batch {sz['batch_size']}, C={sz['C']}, "
                 f"{sz['image_size']}×{sz['image_size']} px; retrain: {st['train_recipe']} cut to {sz['train_epochs']} "
                 f"of {st['train_recipe_epochs']} epochs", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def redraw(json_path: str) -> None:
    """Rewrite the ``.md`` and ``.png`` next to a results JSON from its content (no run)."""
    with open(json_path) as f:
        result = json.load(f)
    stem = json_path[: -len(".json")] if json_path.endswith(".json") else json_path
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    plot(result, stem + ".png")


def write_results(rows: Sequence[dict[str, Any]], info: dict[str, Any], stem: str) -> dict[str, Any]:
    """Write ``stem.json``, ``.md`` and ``.png`` from the rows so far; returns the JSON content."""
    result = dict(date=time.strftime("%Y-%m-%d"), settings=info, runs_planned=info["runs_planned"],
                  runs_done=len(rows), summary=summarize(rows), rows=list(rows))
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    plot(result, stem + ".png")
    return result


def finished_rows(stem: str, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of an earlier ``stem.json`` written with the same settings (for ``--resume``), else none."""
    if not os.path.isfile(stem + ".json"):
        return []
    with open(stem + ".json") as f:
        earlier = json.load(f)
    same = {k: v for k, v in earlier["settings"].items() if k not in ("methods", "spaces", "seeds", "runs_planned")}
    mine = {k: v for k, v in info.items() if k not in ("methods", "spaces", "seeds", "runs_planned")}
    if same != mine:
        raise ValueError(f"{stem}.json was written with other settings; drop --resume or pick another --name")
    return earlier["rows"]


def run_study(methods: Sequence[str], spaces: Sequence[str], seeds: Sequence[int], sizes: Sizes,
              stem: str, resume: bool = False) -> dict[str, Any]:
    """Every (seed, space, method), seed-major so a study cut short has every method on every space;
    results rewritten after each run. ``resume``: keep the runs an earlier ``stem.json`` already holds."""
    info = settings(sizes, dict(methods=list(methods), spaces=list(spaces), seeds=list(seeds),
                                runs_planned=len(methods) * len(spaces) * len(seeds)))
    rows = finished_rows(stem, info) if resume else []
    done = {(r["space"], r["method"], r["seed"]) for r in rows}
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for space in spaces:
                for method in methods:
                    if (space, method, seed) in done:
                        continue
                    rows.append(run_one(method, space, seed, sizes, tmp))
                    r = rows[-1]
                    print(f"[{len(rows)}/{info['runs_planned']}] {space} {method} seed {seed}: "
                          f"{r['param_free']}/8 parameter-free, derived {r['derived_acc']:.1f} %, "
                          f"CPU {r['search_cpu_s']:.0f}+{r['train_cpu_s']:.0f} s", flush=True)
                    result = write_results(rows, info, stem)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    d = Sizes()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--search-epochs", type=int, default=d.search_epochs)
    parser.add_argument("--train-epochs", type=int, default=d.train_epochs,
                        help=f"retraining epochs (the {TRAIN_RECIPE} recipe has 20)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="search batch")
    parser.add_argument("--image-size", type=int, default=d.image_size, help="search image size")
    parser.add_argument("--C", type=int, default=d.C, help="supernet width")
    parser.add_argument("--layers", type=int, default=d.layers, help="quark0 supernet cells")
    parser.add_argument("--nasnet-layers", type=int, default=d.nasnet_layers, help="NASNet-super cells (3N)")
    parser.add_argument("--train-C", type=int, default=None, help=f"retraining width (default: {TRAIN_RECIPE}'s)")
    parser.add_argument("--train-layers", type=int, default=None, help=f"retraining cells (default: {TRAIN_RECIPE}'s)")
    parser.add_argument("--train-image-size", type=int, default=None,
                        help=f"retraining image size (default: {TRAIN_RECIPE}'s, 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--name", default=f"collapse-s2s3-{time.strftime('%Y%m%d')}", help="file stem under --out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --out/--name.json (same settings) and do the rest")
    parser.add_argument("--redraw", metavar="JSON", help="only rewrite the table and plot of this results file")
    args = parser.parse_args(argv)
    if args.redraw:
        redraw(args.redraw)
        return
    for m in args.methods:
        get_method(m)  # an unknown name fails here, before any run
    torch.set_num_threads(args.threads)
    sizes = Sizes(search_epochs=args.search_epochs, batch_size=args.batch_size, image_size=args.image_size, C=args.C,
                  layers=args.layers, nasnet_layers=args.nasnet_layers, train_epochs=args.train_epochs,
                  train_C=args.train_C, train_layers=args.train_layers, train_image_size=args.train_image_size)
    run_study(args.methods, args.spaces, args.seeds, sizes, os.path.join(args.out, args.name), args.resume)


if __name__ == "__main__":
    main()
