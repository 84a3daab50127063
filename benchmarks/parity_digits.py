"""Held-out supernet accuracy of ``fastdarts search`` (the packaged default) over several seeds.

The counterpart of a run of the original quark0/darts ``cnn/train_search.py`` on the same
embedded digits data (same 359-image test split); see README "Accuracy parity with quark0/darts".

    python benchmarks/parity_digits.py                               # seeds 2 3 4, default config
    python benchmarks/parity_digits.py --seeds 2 --set data.augment=false
    python benchmarks/parity_digits.py --quark0 quark0.jsonl --out benchmarks/results/parity-digits-DATE.json

``--quark0`` takes the JSON lines the quark0 harness printed (one per seed, with ``seed`` and
``test_acc``) and stores them next to fastdarts' numbers; ``--out`` writes the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from fastdarts.config import SearchConfig, default_search_config_path, load_config, to_dict
from fastdarts.search import search


def run_fastdarts(seeds: list[int], overrides: list[str]) -> list[dict]:
    """One default search per seed (in a temporary run directory); held-out accuracy of each."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            cfg = load_config(SearchConfig, default_search_config_path(),
                              [*overrides, f"seed={seed}", f"run_dir={os.path.join(tmp, f'seed{seed}')}"])
            t0 = time.time()
            result = search(cfg)
            rows.append({"code": "fastdarts", "seed": seed, "test_acc": result.test_acc,
                         "train_acc": result.history[-1]["train_acc"], "lrs": [h["lr"] for h in result.history],
                         "seconds": time.time() - t0, "genotype": str(result.genotype.to_dict())})
            print(json.dumps(rows[-1]), flush=True)
        config = to_dict(cfg)
    config.pop("seed")
    config.pop("run_dir")
    return rows, config


def summary(rows: list[dict]) -> dict:
    accs = [r["test_acc"] for r in rows]
    return {"seeds": [r["seed"] for r in rows], "test_acc": accs, "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quark0", help="JSON lines from the quark0/darts harness (one object per seed)")
    p.add_argument("--out", help="write the comparison JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows, config = run_fastdarts(args.seeds, args.set)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
           "torch": torch.__version__, "threads": args.threads, "overrides": args.set, "config": config,
           "fastdarts": {"runs": rows, **summary(rows)}}
    if args.quark0:
        with open(args.quark0) as f:
            q = [json.loads(line) for line in f if line.strip()]
        out["quark0"] = {"runs": q, **summary(q)}
    print(json.dumps({k: {"mean": v["mean"], "std": v["std"]} for k, v in out.items()
                      if isinstance(v, dict) and "mean" in v}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
