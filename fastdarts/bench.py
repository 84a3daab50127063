"""``fastdarts bench``: kernel and search-step benchmarks written as JSON, markdown and PNG.

Kernel records measure each backend of the fused mixed sum (forward + backward) and of
the PC-DARTS partial-channel gather against the eager loop, with the achieved bandwidth
computed from the bytes that must move (see :func:`mixed_sum_bytes`) and its fraction of
the device's copy bandwidth measured in the same run.

Search records measure one full search iteration per method, space and backend: step
time, peak memory (CUDA) or the net bytes the forward leaves allocated (CPU, measured
with ``torch.profiler`` as the sum of ``self_cpu_memory_usage``), the ratio to the eager
backend, and the largest batch that fits a memory budget (CUDA: found by search; CPU:
estimated from the bytes per sample).

Pipeline records (``fastdarts bench pipeline``) measure the images/s of the ImageFolder training
loader (PIL decode, torchvision v2 RandomResizedCrop + flip, uint8 batches normalised in the main
process, where a CUDA search normalises on the GPU) on the CPU for 0 and 2 DataLoader workers, on a
generated folder of JPEGs.

Results go to ``<out>/<device>-<YYYYMMDD>.json`` (+ ``.md``, ``.png``; the pipeline:
``<out>/pipeline-<device>-<YYYYMMDD>.{json,md}``); the README's performance table is regenerated
from every JSON file in ``benchmarks/results`` that holds kernel or search records.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

import fastdarts
from fastdarts.functional import mixed_sum, partial_channel_combine, resolve_backend
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet, resolve_supernet

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
CPU_BUDGET_BYTES = 16 * 2**30  # budget for the CPU "largest batch" estimate
GPU_BUDGET_BYTES = 80 * 10**9  # "largest batch at 80 GB" (capped by the device's own memory)


# ------------------------------------------------------------------------------------- timing
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}-{os.cpu_count()}cores"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, reps: int = 5) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA: ``triton.testing.do_bench``, which flushes L2)."""
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except ImportError:
            pass
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, numel: int) -> float:
    """Measured device copy bandwidth (bytes read + written per second, in GB/s)."""
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x), device, warmup=3, reps=10)
    return 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------- kernels
def mixed_sum_bytes(K: int, numel: int, element_size: int) -> int:
    """Bytes a fused forward + backward must move: forward reads K and writes 1 tensor;
    backward reads the gradient and the K inputs and writes K input gradients → (3K + 2)·n·s."""
    return (3 * K + 2) * numel * element_size


def _mixed_sum_step(xs, w, g, backend: str | None):
    def run():
        if backend is None:  # the eager loop users write: sum(w_k * x_k)
            y = sum(wk * xk for wk, xk in zip(w, xs))
        else:
            y = mixed_sum(xs, w, backend=backend)
        return torch.autograd.grad(y, xs + [w], g)

    return run


def _available_backends(device: torch.device) -> list[str]:
    names = ["triton", "cuda"] if device.type == "cuda" else ["cpp"]
    out = []
    for name in names:
        try:
            resolve_backend(name, device.type)
            out.append(name)
        except ValueError:
            pass
    return out


def bench_kernels(device: torch.device, quick: bool = False) -> tuple[list[dict], float]:
    """Mixed-sum and partial-channel records, plus the copy bandwidth they are compared with."""
    big = device.type == "cuda"
    sizes = [2**16] if quick else ([2**20, 2**24] if big else [2**18, 2**21])
    Ks = [2, 8] if quick else [2, 4, 8]
    dtypes = [torch.float32] if not big else [torch.float32, torch.bfloat16]
    copy_bw = copy_bandwidth_gbps(device, max(sizes) * 4)
    backends = _available_backends(device)
    records = []
    for dtype in dtypes:
        for K in Ks:
            for n in sizes:
                xs = [torch.randn(n, device=device, dtype=dtype, requires_grad=True) for _ in range(K)]
                w = torch.softmax(torch.randn(K, device=device), 0).requires_grad_()
                g = torch.randn(n, device=device, dtype=dtype)
                nbytes = mixed_sum_bytes(K, n, xs[0].element_size())
                eager_ms = time_ms(_mixed_sum_step(xs, w, g, None), device)
                for backend in ["eager"] + backends:
                    ms = eager_ms if backend == "eager" else time_ms(_mixed_sum_step(xs, w, g, backend), device)
                    gbps = nbytes / (ms * 1e-3) / 1e9
                    records.append(dict(name="mixed_sum", mode="fwd+bwd", backend=backend, dtype=str(dtype)[6:],
                                        K=K, numel=n, ms=ms, gbps=gbps, pct_of_copy_bw=100 * gbps / copy_bw,
                                        speedup_vs_eager=eager_ms / ms))
    records += _bench_partial_channel(device, copy_bw, quick)
    return records, copy_bw


def _bench_partial_channel(device, copy_bw, quick):
    records = []
    k, C = 4, 64
    shape = (8, C, 16, 16) if quick else (64, C, 32, 32)
    backends = [b for b in _available_backends(device) if b != "triton"]
    for stride in (1, 2):
        x = torch.randn(*shape, device=device, requires_grad=True)
        Ho = shape[2] // stride
        ya = torch.randn(shape[0], C // k, Ho, Ho, device=device, requires_grad=True)
        g = torch.randn(shape[0], C, Ho, Ho, device=device)

        def step(backend, x=x, ya=ya, g=g, stride=stride):
            return lambda: torch.autograd.grad(partial_channel_combine(x, ya, k, stride, backend=backend), (x, ya), g)

        # forward reads ya + bypass and writes y; backward reads g and writes grad_ya + grad_x
        nbytes = (ya.numel() + 2 * g.numel() + g.numel() + ya.numel() + x.numel()) * 4
        eager_ms = time_ms(step("eager"), device)
        for backend in ["eager"] + backends:
            ms = eager_ms if backend == "eager" else time_ms(step(backend), device)
            gbps = nbytes / (ms * 1e-3) / 1e9
            records.append(dict(name=f"pc_shuffle_cat_s{stride}", mode="fwd+bwd", backend=backend, dtype="float32",
                                K=k, numel=x.numel(), ms=ms, gbps=gbps, pct_of_copy_bw=100 * gbps / copy_bw,
                                speedup_vs_eager=eager_ms / ms))
    return records


# ------------------------------------------------------------------------------------- search
@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 to /dev/null for the block: Kineto in PyPI's CUDA builds of torch writes
    "USDT: profiler_start/stop" lines (and, with no GPU, "gpuGetDeviceCount failed") from C++ on
    every profiler start and stop. Exceptions still propagate, and are printed after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def forward_net_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Net bytes the forward leaves allocated on CPU (saved activations + output): the sum of
    ``self_cpu_memory_usage`` over the profiler's events."""
    with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = model(x)
    del out
    return int(sum(e.self_cpu_memory_usage for e in prof.events()))


def search_setup(method: str, space: str, C: int, layers: int, batch: int, size: int, device, backend, recompute,
                 **net_options):
    """A supernet, its method runner (past any architecture warm-up) and one random batch.

    ``net_options`` go to :func:`~fastdarts.spaces.build_supernet` (e.g. ``steps`` for a tiny cell).
    """
    torch.manual_seed(0)
    model = build_supernet(space, method, C, 10, layers, backend=backend, recompute=recompute,
                           **net_options).to(device)
    cls = get_method(method)
    runner = cls(model, cls.resolve_hyper({"epochs": 10}, space))
    runner.begin_epoch(max(runner.hp.get("arch_warmup", 0), 1))  # past any warm-up: both steps run
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return model, runner, (x, y)


def peak_step_bytes(runner, batch_xy, device) -> int:
    """Peak CUDA bytes one search iteration allocates above what was allocated before it."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    runner.step(batch_xy, batch_xy, 0)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _largest_batch_cuda(method, space, C, layers, size, device, backend, recompute) -> int:
    budget = min(GPU_BUDGET_BYTES, torch.cuda.get_device_properties(device).total_memory)
    lo, hi = 0, 64
    while hi <= 8192:
        try:
            _, runner, xy = search_setup(method, space, C, layers, hi, size, device, backend, recompute)
            if peak_step_bytes(runner, xy, device) > budget:
                break
            lo, hi = hi, hi * 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    while hi - lo > max(lo // 16, 1):  # refine to ~6 %
        mid = (lo + hi) // 2
        try:
            _, runner, xy = search_setup(method, space, C, layers, mid, size, device, backend, recompute)
            ok = peak_step_bytes(runner, xy, device) <= budget
        except torch.cuda.OutOfMemoryError:
            ok = False
        torch.cuda.empty_cache()
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def bench_search(device: torch.device, quick: bool = False, methods=None) -> list[dict]:
    """Search-step records: the reference DARTS config per backend, then every method at a small size."""
    records = []
    full = dict(C=16, layers=8, batch=64, size=32) if not quick else dict(C=4, layers=5, batch=8, size=16)
    small = dict(C=8, layers=5, batch=32, size=16) if not quick else dict(C=4, layers=5, batch=8, size=16)
    variants = [("eager", "eager", False), ("auto", "auto", False), ("auto+recompute", "auto", True)]
    plan = [("darts", "darts", full, variants), ("pcdarts", "darts", full, variants[:2])]
    for method in methods or ["darts", "darts2", "pcdarts", "prdarts", "lambda_darts", "dropnas", "gaea", "gdas"]:
        # PR-DARTS and GDAS search D-X-Y's NASNet-super, whose cell count is a multiple of 3.
        net = dict(small, layers=6) if resolve_supernet("darts", method) == "nasnet" else small
        plan.append((method, "darts", net, [("auto", "auto", False)]))
    plan.append(("darts", "nb201", dict(small, layers=2), [("auto", "auto", False)]))
    eager_ref: dict[tuple, int] = {}
    for method, space, size, vars_ in plan:
        for label, backend, recompute in vars_:
            try:
                model, runner, xy = search_setup(method, space, size["C"], size["layers"], size["batch"],
                                                  size["size"], device, backend, recompute)
            except (ValueError, ImportError) as err:  # method not available in this build
                records.append(dict(name=f"search_step/{method}/{space}", method=method, space=space,
                                    backend=label, skipped=str(err)))
                continue
            step_ms = time_ms(functools.partial(runner.step, xy, xy, 0), device, warmup=1,
                              reps=3 if device.type == "cpu" else 5)
            saved = forward_net_bytes(model, xy[0]) if device.type == "cpu" else None
            peak = peak_step_bytes(runner, xy, device) if device.type == "cuda" else None
            key = (size["C"], size["layers"], size["batch"], space)
            mem = peak if peak is not None else saved
            if method == "darts" and label == "eager":
                eager_ref[key] = mem
            if device.type == "cuda":
                max_batch = _largest_batch_cuda(method, space, size["C"], size["layers"], size["size"], device,
                                                backend, recompute)
            else:
                max_batch = int(CPU_BUDGET_BYTES // max(saved / size["batch"], 1))
            records.append(dict(
                name=f"search_step/{method}/{space}", method=method, space=space, backend=label,
                C=size["C"], layers=size["layers"], image_size=size["size"], batch=size["batch"], step_ms=step_ms,
                peak_bytes=peak, saved_bytes=saved, ratio_vs_eager=(mem / eager_ref[key]) if key in eager_ref else None,
                max_batch=max_batch, max_batch_budget_bytes=CPU_BUDGET_BYTES if device.type == "cpu" else
                min(GPU_BUDGET_BYTES, torch.cuda.get_device_properties(device).total_memory),
            ))
            model = runner = None  # free this variant before building the next
    add_relative_fields(records)
    return records


def add_relative_fields(records: list[dict]) -> None:
    """Step time relative to the same method on the eager backend, and time and memory relative to
    DARTS on the same backend and size (the method-cost table)."""
    timed = [r for r in records if "step_ms" in r]
    size = lambda r: (r["C"], r["layers"], r["batch"], r["space"])  # noqa: E731
    eager = {(r["method"], *size(r)): r["step_ms"] for r in timed if r["backend"] == "eager"}
    darts = {(r["backend"], *size(r)): r for r in timed if r["method"] == "darts"}
    memory = lambda r: r["peak_bytes"] if r["peak_bytes"] is not None else r["saved_bytes"]  # noqa: E731
    for r in timed:
        e, d = eager.get((r["method"], *size(r))), darts.get((r["backend"], *size(r)))
        r["time_vs_eager"] = r["step_ms"] / e if e else None
        r["time_vs_darts"] = r["step_ms"] / d["step_ms"] if d and r["method"] != "darts" else None
        r["memory_vs_darts"] = memory(r) / memory(d) if d and r["method"] != "darts" else None


# ------------------------------------------------------------------------------------- input pipeline
PIPELINE_WORKERS = (0, 2)


def write_jpeg_folder(root: str, classes: int, per_class: int, px: int, seed: int = 0) -> str:
    """An ImageFolder of ``classes`` x ``per_class`` generated ``px`` x ``px`` RGB JPEGs (quality 90).

    Each image is an upsampled 8x8 random colour field plus pixel noise, so it compresses like a photo
    rather than like flat colour or pure noise (either would make decoding unrealistically cheap or dear).
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, f"class{c:02d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((px, px), Image.BICUBIC)
            noisy = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 8, (px, px, 3)).astype(np.int16)
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.jpg"),
                                                                          quality=90)
    return root


def bench_pipeline(root: str, *, image_size: int = 224, batch: int = 32, workers=None,
                   repeats: int = 3) -> list[dict]:
    """Images/s of the ImageFolder training loader for each DataLoader worker count (0: also at 1 thread).

    ``workers`` defaults to :data:`PIPELINE_WORKERS` and the default count ``data.num_workers`` resolves
    to here. The loader is the one a folder search uses for its weight split (``pcdarts-imagenet``): PIL
    decode, torchvision v2 RandomResizedCrop(scale 0.08..1, ratio 3/4..4/3) to ``image_size`` + flip,
    uint8 batches assembled by :class:`fastdarts.data.EpochLoader` and normalised in this process. One
    repeat is one full epoch (a different epoch each time, so different crops), timed from the first
    ``iter`` to the last batch. The workers persist across epochs, as in a search: their start-up falls
    in the first repeat only. One batch is read untimed first.
    """
    from fastdarts.data import DataConfig, build_train_data
    from fastdarts.data.config import resolve_num_workers

    if workers is None:
        workers = sorted({*PIPELINE_WORKERS, resolve_num_workers(None, "imagefolder")})

    # In-process decoding runs at the process's torch thread count and at 1: per-image normalisation on
    # several intra-op threads is much slower when the cores are shared. DataLoader workers use 1 thread each.
    process_threads = torch.get_num_threads()
    configs = [(w, t) for w in workers for t in (dict.fromkeys((process_threads, 1)) if w == 0 else (1,))]
    records = []
    for w, threads in configs:
        cfg = DataConfig(name=root, image_size=image_size, batch_size=batch, augment=True, num_workers=w)
        loader = build_train_data(cfg, seed=0).train
        torch.set_num_threads(threads if w == 0 else process_threads)
        try:
            loader.batch(0, 0)  # one-off costs (PIL import, first file reads) are not part of the rate
            rates = []
            for epoch in range(repeats):
                n, t0 = 0, time.perf_counter()
                for x, _ in loader.iterate(epoch):
                    n += x.shape[0]
                rates.append(n / (time.perf_counter() - t0))
        finally:
            torch.set_num_threads(process_threads)
            loader.close()
        records.append(dict(name="imagefolder_train", workers=w, decode_threads=threads, batch=batch,
                            image_size=image_size, images_per_epoch=loader.num_samples, repeats=repeats,
                            images_per_s=statistics.median(rates), images_per_s_all=rates))
    return records


def pipeline_markdown(result: dict) -> str:
    """Markdown table of a pipeline result file."""
    lines = [f"**{result['device']}** · torch {result['torch']} · torchvision {result.get('torchvision', '–')} · "
             f"Pillow {result['pillow']} · commit "
             f"{result['commit']} · {result['date']} · load average {result['load_avg_before'][0]:.2f} before, "
             f"{result['load_avg_after'][0]:.2f} after", "",
             (f"{result['images']} generated {result['source_px']} px JPEGs" if result["images"] else
              f"ImageFolder {result['data']}") + "; training transform RandomResizedCrop + flip (torchvision "
             "v2), uint8 batches normalised in the main process", "",
             "| workers | torch threads per decoding process | batch | output px | images/epoch | repeats | "
             "images/s (median) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['decode_threads']} | {r['batch']} | {r['image_size']} | "
              f"{r['images_per_epoch']} | {r['repeats']} | {r['images_per_s']:.0f} |" for r in result["pipeline"]]
    return "\n".join(lines) + "\n"


def run_pipeline_bench(out: str = os.path.join("benchmarks", "results"), *, data: str | None = None,
                       quick: bool = False) -> list[str]:
    """Measure :func:`bench_pipeline` on ``data`` (default: a generated folder of 8 x 32 JPEGs of 224 px;
    ``quick``: 2 x 4 and one repeat) and write ``<out>/pipeline-<device>-<date>.{json,md}``."""
    import tempfile

    import PIL
    import torchvision

    classes, per_class, repeats = (2, 4, 1) if quick else (8, 32, 5)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = data if data is not None else write_jpeg_folder(tmp, classes, per_class, 224)
        records = bench_pipeline(root, repeats=repeats, batch=4 if quick else 32)
    result = dict(kind="pipeline", device=device_name(torch.device("cpu")), torch=torch.__version__,
                  torchvision=torchvision.__version__, pillow=PIL.__version__, fastdarts=fastdarts.__version__,
                  commit=_commit(), date=time.strftime("%Y-%m-%d"), quick=quick, threads=torch.get_num_threads(),
                  data=data or "generated", source_px=None if data else 224,
                  images=None if data else classes * per_class, load_avg_before=list(load_before),
                  load_avg_after=list(os.getloadavg()), pipeline=records)
    stem = _write_result(out, "pipeline-", result, pipeline_markdown(result), quick)
    return [stem + ".json", stem + ".md"]


# ------------------------------------------------------------------------------------- reports
def _write_result(out: str, prefix: str, result: dict, markdown: str, quick: bool) -> str:
    """Write ``result`` as ``out/<prefix><device>-<date>.json`` and its markdown as ``.md``; returns the
    path without extension."""
    os.makedirs(out, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", result["device"]).strip("-").lower()
    stem = os.path.join(out, f"{prefix}{slug}-{time.strftime('%Y%m%d')}{'-quick' if quick else ''}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown)
    return stem


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt_bytes(b) -> str:
    return "–" if b is None else f"{b / 2**20:.1f} MiB"


def markdown_tables(result: dict) -> str:
    """Markdown tables of one result file."""
    lines = [f"**{result['device']}** · torch {result['torch']} · triton {result['triton']} · "
             f"commit {result['commit']} · {result['date']}", ""]
    kern = [r for r in result["records"] if "gbps" in r]
    if kern:
        lines += [f"Copy bandwidth measured in the same run: {result['copy_bw_gbps']:.1f} GB/s", "",
                  "| kernel | mode | backend | dtype | K | elements | ms | GB/s | % of copy BW | speed-up vs eager |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r.get('mode', 'fwd+bwd')} | {r['backend']} | {r['dtype']} | {r['K']} | "
                  f"{r['numel']:,} | {r['ms']:.3f} | {r['gbps']:.1f} | {r['pct_of_copy_bw']:.1f} | "
                  f"{r['speedup_vs_eager']:.2f}× |" for r in kern]
        lines.append("")
    srch = [r for r in result["records"] if "step_ms" in r]
    if srch:
        lines += ["| method | space | backend | C/cells/batch/px | step ms | time vs eager | time vs DARTS | "
                  "peak (CUDA) | forward saved (CPU) | memory vs eager DARTS | memory vs DARTS | "
                  "largest batch in budget |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        ratio = lambda v: "–" if v is None else f"{v:.2f}×"  # noqa: E731
        for r in srch:  # fields a record lacks (e.g. gpu_check's search records) show as –
            mem = "–" if r.get("ratio_vs_eager") is None else f"{100 * r['ratio_vs_eager']:.1f} %"
            budget = ("–" if r.get("max_batch") is None else
                      f"{r['max_batch']:,} @ {r['max_batch_budget_bytes'] / 2**30:.0f} GiB")
            lines.append(f"| {r['method']} | {r['space']} | {r['backend']} | {r['C']}/{r['layers']}/{r['batch']}/"
                         f"{r['image_size']} | {r['step_ms']:.0f} | {ratio(r.get('time_vs_eager'))} | "
                         f"{ratio(r.get('time_vs_darts'))} | {_fmt_bytes(r.get('peak_bytes'))} | "
                         f"{_fmt_bytes(r.get('saved_bytes'))} | {mem} | {ratio(r.get('memory_vs_darts'))} | {budget} |")
        lines.append("")
    skipped = [r for r in result["records"] if "skipped" in r]
    if skipped:
        lines += ["Not measured: " + "; ".join(f"{r['method']}/{r['space']} ({r['skipped']})" for r in skipped), ""]
    return "\n".join(lines)


def _size_key(r: dict) -> tuple:
    return (r["space"], r["C"], r["layers"], r["batch"], r["image_size"])


def _size_title(key: tuple) -> str:
    space, C, layers, batch, px = key
    cells = "cells per stage" if space == "nb201" else "cells"
    return f"search step · {space} space · C={C}, {layers} {cells}, batch {batch}, {px}×{px} px"


def bench_figure(result: dict):
    """Bar charts of one result: mixed_sum GB/s by shape and backend, then one panel of search-step
    times per network size (method × backend); the title names the device, torch and triton versions
    and the commit."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kern = [r for r in result["records"] if "gbps" in r and r["name"] == "mixed_sum"]
    srch = [r for r in result["records"] if "step_ms" in r]
    sizes = sorted({_size_key(r) for r in srch}, key=lambda k: (-k[1] * k[2] * k[3] * k[4] ** 2, k))
    panels = (1 if kern else 0) + len(sizes)
    ncols = 2 if panels > 1 else 1
    nrows = max(math.ceil(panels / ncols), 1)
    fig = Figure(figsize=(7.2 * ncols, 4.4 * nrows))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(max(panels, 1))]
    i = 0
    if kern:
        ax = axes[0]
        shapes = list(dict.fromkeys((r["K"], r["dtype"], r["numel"]) for r in kern))
        backends = list(dict.fromkeys(r["backend"] for r in kern))
        width = 0.8 / len(backends)
        for b, backend in enumerate(backends):
            vals = {(r["K"], r["dtype"], r["numel"]): r["gbps"] for r in kern if r["backend"] == backend}
            xs = [j + (b - (len(backends) - 1) / 2) * width for j, sh in enumerate(shapes) if sh in vals]
            ax.bar(xs, [vals[sh] for sh in shapes if sh in vals], width, label=backend,
                   color="tab:gray" if backend == "eager" else None)
        if result.get("copy_bw_gbps"):
            ax.axhline(result["copy_bw_gbps"], color="tab:red", ls="--", label="measured copy bandwidth")
            ax.set_ylim(0, 1.3 * max(result["copy_bw_gbps"], max(r["gbps"] for r in kern)))
        ax.set_xticks(range(len(shapes)), [f"K={K}\n{dt.replace('float', 'fp')}\n{n / 2**20:.3g}M"
                                           for K, dt, n in shapes], fontsize=8)
        ax.set_xlabel("candidates K · dtype · elements per candidate", fontsize=8)
        ax.set_ylabel("GB/s (forward + backward)")
        ax.set_title("mixed_sum bandwidth by backend", fontsize=10)
        ax.legend(fontsize=8, loc="upper center", ncol=3)
        ax.grid(axis="y", alpha=0.3)
        i = 1
    for key in sizes:
        ax = axes[i]
        i += 1
        rows = [r for r in srch if _size_key(r) == key]
        labels = [f"{r['method']} · {r['backend']}" for r in rows]
        vals = [r["step_ms"] for r in rows]
        ys = range(len(rows))
        ax.barh(ys, vals, color=["tab:gray" if r["backend"] == "eager" else "tab:blue" for r in rows])
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_ylim(max(len(rows), 5) - 0.5, -0.5)  # top to bottom; few bars keep a normal thickness
        for y, v in zip(ys, vals):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=7)
        ax.set_xlim(0, max(vals) * 1.18)
        ax.set_xlabel("ms per search step (architecture + weight step)", fontsize=8)
        ax.set_title(_size_title(key), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[i:]:
        ax.set_visible(False)
    head = (f"fastdarts bench · {result['device']} · torch {result['torch']} · triton {result.get('triton')} · "
            f"commit {result['commit']} · {result['date']}")
    fig.suptitle(head + (" · quick shapes" if result.get("quick") else ""), fontsize=11)
    fig.tight_layout()
    return fig


def plot(result: dict, path: str) -> None:
    """Write :func:`bench_figure` of ``result`` as a PNG."""
    bench_figure(result).savefig(path, dpi=110)


def replot(json_path: str, png_path: str | None = None) -> str:
    """Redraw the PNG of a result JSON written by :func:`run_bench` (no measuring); returns its path
    (default: the JSON's path with ``.png``)."""
    with open(json_path) as f:
        result = json.load(f)
    if "records" not in result:
        raise ValueError(f"{json_path} is not a fastdarts bench result (no 'records')")
    png_path = png_path or os.path.splitext(json_path)[0] + ".png"
    plot(result, png_path)
    return png_path


def update_readme(results_dir: str, readme: str) -> bool:
    """Replace the README block between the bench markers with tables from every result JSON."""
    if not os.path.isfile(readme):
        return False
    with open(readme) as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        return False
    blocks = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            result = json.load(f)
        if "records" not in result:  # other studies (e.g. examples/collapse_study.py) keep their own tables
            continue
        blocks.append(f"From `{os.path.relpath(path, os.path.dirname(readme) or '.')}`:\n\n" + markdown_tables(result))
    body = "\n".join(blocks) if blocks else "No benchmark results committed yet."
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    text = pattern.sub(lambda _: f"{README_START}\n{body}\n{README_END}", text)
    with open(readme, "w") as f:
        f.write(text)
    return True


def run_bench(what: str = "all", out: str = os.path.join("benchmarks", "results"), *, quick: bool = False,
              device: str | None = None, readme: str = "README.md", data: str | None = None) -> list[str]:
    """Run the benchmarks and write ``<out>/<device>-<date>.{json,md,png}``; returns the written paths.

    ``what="pipeline"`` (not part of ``"all"``) measures the ImageFolder input pipeline on the CPU instead
    (:func:`run_pipeline_bench`; ``data``: an ImageFolder to read rather than generated JPEGs)."""
    if what not in ("kernels", "search", "all", "pipeline"):
        raise ValueError(f"unknown benchmark {what!r}; choose kernels, search, all or pipeline")
    if what == "pipeline":
        return run_pipeline_bench(out, data=data, quick=quick)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = dict(device=device_name(dev), torch=torch.__version__, triton=triton_version,
                  fastdarts=fastdarts.__version__, commit=_commit(), date=time.strftime("%Y-%m-%d"),
                  quick=quick, threads=torch.get_num_threads(), copy_bw_gbps=None, records=[])
    if what in ("kernels", "all"):
        records, copy_bw = bench_kernels(dev, quick)
        result["records"] += records
        result["copy_bw_gbps"] = copy_bw
    if what in ("search", "all"):
        result["records"] += bench_search(dev, quick)
    stem = _write_result(out, "", result, markdown_tables(result), quick)
    plot(result, stem + ".png")
    paths = [stem + ".json", stem + ".md", stem + ".png"]
    if not quick and update_readme(out, readme):
        paths.append(readme)
    return paths
