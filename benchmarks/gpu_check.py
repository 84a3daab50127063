"""Stages of ``benchmarks/gpu_check.sh``, the one prepared GPU run (issue 9, section 4).

Each subcommand is one stage; it prints its table and writes ``<state>/<stage>.json``, which
``report`` merges into ``<out>/<device>-<YYYYMMDD>.json`` (the schema of ``fastdarts bench``:
``device, torch, triton, fastdarts, commit, date, quick, threads, copy_bw_gbps, records``, plus a
``gpu_check`` section with the stage outcomes, the backend measurement for "auto", the targets
and the figures still owed) and the matching ``.md``. ``--dry-run`` runs every stage that can
run on CPU at tiny sizes (C++ kernels, the Triton interpreter), so the script is known to work
before a GPU sees it; its numbers mean nothing and it writes nowhere near benchmarks/results.

Exit status: 0 done, 1 a check failed, 3 not applicable on this machine (the shell records it
as skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere: import the checkout's fastdarts
    sys.path.insert(0, ROOT)
if os.environ.get("FASTDARTS_GPU_CHECK_DRY") == "1" or "--dry-run" in sys.argv:
    # the dry run exercises the Triton kernels through the interpreter (set before Triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

SKIPPED = 3
# Stage-5 targets (issue 9, section 3): mixed_sum fwd+bwd at K=8 and >= 16M elements.
TARGET_PCT_OF_COPY = 85.0
TARGET_SPEEDUP = 3.0
# Per-edge size of a DARTS search (C=16 at 32x32, batch 64) and its fused candidates (8 minus
# `none`, which the fused path skips): where Triton and CUDA are compared for backend "auto".
AUTO_CHOICE_NUMEL = 64 * 16 * 32 * 32
AUTO_CHOICE_K = 7
# Largest-batch stage: the predicted batch is verified by one step only if it should take at most this.
VERIFY_BUDGET_S = 8.0


# ------------------------------------------------------------------------------------- helpers
def _device(dry: bool) -> torch.device:
    if dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --cpu-dry-run on a CPU machine)")
    return torch.device("cuda")


def _save(state: str, stage: str, data: dict) -> None:
    os.makedirs(state, exist_ok=True)
    with open(os.path.join(state, f"{stage}.json"), "w") as f:
        json.dump(data, f, indent=1, default=str)


def _load(state: str, stage: str) -> dict | None:
    path = os.path.join(state, f"{stage}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _run(cmd: list[str]) -> str:
    """Output of ``cmd`` (first lines), or why it could not run."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unavailable ({type(err).__name__})"
    return (out.stdout or out.stderr).strip()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_host_syncs(fn, device: torch.device) -> int | None:
    """Host synchronisations ``fn()`` performs, counted with ``torch.cuda.set_sync_debug_mode("warn")``
    (one warning per synchronising CUDA call); None on CPU, which has no such counter."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _peak_bytes(fn, device: torch.device) -> int:
    """Peak CUDA bytes ``fn()`` allocates above what was allocated before it."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _print_table(header: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


# ------------------------------------------------------------------------------------- 1 env
def stage_env(args) -> int:
    """GPU, clocks, driver, torch, triton, nvcc: printed and saved."""
    info = dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    nvcc = shutil.which("nvcc")
    info["nvcc"] = _run([nvcc, "--version"]).splitlines()[-1] if nvcc else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    memory_bytes=props.total_memory, l2_bytes=getattr(props, "L2_cache_size", None))
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,"
                                   "clocks.mem,clocks.max.mem,power.limit,temperature.gpu", "--format=csv"])
    for key, value in info.items():
        print(f"{key}: {value}")
    _save(args.state, "env", info)
    return 0


# ------------------------------------------------------------------------------------- 2 build
def stage_build_check(args) -> int:
    """After ``pip install -e .``: the CUDA extension must be loaded (a failure, not a fallback)."""
    from fastdarts import _ext

    ok = _ext.cpp_available() and _ext.cuda_ext_available()
    detail = "fastdarts._C loaded with CUDA kernels" if ok else (
        "fastdarts._C loaded without CUDA kernels" if _ext.cpp_available() else f"load error: {_ext.load_error()}")
    print(detail)
    _save(args.state, "build", dict(ok=ok, detail=detail))
    return 0 if ok else 1


# ------------------------------------------------------------------------------------- 4 int64
def _kernel_backends(device: torch.device) -> dict:
    """``{label: (forward(xs, w), backward(grad, xs, w) -> (grad_xs, grad_w))}`` of the fused kernels here."""
    from fastdarts import _ext
    from fastdarts.kernels import has_triton

    ops = torch.ops.fastdarts
    out = {}
    if _ext.cpp_available() and (device.type == "cpu" or _ext.cuda_ext_available()):
        out["cuda" if device.type == "cuda" else "cpp"] = (
            lambda xs, w: ops.mixed_sum(xs, w),
            lambda g, xs, w: ops.mixed_sum_backward(g, xs, w, [True] * len(xs)))
    if has_triton():
        import fastdarts.kernels.mixed_sum  # noqa: F401  (registers the Triton ops)

        out["triton"] = (lambda xs, w: ops.mixed_sum_triton(xs, w),
                         lambda g, xs, w: ops.mixed_sum_triton_backward(g, xs, w, [True] * (len(xs) + 1)))
    return out


def _dot_bound(abs_sum: torch.Tensor, per_thread: int) -> torch.Tensor:
    """Error bound of an fp32 dot product summed sequentially over ``per_thread`` products per lane and
    then by trees (< 64 levels): γ_(per_thread + 64) · Σ|g·x| with u = eps/2, taken as (m + 64)·eps."""
    return (per_thread + 64) * torch.finfo(torch.float32).eps * abs_sum


def _products_per_lane(label: str, n: int, sm_count: int) -> int:
    """Most products one accumulator of a backend's grad_w reduction sums sequentially (plus the
    sequential sum over per-chunk results where the kernel has one)."""
    if label == "cuda":  # >= sm_count blocks of 256 threads; at most 2 vectors (<= 16 elements) of tail
        return math.ceil(n / (sm_count * 256)) + 16
    if label == "triton":  # per lane: one product per tile of its program, then trees
        from fastdarts.kernels.mixed_sum import backward_programs, kernel_config

        block, _ = kernel_config(torch.bfloat16, 2)
        return math.ceil(math.ceil(n / block) / backward_programs(n, block))
    # C++: 16 lanes over 4096-element chunks (256 products each), then the chunks in order
    return 256 + 16 + math.ceil(n / 4096)


def check_large_and_misaligned(device: torch.device, n: int, chunk: int = 1 << 22) -> list[dict]:
    """bf16, K=2, n elements (n > 2^31 on the GPU: offsets need int64) and misaligned views, per backend.

    Checked against fp32/fp64 references computed chunk by chunk at the tensor's end and start:
    y within one bf16 rounding (the kernels round once, the reference may round the fp32 sum
    differently by one fp32 ulp, which can flip one bf16 rounding), grad_x exactly
    (one fp32 product, one rounding; within one ulp under the Triton interpreter, which truncates),
    grad_w within the summation bound of :func:`_dot_bound`.
    """
    results = []
    gen = torch.Generator(device=device).manual_seed(0)
    xs = [torch.randn(n, generator=gen, device=device, dtype=torch.bfloat16) for _ in range(2)]
    g = torch.randn(n, generator=gen, device=device, dtype=torch.bfloat16)
    w = torch.tensor([0.3, 0.7], device=device)
    exact_w = torch.zeros(2, dtype=torch.float64, device=device)
    abs_w = torch.zeros(2, dtype=torch.float64, device=device)
    for s in range(0, n, chunk):  # fp64 reference of grad_w in chunks (no n-sized fp64 temporaries)
        gs = g[s:s + chunk].double()
        for k in range(2):
            prod = gs * xs[k][s:s + chunk].double()
            exact_w[k] += prod.sum()
            abs_w[k] += prod.abs().sum()
    sm = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    for label, (fwd, bwd) in _kernel_backends(device).items():
        for view in ("aligned", "misaligned"):
            if view == "misaligned":  # the same data one element further in: a 2-byte offset, no 16-byte vectors
                xv = [x[1:] for x in xs]
                gv, m = g[1:], n - 1
            else:
                xv, gv, m = xs, g, n
            # Triton 3.6's interpreter casts fp32 -> bf16 by truncation (the GPU rounds to nearest even)
            truncates = label == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
            t0 = time.perf_counter()
            y = fwd(xv, w)
            gx, gw = bwd(gv, xv, w)
            _sync(device)
            seconds = time.perf_counter() - t0
            errors = []
            for sl in (slice(max(m - chunk, 0), m), slice(0, min(chunk, m))):
                ref = (w[0] * xv[0][sl].float() + w[1] * xv[1][sl].float())
                one_ulp = torch.finfo(torch.bfloat16).eps * ref.abs() + 1e-30
                if not bool(((y[sl].float() - ref).abs() <= one_ulp).all()):
                    errors.append(f"y off by more than one bf16 ulp in [{sl.start}, {sl.stop})")
                for k in range(2):
                    exp = (w[k] * gv[sl].float()).to(torch.bfloat16)
                    if truncates:  # the interpreter rounds toward zero: within one bf16 ulp
                        ok = bool(((gx[k][sl].float() - exp.float()).abs()
                                   <= torch.finfo(torch.bfloat16).eps * exp.float().abs()).all())
                    else:
                        ok = torch.equal(gx[k][sl], exp)
                    if not ok:
                        errors.append(f"grad_x[{k}] differs from w*g in [{sl.start}, {sl.stop})")
            if view == "aligned":
                err = (gw.double() - exact_w).abs()
                bound = _dot_bound(abs_w, _products_per_lane(label, m, sm))
                if not bool((err <= bound).all()):
                    errors.append(f"grad_w error {err.tolist()} exceeds the summation bound {bound.tolist()}")
            results.append(dict(backend=label, view=view, numel=m, dtype="bfloat16", K=2, ok=not errors,
                                errors=errors, seconds=seconds))
            del y, gx, gw
    return results


def stage_int64(args) -> int:
    device = _device(args.dry_run)
    n = (1 << 31) + (1 << 20) + 3 if device.type == "cuda" else (1 << 12) + 3
    results = check_large_and_misaligned(device, n)
    _print_table(["backend", "view", "elements", "ok", "s", "errors"],
                 [[r["backend"], r["view"], f"{r['numel']:,}", r["ok"], f"{r['seconds']:.2f}",
                   "; ".join(r["errors"]) or "–"] for r in results])
    _save(args.state, "int64", dict(results=results))
    return 0 if results and all(r["ok"] for r in results) else 1


# ------------------------------------------------------------------------------------- 5 kernels
def mixed_sum_mode_bytes(K: int, numel: int, element_size: int, mode: str) -> int:
    """Bytes a fused kernel must move: forward reads K and writes 1 tensor; backward reads grad and
    the K inputs and writes K input gradients; fwd+bwd both."""
    per = {"fwd": K + 1, "bwd": 2 * K + 1, "fwd+bwd": 3 * K + 2}[mode]
    return per * numel * element_size


def _mode_fns(label: str, xs, w, g):
    """{mode: callable} for one backend; "eager" is the loop users write, through autograd for fwd+bwd."""
    from fastdarts.functional import mixed_sum

    K = len(xs)
    if label == "eager":
        def fwd():
            return sum(wk * xk for wk, xk in zip(w, xs))

        def bwd():  # what autograd runs for the eager loop
            return [w[k] * g for k in range(K)], torch.stack([(g * x).sum() for x in xs])
        name = "eager"
    else:
        f, b = _kernel_backends(xs[0].device)[label]
        fwd, bwd = (lambda: f(xs, w)), (lambda: b(g, xs, w))
        name = label
    leaves = [x.detach().requires_grad_() for x in xs]
    wl = w.detach().requires_grad_()

    def full():
        y = sum(wk * xk for wk, xk in zip(wl, leaves)) if name == "eager" else mixed_sum(leaves, wl, backend=name)
        return torch.autograd.grad(y, leaves + [wl], g)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": full}


def bench_kernel_table(device: torch.device, dtypes, sizes, K: int, reps: int = 5) -> tuple[list[dict], float]:
    """Records (schema of ``fastdarts bench``) for eager / CUDA (C++) / Triton x fwd, bwd, fwd+bwd."""
    from fastdarts.bench import copy_bandwidth_gbps, time_ms

    copy_bw = copy_bandwidth_gbps(device, max(sizes))
    records = []
    for dtype in dtypes:
        for n in sizes:
            gen = torch.Generator(device=device).manual_seed(n)
            xs = [torch.randn(n, generator=gen, device=device, dtype=dtype) for _ in range(K)]
            w = torch.softmax(torch.randn(K, generator=gen, device=device), 0)
            g = torch.randn(n, generator=gen, device=device, dtype=dtype)
            eager_ms = {}
            for label in ["eager", *_kernel_backends(device)]:
                for mode, fn in _mode_fns(label, xs, w, g).items():
                    ms = time_ms(fn, device, warmup=1, reps=reps)
                    if label == "eager":
                        eager_ms[mode] = ms
                    gbps = mixed_sum_mode_bytes(K, n, xs[0].element_size(), mode) / (ms * 1e-3) / 1e9
                    records.append(dict(name="mixed_sum", mode=mode, backend=label, dtype=str(dtype)[6:], K=K,
                                        numel=n, ms=ms, gbps=gbps, pct_of_copy_bw=100 * gbps / copy_bw,
                                        speedup_vs_eager=eager_ms[mode] / ms))
            del xs, g
    return records, copy_bw


def auto_choice(records: list[dict]) -> dict:
    """Which kernel backend is faster at the DARTS per-edge size (records of K = AUTO_CHOICE_K, fwd+bwd), per dtype."""
    out = {}
    for r in records:
        if r["K"] == AUTO_CHOICE_K and r["mode"] == "fwd+bwd" and r["backend"] != "eager":
            best = out.get(r["dtype"])
            if best is None or r["ms"] < best["ms"]:
                out[r["dtype"]] = dict(backend=r["backend"], ms=r["ms"], numel=r["numel"])
    return out


def stage_kernels(args) -> int:
    device = _device(args.dry_run)
    if device.type == "cuda":
        dtypes, sizes = [torch.float32, torch.bfloat16], [1 << 24, 1 << 26]
    else:  # dry run: the code path only (the Triton interpreter's cost grows with the element count)
        dtypes, sizes = [torch.float32], [1 << 10]
    records, copy_bw = bench_kernel_table(device, dtypes, sizes, K=8, reps=5 if device.type == "cuda" else 1)
    _save(args.state, "kernels", dict(records=records, copy_bw_gbps=copy_bw, auto_choice={}))
    choice_sizes = [AUTO_CHOICE_NUMEL] if device.type == "cuda" else [1 << 10]
    choice_records, _ = bench_kernel_table(device, dtypes, choice_sizes, K=AUTO_CHOICE_K,
                                           reps=5 if device.type == "cuda" else 1)
    choice = auto_choice(choice_records)
    print(f"copy bandwidth: {copy_bw:.1f} GB/s")
    _print_table(["mode", "backend", "dtype", "K", "elements", "ms", "GB/s", "% copy", "× eager"],
                 [[r["mode"], r["backend"], r["dtype"], r["K"], f"{r['numel']:,}", f"{r['ms']:.3f}",
                   f"{r['gbps']:.0f}", f"{r['pct_of_copy_bw']:.1f}", f"{r['speedup_vs_eager']:.2f}"]
                  for r in records + choice_records])
    for dtype, best in choice.items():
        print(f"backend 'auto' at {best['numel']:,} elements x K={AUTO_CHOICE_K} ({dtype}): {best['backend']} "
              f"is faster ({best['ms']:.3f} ms fwd+bwd)")
    _save(args.state, "kernels", dict(records=records + choice_records, copy_bw_gbps=copy_bw, auto_choice=choice))
    return 0


# ------------------------------------------------------------------------------------- 6 search
def search_sizes(dry: bool) -> dict:
    """The reference DARTS search size on a GPU (C=16, 8 cells, batch 64, 32x32); a tiny one in the dry run."""
    if dry:
        return dict(C=4, layers=2, batch=2, size=8, net=dict(steps=1, multiplier=1))
    return dict(C=16, layers=8, batch=64, size=32, net={})


def search_record(method: str, label: str, backend: str, device: torch.device, size: dict, *, recompute=False,
                  compile_options: dict | None = None, reps: int = 5) -> dict:
    """One search-step record: step time, host syncs per step, peak bytes (CUDA); the compile time
    (first step) when ``compile_options`` is given."""
    from fastdarts.bench import search_setup, time_ms
    from fastdarts.spaces import resolve_supernet

    layers = size["layers"]
    if resolve_supernet("darts", method) == "nasnet":  # PR-DARTS / GDAS: NASNet-super, 3N cells (8 -> 6)
        layers = max(3, layers - layers % 3)
    model, runner, xy = search_setup(method, "darts", size["C"], layers, size["batch"], size["size"],
                                     device, backend, recompute, **size["net"])
    record = dict(name=f"search_step/{method}/darts", method=method, space="darts", backend=label, C=size["C"],
                  layers=layers, image_size=size["size"], batch=size["batch"])
    mark = torch.compiler.cudagraph_mark_step_begin if device.type == "cuda" and compile_options is not None \
        else (lambda: None)

    def step():
        mark()
        runner.step(xy, xy, 0)

    if compile_options is not None:
        from fastdarts.search import compile_supernet

        compile_supernet(model, device, **compile_options)
        t0 = time.perf_counter()
        step()
        step()  # the second step compiles the other graphs (e.g. after the architecture step's)
        _sync(device)
        record["compile_s"] = time.perf_counter() - t0
    record["step_ms"] = time_ms(step, device, warmup=1, reps=reps)
    record["host_syncs"] = count_host_syncs(step, device)
    record["peak_bytes"] = _peak_bytes(step, device) if device.type == "cuda" else None
    record["saved_bytes"] = None
    record["ratio_vs_eager"] = None
    return record


def _search_plan(dry: bool):
    plan = [("darts", "eager", "eager"), ("darts", "auto", "auto"), ("pcdarts", "eager", "eager"),
            ("pcdarts", "auto", "auto"), ("prdarts", "auto", "auto"), ("gdas", "auto", "auto")]
    return plan[:2] + plan[3:4] if dry else plan


def _fill_relative(records: list[dict]) -> None:
    eager = {r["method"]: r["step_ms"] for r in records if r.get("backend") == "eager" and "step_ms" in r}
    for r in records:
        if "step_ms" in r:
            r["time_vs_eager"] = r["step_ms"] / eager[r["method"]] if r["method"] in eager else None


def stage_search(args) -> int:
    device = _device(args.dry_run)
    size = search_sizes(args.dry_run)
    records = []
    for method, label, backend in _search_plan(args.dry_run):
        try:
            records.append(search_record(method, label, backend, device, size, reps=5 if device.type == "cuda" else 1))
        except Exception as err:  # recorded, the stage goes on with the next method
            records.append(dict(name=f"search_step/{method}/darts", method=method, space="darts", backend=label,
                                skipped=f"{type(err).__name__}: {err}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _fill_relative(records)
        _save(args.state, "search", dict(records=records))  # after each record: a timeout keeps the others
    _print_search(records)
    return 0 if all("step_ms" in r for r in records) else 1


def stage_search_compile(args) -> int:
    """darts auto+compile: its own stage, since its first steps are the compile time."""
    device = _device(args.dry_run)
    size = search_sizes(args.dry_run)
    # The dry run compiles with aot_eager: the same Dynamo capture and AOT graphs, without the
    # minutes inductor's C++ code generation takes on a small CPU.
    options = dict(backend="aot_eager") if args.dry_run else {}
    try:
        record = search_record("darts", "auto+compile", "auto", device, size, compile_options=options,
                               reps=5 if device.type == "cuda" else 1)
    except Exception as err:
        record = dict(name="search_step/darts/darts", method="darts", space="darts", backend="auto+compile",
                      skipped=f"{type(err).__name__}: {err}")
    _print_search([record])
    _save(args.state, "search_compile", dict(records=[record]))
    return 0 if "step_ms" in record else 1


def _print_search(records: list[dict]) -> None:
    _print_table(["method", "backend", "C/cells/batch/px", "step ms", "host syncs/step", "compile s", "peak"],
                 [[r["method"], r["backend"], f"{r.get('C')}/{r.get('layers')}/{r.get('batch')}/{r.get('image_size')}",
                   f"{r['step_ms']:.1f}" if "step_ms" in r else r.get("skipped"),
                   "–" if r.get("host_syncs") is None else r["host_syncs"],
                   f"{r['compile_s']:.1f}" if "compile_s" in r else "–",
                   f"{r['peak_bytes'] / 2**30:.2f} GiB" if r.get("peak_bytes") else "–"] for r in records])


# ------------------------------------------------------------------------------------- 7 max batch
def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages one forward saves for backward (a cheap CPU stand-in for the peak)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())


def largest_batch(method: str, variant: str, device: torch.device, budget: int, size: dict,
                  verify_budget_s: float = VERIFY_BUDGET_S) -> dict:
    """Largest batch whose step fits ``budget`` bytes: the step's memory is affine in the batch, so it
    is measured at two batches, extrapolated, and the prediction is verified (stepping down 10 % after
    an out-of-memory, at most 3 times). CPU (dry run): the bytes the forward saves for backward instead
    of the peak."""
    from fastdarts.bench import peak_step_bytes, search_setup

    recompute = variant != "eager"

    def measure(batch: int) -> int:
        model, runner, xy = search_setup(method, "darts", size["C"], size["layers"], batch, size["size"], device,
                                         "auto", recompute, **size["net"])
        if variant == "recompute+bf16":
            runner.set_amp("bf16")  # the search's amp=bf16: candidate ops under autocast
        if device.type == "cuda":
            return peak_step_bytes(runner, xy, device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "recompute+bf16"):
            return saved_bytes(model, xy[0])

    b1, b2 = (32, 64) if device.type == "cuda" else (2, 4)
    m1 = measure(b1)  # also the warm-up (kernel compilation, cuDNN choices)
    t0 = time.perf_counter()
    m2 = measure(b2)
    seconds_per_sample = (time.perf_counter() - t0) / b2  # an over-estimate: includes building the supernet
    per_sample = max((m2 - m1) / (b2 - b1), 1.0)
    fixed = m1 - per_sample * b1
    predicted = int((budget - fixed) / per_sample)
    batch, verified = predicted, None
    # A step at the predicted batch is run only when it takes seconds (recompute+bf16 on a large card
    # reaches tens of thousands of samples); otherwise the prediction stands unverified.
    attempts = 3 if seconds_per_sample * predicted <= verify_budget_s else 0
    for _ in range(attempts):
        if batch < 1:
            break
        try:
            used = measure(batch)
        except torch.cuda.OutOfMemoryError:
            used = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if used is not None and used <= budget:
            verified = used
            break
        batch = int(batch * 0.9)
    return dict(name=f"max_batch/{method}/darts", method=method, space="darts", backend=variant, C=size["C"],
                layers=size["layers"], image_size=size["size"], bytes_per_sample=per_sample,
                fixed_bytes=fixed, predicted_batch=predicted, max_batch=batch if verified is not None else None,
                verified_bytes=verified, max_batch_budget_bytes=budget)  # max_batch None: not verified


def stage_max_batch(args) -> int:
    device = _device(args.dry_run)
    size = search_sizes(args.dry_run)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * 0.95)  # what this process can still get, less allocator fragmentation slack
    else:  # dry run: a small budget, since a CPU step has no out-of-memory error to back off from
        budget = 64 * 2**20
    records = []
    for method in ("darts", "pcdarts"):
        for variant in ("eager", "recompute+bf16"):
            try:
                # the dry run always verifies, to run that code path too
                records.append(largest_batch(method, variant, device, budget, size,
                                             verify_budget_s=float("inf") if args.dry_run else VERIFY_BUDGET_S))
            except Exception as err:
                records.append(dict(name=f"max_batch/{method}/darts", method=method, space="darts", backend=variant,
                                    skipped=f"{type(err).__name__}: {err}"))
            _save(args.state, "max_batch", dict(records=records))
    _print_table(["method", "variant", "bytes/sample", "predicted", "verified batch", "budget"],
                 [[r["method"], r["backend"], f"{r['bytes_per_sample'] / 2**20:.2f} MiB" if "bytes_per_sample" in r
                   else r.get("skipped"), r.get("predicted_batch", "–"),
                   "not verified" if r.get("max_batch") is None else r["max_batch"],
                   f"{r.get('max_batch_budget_bytes', 0) / 2**30:.1f} GiB"] for r in records])
    return 0 if all(r.get("predicted_batch") for r in records) else 1


# ------------------------------------------------------------------------------------- 6a imagenet
IMAGENET_VARIANTS = ((False, "off"), (True, "off"), (False, "bf16"), (True, "bf16"))  # (recompute, amp)


def imagenet_config(dry: bool, *, recompute: bool, amp: str, channels_last: bool = False, batch: int | None = None):
    """The ``pcdarts-imagenet`` recipe with random images (digits at the recipe's 224 px stand in for
    ImageNet: only the shapes matter; 1000 classes instead of 10 would add about 3 MB of classifier
    weights, gradients and momentum). The dry run: C=4, 2 cells, 64 px, batch 8."""
    from fastdarts.config import SearchConfig, load_config, recipe_path

    over = ["data=digits", "device=cpu" if dry else "device=cuda", f"recompute={str(recompute).lower()}",
            f"amp={amp}", f"channels_last={str(channels_last).lower()}"]
    over += ["C=4", "layers=2", "data.image_size=64", f"data.batch_size={batch or 8}"] if dry else \
        ["data.image_size=224"] + ([f"data.batch_size={batch}"] if batch else [])
    return load_config(SearchConfig, recipe_path("pcdarts-imagenet"), over)


def imagenet_step_record(dry: bool, channels_last: bool, reps: int) -> dict:
    """Time one PC-DARTS ImageNet search iteration (architecture + weight step) at the recipe's batch
    1024 with recompute and bf16: time, images/s, peak bytes (CUDA)."""
    from fastdarts.plan import build_planned, planned_batch

    cfg = imagenet_config(dry, recompute=True, amp="bf16", channels_last=channels_last)
    method, shape, device, batch, classes = build_planned(cfg)
    xy = planned_batch(cfg, shape, batch, classes, device)

    def step():
        method.step(xy, xy, 0)

    # A step may take seconds here: the first one (warm-up, cuDNN choices) also gives the peak bytes,
    # then `reps` timed steps, one when the first took over 4 s.
    t0 = time.perf_counter()
    peak = _peak_bytes(step, device) if device.type == "cuda" else None
    reps = 1 if time.perf_counter() - t0 > 4.0 else reps
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        step()
    _sync(device)
    ms = (time.perf_counter() - t0) / reps * 1e3
    return dict(name="imagenet_step/pcdarts/darts", method="pcdarts", space="darts",
                backend="recompute+bf16" + ("+channels_last" if channels_last else ""), C=cfg.C,
                layers=cfg.layers, image_size=shape[-1], batch=batch, step_ms=ms, images_per_s=batch / ms * 1e3,
                peak_bytes=peak, reps=reps)


def stage_imagenet(args) -> int:
    """``fastdarts plan`` of the pcdarts-imagenet recipe at batch 1024 (plain, recompute, bf16, both)
    on this card, then its measured step at batch 1024 with recompute + bf16, NCHW and channels_last."""
    from fastdarts.plan import plan

    device = _device(args.dry_run)
    records = []
    for recompute, amp in IMAGENET_VARIANTS:
        variant = "+".join([*(["recompute"] if recompute else []), *([amp] if amp != "off" else [])]) or "plain"
        try:
            cfg = imagenet_config(args.dry_run, recompute=recompute, amp=amp, batch=1024)
            p = plan(cfg)
            records.append(dict(name="imagenet_plan/pcdarts/darts", method="pcdarts", space="darts", backend=variant,
                                C=cfg.C, layers=cfg.layers, image_size=cfg.data.image_size, how=p.how,
                                fixed_bytes=p.fixed, bytes_per_sample=p.per_sample, memory=p.memory,
                                largest_batch=p.largest_batch, batch=p.batch, fits=p.fits, table=p.table()))
        except Exception as err:
            records.append(dict(name="imagenet_plan/pcdarts/darts", backend=variant,
                                skipped=f"{type(err).__name__}: {err}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _save(args.state, "imagenet", dict(records=records))
    # channels_last runs on CUDA only (fastdarts.validate.check_channels_last): the dry run times NCHW alone.
    for channels_last in (False, True) if device.type == "cuda" else (False,):
        try:
            records.append(imagenet_step_record(args.dry_run, channels_last, reps=2 if device.type == "cuda" else 1))
        except Exception as err:
            records.append(dict(name="imagenet_step/pcdarts/darts", backend="recompute+bf16" +
                                ("+channels_last" if channels_last else ""), skipped=f"{type(err).__name__}: {err}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _save(args.state, "imagenet", dict(records=records))
    _print_table(["pcdarts-imagenet", "variant", "MiB / sample", "largest batch", "batch 1024", "ms / step",
                  "images/s"],
                 [["plan" if "largest_batch" in r else "step", r.get("backend"),
                   f"{r['bytes_per_sample'] / 2**20:.2f}" if "bytes_per_sample" in r else r.get("skipped", "–"),
                   f"{r['largest_batch']:,}" if "largest_batch" in r else "–",
                   ("fits" if r["fits"] else "does not fit") if "fits" in r else "–",
                   f"{r['step_ms']:.0f}" if "step_ms" in r else "–",
                   f"{r['images_per_s']:.0f}" if "images_per_s" in r else "–"] for r in records])
    return 0 if all("skipped" not in r for r in records) else 1


# ------------------------------------------------------------------------------------- 8 report
def _stages(state: str) -> list[dict]:
    path = os.path.join(state, "stages.tsv")
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            name, status, seconds, rc = line.rstrip("\n").split("\t")
            out.append(dict(stage=name, status=status, seconds=int(seconds), rc=int(rc)))
    return out


def owed_figures(result: dict) -> list[str]:
    """The GPU figures this result does not provide (what the README must still call owed)."""
    gpu = result["gpu_check"]
    if gpu["dry_run"]:
        return ["every GPU figure (this is a CPU dry run)"]
    owed = []
    status = {s["stage"]: s["status"] for s in gpu["stages"]}
    names = {"build": "CUDA build on this GPU", "cuda-tests": "cuda-marked tests",
             "int64-misaligned": "int64-offset and misaligned-view checks", "kernels": "kernel bandwidth table",
             "search": "search-step table", "search-compile": "darts auto+compile step",
             "max-batch": "largest batch per memory budget",
             "imagenet": "pcdarts-imagenet plan and step at batch 1024"}
    for stage, what in names.items():
        if status.get(stage) != "ok":
            owed.append(f"{what} (stage {stage}: {status.get(stage, 'not run')})")
    for t in gpu.get("targets", []):
        if not t["met"]:
            owed.append(f"target not met: {t['what']}")
    return owed


def kernel_targets(records: list[dict]) -> list[dict]:
    """Issue-9 targets: fused fwd+bwd at K=8, >= 16M elements: >= 85 % of copy BW and >= 3x eager."""
    out = []
    for r in records:
        if r.get("mode") == "fwd+bwd" and r.get("K") == 8 and r.get("numel", 0) >= 1 << 24 and r["backend"] != "eager":
            met = r["pct_of_copy_bw"] >= TARGET_PCT_OF_COPY and r["speedup_vs_eager"] >= TARGET_SPEEDUP
            what = (f"{r['backend']} {r['dtype']} n={r['numel']:,}: {r['pct_of_copy_bw']:.0f} % of copy BW "
                    f"(target {TARGET_PCT_OF_COPY:.0f}), {r['speedup_vs_eager']:.2f}x eager "
                    f"(target {TARGET_SPEEDUP:.0f}x)")
            out.append(dict(what=what, met=met))
    return out


def gpu_check_markdown(result: dict) -> str:
    """Markdown of the gpu_check section (stages, host syncs, largest batches, targets, owed figures)."""
    gpu = result["gpu_check"]
    lines = ["", "Stages:", "", "| stage | status | s |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in gpu["stages"]]
    syncs = [r for r in result["records"] if "host_syncs" in r]
    if syncs:
        lines += ["", "| search step | backend | host syncs / step | compile s |", "|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['backend']} | {'–' if r['host_syncs'] is None else r['host_syncs']} | "
                  f"{r['compile_s']:.1f} |" if "compile_s" in r else
                  f"| {r['method']} | {r['backend']} | {'–' if r['host_syncs'] is None else r['host_syncs']} | – |"
                  for r in syncs]
    batches = [r for r in result["records"] if r.get("name", "").startswith("max_batch/") and "skipped" not in r]
    if batches:
        lines += ["", "| largest batch | variant | MiB / sample | predicted batch | verified batch | budget |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {r['backend']} | {r['bytes_per_sample'] / 2**20:.2f} | {r['predicted_batch']} | "
                  f"{'not verified' if r['max_batch'] is None else r['max_batch']} | "
                  f"{r['max_batch_budget_bytes'] / 2**30:.1f} GiB |" for r in batches]
    imagenet = [r for r in result["records"] if r.get("name", "").startswith("imagenet_") and "skipped" not in r]
    if imagenet:
        lines += ["", "| pcdarts-imagenet | C/cells/px | variant | MiB / sample | largest batch | batch 1024 | "
                  "ms / step | images/s |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| plan | {r['C']}/{r['layers']}/{r['image_size']} | {r['backend']} | "
                  f"{r['bytes_per_sample'] / 2**20:.2f} | {r['largest_batch']:,} | "
                  f"{'fits' if r['fits'] else 'does not fit'} | – | – |" if "largest_batch" in r else
                  f"| step at batch {r['batch']} | {r['C']}/{r['layers']}/{r['image_size']} | {r['backend']} | – | "
                  f"– | {'–' if r['peak_bytes'] is None else '%.1f GiB peak' % (r['peak_bytes'] / 2**30)} | "
                  f"{r['step_ms']:.0f} | {r['images_per_s']:.0f} |" for r in imagenet]
        tables = [r for r in imagenet if r.get("table") and r["backend"] == "recompute+bf16"]
        if tables:
            lines += ["", "`fastdarts plan pcdarts-imagenet recompute=true amp=bf16` on this card:", "", "```",
                      tables[0]["table"], "```"]
    for dtype, best in gpu.get("auto_choice", {}).items():
        lines.append(f"\nBackend 'auto' at {best['numel']:,} elements × K={AUTO_CHOICE_K} ({dtype}): "
                     f"{best['backend']} is faster ({best['ms']:.3f} ms fwd+bwd).")
    lines += ["", "Targets: " + ("; ".join(f"{t['what']}: {'met' if t['met'] else 'NOT met'}"
                                         for t in gpu["targets"]) or "none measured")]
    lines += ["", "GPU figures still owed: " + ("; ".join(gpu["owed"]) or "none")]
    return "\n".join(lines) + "\n"


def build_result(state: str, dry: bool) -> dict:
    """The merged result dict (``fastdarts bench`` schema plus ``gpu_check``) from the stage files."""
    import fastdarts
    from fastdarts.bench import _commit, device_name

    env = _load(state, "env") or {}
    device = torch.device("cpu" if dry or not torch.cuda.is_available() else "cuda")
    kernels = _load(state, "kernels") or {}
    records = list(kernels.get("records", []))
    for stage in ("search", "search_compile", "max_batch", "imagenet"):
        records += (_load(state, stage) or {}).get("records", [])
    result = dict(device=device_name(device), torch=torch.__version__, triton=env.get("triton"),
                  fastdarts=fastdarts.__version__, commit=_commit(), date=time.strftime("%Y-%m-%d"), quick=dry,
                  threads=torch.get_num_threads(), copy_bw_gbps=kernels.get("copy_bw_gbps"), records=records)
    result["gpu_check"] = dict(dry_run=dry, env=env, stages=_stages(state), build=_load(state, "build"),
                               int64=(_load(state, "int64") or {}).get("results"),
                               auto_choice=kernels.get("auto_choice", {}), targets=kernel_targets(records))
    result["gpu_check"]["owed"] = owed_figures(result)
    return result


def stage_report(args) -> int:
    from fastdarts.bench import markdown_tables, update_readme

    result = build_result(args.state, args.dry_run)
    os.makedirs(args.out, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", result["device"]).strip("-").lower()
    stem = os.path.join(args.out, f"{slug}-{time.strftime('%Y%m%d')}{'-dry-run' if args.dry_run else ''}")
    text = markdown_tables(result) + gpu_check_markdown(result)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {stem}.json and {stem}.md")
    if not args.dry_run and update_readme(args.out, os.path.join(ROOT, "README.md")):
        print("README benchmark table regenerated")
    return 0


STAGES = {"env": stage_env, "build-check": stage_build_check, "int64": stage_int64, "kernels": stage_kernels,
          "search": stage_search, "search-compile": stage_search_compile, "max-batch": stage_max_batch,
          "imagenet": stage_imagenet, "report": stage_report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--state", required=True, help="directory of the per-stage JSON files")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="report directory")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (see the module docstring)")
    args = parser.parse_args(argv)
    if not args.dry_run and args.stage not in ("env", "report") and not torch.cuda.is_available():
        print(f"stage {args.stage}: no CUDA device here (use --dry-run)")
        return SKIPPED
    if args.dry_run:  # one intra-op thread: the dry run's tiny tensors only pay OpenMP overhead
        torch.set_num_threads(1)
    torch.manual_seed(0)
    return STAGES[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
