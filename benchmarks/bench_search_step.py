"""pytest-benchmark suite: one DARTS / PC-DARTS search iteration per backend.

Run: ``pytest benchmarks/bench_search_step.py -o python_files='bench_*.py' --benchmark-only``.
Runs on CUDA when available, else on CPU at a reduced size (C=8, 5 cells, batch 16, 16×16).
``benchmark.extra_info`` records the size, the backend and the net bytes the forward leaves
allocated (CPU) or the peak bytes of the step (CUDA), from the same helpers as ``fastdarts bench``.
"""

import pytest
import torch

from fastdarts.bench import forward_net_bytes, peak_step_bytes, search_setup
from fastdarts.functional import resolve_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZE = dict(C=16, layers=8, batch=64, size=32) if DEVICE.type == "cuda" else dict(C=8, layers=5, batch=16, size=16)
VARIANTS = [("eager", False), ("auto", False), ("auto", True)]


@pytest.mark.parametrize("method", ["darts", "pcdarts"])
@pytest.mark.parametrize("backend,recompute", VARIANTS, ids=["eager", "auto", "auto+recompute"])
def test_bench_search_step(benchmark, method, backend, recompute):
    resolved = resolve_backend(backend, DEVICE.type)
    model, runner, xy = search_setup(method, "darts", SIZE["C"], SIZE["layers"], SIZE["batch"], SIZE["size"],
                                      DEVICE, backend, recompute)

    def step():
        runner.step(xy, xy, 0)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
    memory = peak_step_bytes(runner, xy, DEVICE) if DEVICE.type == "cuda" else forward_net_bytes(model, xy[0])
    benchmark.extra_info.update(device=str(DEVICE), backend=resolved, recompute=recompute, memory_bytes=memory,
                                memory_kind="peak" if DEVICE.type == "cuda" else "forward_net", **SIZE)
