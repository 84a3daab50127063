"""What tests/test_ddp.py runs on each rank under ``python -m torch.distributed.run`` (gloo, CPU).

``python ddp_worker.py search OUT key=value ...``: ``fastdarts.search`` on the packaged default plus the
overrides; each rank saves its ``SearchResult.arch`` and genotype to ``OUT/rank<r>.pt``.

``python ddp_worker.py steps OUT``: for every method of :data:`METHODS`, :func:`run_steps` on this rank's
slice of the global batches; each rank saves the results to ``OUT/steps<r>.pt``. The test runs the same
function in one process on the whole batches to compare.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

# (method, cells): 4 cells give Λ-DARTS two normal cells to align (cells 0 and 3).
METHODS = [("darts", 2), ("darts2", 2), ("pcdarts", 2), ("lambda_darts", 4), ("gdas", 2), ("dropnas", 2),
           ("prdarts", 2), ("gaea", 2)]
GLOBAL_BATCH, STEPS, IMAGE = 8, 2, 8


def _batches(steps: int):
    """The global (train, valid) batches of every step, float64, the same in every process."""
    g = torch.Generator().manual_seed(11)
    out = []
    for _ in range(steps):
        pair = []
        for _ in range(2):
            x = torch.randn(GLOBAL_BATCH, 3, IMAGE, IMAGE, generator=g, dtype=torch.float64)
            pair.append((x, torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)))
        out.append(pair)
    return out


def run_steps(method: str, layers: int, rank: int = 0, world: int = 1) -> dict:
    """``STEPS`` search iterations of ``method`` on a float64 supernet in eval mode, fed this rank's
    contiguous slice of each global batch (all of it when ``world`` is 1).

    Eval mode makes BatchNorm use its running statistics, so every sample's loss depends on that
    sample alone and the global batch's mean loss is exactly the sample-weighted mean of the
    slices' losses: the one difference between ranks and a single process (per-slice batch
    statistics) is gone, and what is left is the order of floating-point sums.
    """
    from fastdarts.methods import get_method
    from fastdarts.spaces import build_supernet

    torch.manual_seed(0)
    model = build_supernet("darts", method, C=4, num_classes=10, layers=layers, supernet="quark0",
                           backend="eager").to(torch.float64).eval()
    cls = get_method(method)
    hyper = cls.resolve_hyper({"epochs": 2, "layers": layers, "batch_size": GLOBAL_BATCH, "arch_warmup": 0,
                               "gate_seed": 5}, "darts")
    m = cls(model, hyper)
    m.begin_epoch(1)  # Λ-DARTS: λ_t = λ in the last epoch (0 in the first)
    gates = []
    for step, ((xt, yt), (xv, yv)) in enumerate(_batches(STEPS)):
        part = lambda t: torch.tensor_split(t, world)[rank]  # noqa: E731
        m.step((part(xt), part(yt)), (part(xv), part(yv)), step)
        last = getattr(getattr(m, "gates", None), "last", {})
        gates.append({k: s.keep.clone() for k, s in last.items()})
    return {"arch": [a.detach().clone() for a in m.arch],
            "arch_grad": [None if a.grad is None else a.grad.clone() for a in m.arch],
            "weights": [p.detach().clone() for p in m.weights],
            "gates": gates, "genotype": model.genotype().to_dict()}


def main(argv: list[str]) -> None:
    mode, out = argv[0], argv[1]
    if mode == "search":
        import fastdarts
        from fastdarts.config import SearchConfig, default_search_config_path, load_config

        result = fastdarts.search(load_config(SearchConfig, default_search_config_path(), argv[2:]))
        torch.save({"arch": result.arch, "genotype": result.genotype.to_dict()},
                   os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    elif mode == "steps":
        dist.init_process_group("gloo")
        try:
            rank, world = dist.get_rank(), dist.get_world_size()
            results = {name: run_steps(name, layers, rank, world) for name, layers in METHODS}
        finally:
            dist.destroy_process_group()
        torch.save(results, os.path.join(out, f"steps{os.environ['RANK']}.pt"))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
