"""Does each method collapse to parameter-free operations? A small, reproducible comparison.

For every method and seed: search on the embedded digits data, derive the genotype, count
the parameter-free operations (skip_connect, pools) among the 8 ops of the normal cell,
then train the derived network from scratch briefly and measure its held-out accuracy.
Writes ``<out>/collapse-<date>.json``, ``.md`` and ``.png``.

    python examples/collapse_study.py                       # defaults below (CPU, ~tens of minutes)
    python examples/collapse_study.py --methods darts prdarts --seeds 0 1 --search-epochs 20

The sizes are small so the study runs on a CPU; they are far from the papers' CIFAR-10
settings, so read the table as "what these methods do on this small problem", nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from fastdarts.config import DataConfig, SearchConfig, TrainConfig
from fastdarts.search import search
from fastdarts.train import train

PARAMETER_FREE = {"skip_connect", "max_pool_3x3", "avg_pool_3x3", "none", "noise"}


def parameter_free_fraction(genotype) -> float:
    ops = [op for op, _ in genotype.normal]
    return sum(op in PARAMETER_FREE for op in ops) / len(ops)


def run(methods, seeds, space, search_epochs, train_epochs, out, C: int = 4) -> dict:
    """Search + retrain for every (seed, method); results are rewritten after each run."""
    rows = []
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:  # seed-major: a study cut short still compares every method
            for method in methods:
                t0 = time.time()
                cfg = SearchConfig(method=method, space=space, epochs=search_epochs, seed=seed, C=C, layers=5,
                                   data=DataConfig(name="digits", batch_size=64, image_size=8),
                                   run_dir=os.path.join(tmp, f"search-{method}-{seed}"))
                found = search(cfg)
                tcfg = TrainConfig(genotype=os.path.join(found.run_dir, "genotype.json"), epochs=train_epochs, C=8,
                                   layers=5, seed=seed, auxiliary=False, drop_path_prob=0.0,
                                   data=DataConfig(name="digits", batch_size=64, image_size=8),
                                   run_dir=os.path.join(tmp, f"train-{method}-{seed}"))
                trained = train(tcfg)
                rows.append(dict(method=method, seed=seed, space=space,
                                 param_free_fraction=parameter_free_fraction(found.genotype),
                                 normal=[list(x) for x in found.genotype.normal],
                                 supernet_acc=found.test_acc, derived_acc=trained.test_acc,
                                 seconds=time.time() - t0))
                result = write(rows, space, C, search_epochs, train_epochs, out)
    return result


def write(rows, space, C, search_epochs, train_epochs, out) -> dict:
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        summary[method] = dict(
            runs=len(rs),
            param_free_mean=statistics.mean(r["param_free_fraction"] for r in rs),
            derived_acc_mean=statistics.mean(r["derived_acc"] for r in rs),
            derived_acc_std=statistics.pstdev(r["derived_acc"] for r in rs),
            supernet_acc_mean=statistics.mean(r["supernet_acc"] for r in rs),
        )
    result = dict(space=space, C=C, search_epochs=search_epochs, train_epochs=train_epochs,
                  seeds=sorted({r["seed"] for r in rows}), date=time.strftime("%Y-%m-%d"), rows=rows,
                  summary=summary)
    os.makedirs(out, exist_ok=True)
    stem = os.path.join(out, f"collapse-{time.strftime('%Y%m%d')}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(result))
    plot(result, stem + ".png")
    return result


def markdown(result: dict) -> str:
    lines = [f"Space `{result['space']}`, digits 8×8, supernet C={result['C']}, 5 cells, "
             f"{result['search_epochs']} search epochs, derived network (C=8) trained {result['train_epochs']} "
             f"epochs, seeds {result['seeds']}.", "",
             "| method | runs | parameter-free ops in normal cell | derived net held-out acc (%) | supernet acc (%) |",
             "|---|---|---|---|---|"]
    for m, s in result["summary"].items():
        lines.append(f"| {m} | {s['runs']} | {100 * s['param_free_mean']:.0f} % | {s['derived_acc_mean']:.1f} ± "
                     f"{s['derived_acc_std']:.1f} | {s['supernet_acc_mean']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["summary"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, m in enumerate(methods):
        rs = [r for r in result["rows"] if r["method"] == m]
        axes[0].scatter([i] * len(rs), [100 * r["param_free_fraction"] for r in rs], color="tab:red")
        axes[1].scatter([i] * len(rs), [r["derived_acc"] for r in rs], color="tab:blue")
    for ax, label in zip(axes, ["parameter-free ops in normal cell (%)", "derived network held-out acc (%)"]):
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["darts", "prdarts", "lambda_darts", "dropnas", "gaea"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--space", default="darts")
    parser.add_argument("--search-epochs", type=int, default=15)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--C", type=int, default=4, help="supernet width (the derived network uses C=8)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    run(args.methods, args.seeds, args.space, args.search_epochs, args.train_epochs, args.out, args.C)


if __name__ == "__main__":
    main()
