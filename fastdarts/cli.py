"""Command line: ``fastdarts search|train|plot|bench`` (also ``python -m fastdarts``).

``fastdarts search [RECIPE|config.yaml] [key=value ...]`` runs a search: RECIPE is the name of a
packaged recipe (``fastdarts search --list-configs``), the default is the embedded digits demo.
``--dry-run`` prints the fully resolved config (method defaults applied) as YAML and exits.

``fastdarts train GENOTYPE.json|RUN_DIR [RECIPE|config.yaml] [key=value ...]`` retrains a derived
cell; without a recipe it takes the one made for the data (``digits-train`` on the embedded digits,
``darts-cifar10-train`` on CIFAR, ``darts-imagenet-train`` on an ImageFolder).
``fastdarts plot RUN_DIR`` draws a run's heat maps, trajectories, cell diagrams and curves.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from fastdarts.checkpoint import CHECKPOINT, CheckpointWriteError
from fastdarts.config import (
    SearchConfig,
    TrainConfig,
    default_search_config_path,
    default_train_recipe,
    load_config,
    parse_overrides,
    recipe_names,
    recipe_path,
    resolve_search_config,
    to_dict,
)
from fastdarts.data import DataConfig
from fastdarts.validate import check_run_dir


def _split_args(items: list[str], recipes: bool = False) -> tuple[str | None, list[str]]:
    """Separate an optional YAML path (or, with ``recipes``, a recipe name) from ``key=value`` overrides."""
    path, overrides = None, []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif path is None and item.endswith((".yaml", ".yml")):
            path = item
        elif path is None and recipes:
            path = recipe_path(item)  # an unknown name is a ValueError naming the closest recipe
        else:
            what = "a recipe name, a .yaml config" if recipes else "a .yaml config"
            raise ValueError(f"expected {what} or key=value, got {item!r}")
    return path, overrides


def _config(cls, args, default_path: str | None, extra: list[str]):
    """The run's config: the saved one of ``--resume RUN_DIR``, else the YAML (or default) + overrides."""
    path, overrides = _split_args(args.items, recipes=cls is SearchConfig)
    if args.resume:
        check_run_dir(args.resume, resume=True, checkpoint=CHECKPOINT)
        saved = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(saved):
            raise FileNotFoundError(f"cannot resume: {saved} not found (the run's resolved config)")
        return load_config(cls, saved, overrides + [f"run_dir={args.resume}"])
    return load_config(cls, path or default_path, overrides + extra)


def _cmd_search(args) -> int:
    if args.list_configs:
        print("\n".join(recipe_names()))
        return 0
    cfg = _config(SearchConfig, args, default_search_config_path(), [])
    if args.dry_run:
        print(yaml.safe_dump(to_dict(resolve_search_config(cfg)), sort_keys=False), end="")
        return 0
    from fastdarts.search import search

    result = search(cfg, resume=bool(args.resume))
    from fastdarts.distributed import env_rank

    if env_rank() != 0:  # torchrun: rank 0 draws the plots and prints the summary
        return 0
    from fastdarts.summary import search_summary
    from fastdarts.viz import plot_run

    plot_run(result.run_dir)  # the summary lists the PNGs
    print(f"genotype: {result.genotype.to_dict()}")
    print(f"run directory: {result.run_dir}")
    print(search_summary(result.genotype, result.run_dir, result.test_acc))
    return 0


def _cmd_plan(args) -> int:
    from fastdarts.plan import parse_memory, plan

    cfg = _config(SearchConfig, args, default_search_config_path(), [])
    memory = None if args.memory is None else parse_memory(args.memory)
    print(plan(cfg, memory).table())
    return 0


def _train_recipe_items(items: list[str]) -> list[str]:
    """``items`` with a retraining recipe name replaced by its packaged YAML path."""
    return [i if "=" in i or i.endswith((".yaml", ".yml")) else recipe_path(i, "train") for i in items]


def _cmd_train(args) -> int:
    if args.list_configs:
        print("\n".join(recipe_names("train")))
        return 0
    from fastdarts.train import genotype_file, train

    args.items = _train_recipe_items(args.items)
    extra = [f"genotype={genotype_file(args.genotype)}"] if args.genotype else []
    default = note = None
    if not args.resume:
        path, overrides = _split_args(args.items)
        if path is None:  # no recipe or YAML: the recipe made for the data (digits-train on the embedded digits)
            data = parse_overrides(overrides).get("data", {})
            name = default_train_recipe(data.get("name", DataConfig().name), data.get("root"))
            note = f"# fastdarts train: recipe {name} (for this data; name another recipe or a YAML to change it)"
            default = recipe_path(name, "train")
    cfg = _config(TrainConfig, args, default, extra)
    if note:  # on stdout (a YAML comment for --dry-run): stderr stays the one line of an error
        print(note)
    if args.dry_run:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    result = train(cfg, resume=bool(args.resume))
    print(f"run directory: {result.run_dir}")
    print(f"held-out accuracy: {result.test_acc:.2f}% ({result.params / 1e6:.2f}M parameters)")
    return 0


def _cmd_plot(args) -> int:
    from fastdarts.viz import plot_run

    for path in plot_run(args.run_dir, args.out, engine=args.engine):
        print(f"wrote {path}")
    return 0


def _cmd_bench(args) -> int:
    if args.replot:
        from fastdarts.bench import replot

        print(f"wrote {replot(args.replot)}")
        return 0
    from fastdarts.bench import run_bench

    for path in run_bench(args.what, args.out, quick=args.quick, data=args.data):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastdarts", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("search", help="run an architecture search (default: DARTS on the embedded digits data)")
    p.add_argument("items", nargs="*", help="optional recipe name (see --list-configs) or config.yaml, then "
                                            "key=value overrides (e.g. pcdarts-cifar10 data=/data/cifar10)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--list-configs", action="store_true", help="print the packaged recipe names, one per line")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved config (method defaults applied) as YAML and exit")
    p.set_defaults(func=_cmd_search)
    p = sub.add_parser("plan", help="measure the bytes a search step needs per sample; largest batch that fits")
    p.add_argument("items", nargs="*", help="optional recipe name or config.yaml, then key=value overrides "
                                            "(as for search)")
    p.add_argument("--memory", metavar="SIZE", help="memory to plan for, e.g. 80GiB (default: the CUDA "
                                                    "device's total memory; 80GiB on CPU)")
    p.set_defaults(func=_cmd_plan, resume=None)

    p = sub.add_parser("train", help="train the network of a genotype JSON from scratch")
    p.add_argument("genotype", nargs="?", help="genotype JSON written by fastdarts search, or its run directory")
    p.add_argument("items", nargs="*", help="optional retraining recipe (see --list-configs; default: the one for "
                                            "the data, digits-train on the embedded digits) or config.yaml, then "
                                            "key=value overrides (e.g. darts-cifar10-train data=/data/cifar10)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--list-configs", action="store_true", help="print the retraining recipe names, one per line")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("plot", help="draw a run's architecture heat maps, trajectories, cells and curves as PNG")
    p.add_argument("run_dir", help="run directory of fastdarts search (or train)")
    p.add_argument("--out", help="output folder (default RUN_DIR/plots)")
    p.add_argument("--engine", default="auto", choices=["auto", "dot", "matplotlib"],
                   help="cell diagrams: graphviz dot (auto: when installed) or matplotlib")
    p.set_defaults(func=_cmd_plot)
    p = sub.add_parser("bench", help="benchmark kernels, search steps (JSON, markdown, PNG) or the input pipeline")
    p.add_argument("what", nargs="?", default="all", choices=["kernels", "search", "all", "pipeline"],
                   help="all = kernels + search; pipeline = ImageFolder loader images/s on the CPU")
    p.add_argument("--data", metavar="DIR", help="pipeline: an ImageFolder to read instead of generated JPEGs")
    p.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    p.add_argument("--replot", metavar="RESULT.json", help="redraw the PNG of a result JSON without measuring")
    p.set_defaults(func=_cmd_bench)
    return parser


# Exit statuses: 2 bad input (also argparse's), 1 a fault during the run, 130 Ctrl-C (128 + SIGINT).
EXIT_BAD_INPUT, EXIT_FAULT, EXIT_INTERRUPTED = 2, 1, 130
_BAD_INPUT = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; errors are one line on stderr (``fastdarts: error: ...``) and an exit status,
    never a traceback (``FASTDARTS_TRACEBACK=1`` re-raises them, for debugging)."""
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        if args.command == "train" and args.genotype and "=" in args.genotype:  # only overrides were given
            args.items.insert(0, args.genotype)
            args.genotype = None
        if args.command == "train" and not args.genotype and not args.resume and not args.list_configs:
            raise ValueError("fastdarts train needs a genotype JSON (or --resume RUN_DIR)")
        return args.func(args)
    except (KeyboardInterrupt, OSError, ValueError, TypeError, FloatingPointError) as err:
        status = _exit_status(err)
        if os.environ.get("FASTDARTS_TRACEBACK") == "1":
            raise
        prefix = "fastdarts:" if status == EXIT_INTERRUPTED else "fastdarts: error:"
        print(f"{prefix} {_one_line(err) if str(err) else 'interrupted'}", file=sys.stderr)
        return status


def _exit_status(err: BaseException) -> int:
    """2 for bad input, 1 for a fault during the run (the last checkpoint is kept), 130 for Ctrl-C."""
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, (CheckpointWriteError, FloatingPointError)):
        return EXIT_FAULT
    if isinstance(err, _BAD_INPUT):
        return EXIT_BAD_INPUT
    return EXIT_FAULT  # other I/O errors during a run (disk full while logging, ...)
