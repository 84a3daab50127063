"""pytest-benchmark suite for the fused mixed sum ``y = sum_k w_k * x_k`` (K = 8).

Run: ``pytest benchmarks/bench_mixed_sum.py --benchmark-only`` (CUDA only; every case skips
without a GPU). Providers: ``eager`` (the plain PyTorch loop, ``mixed_sum_ref(upcast=False)``)
and ``triton`` (``fastdarts::mixed_sum_triton``); modes ``forward`` and ``full``
(forward + backward into every x_k and the weights). 16M elements per candidate streams far
past the H100's 50 MB L2. ``benchmark.extra_info`` gets bytes moved (formula in
``fastdarts/kernels/mixed_sum.py``, via ``mixed_sum_bytes``), GB/s from pytest-benchmark's
median, and the median of ``triton.testing.do_bench`` (which flushes L2) with its GB/s.
"""

import pytest
import torch

from fastdarts.kernels import has_triton

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="mixed-sum benchmarks need a CUDA GPU")

K = 8
NUMEL = 16 * 1024 * 1024


def _setup(dtype, mode):
    gen = torch.Generator(device="cuda").manual_seed(0)
    requires_grad = mode != "forward"
    xs = [torch.randn(NUMEL, device="cuda", dtype=dtype, generator=gen).requires_grad_(requires_grad) for _ in range(K)]
    weights = torch.softmax(torch.randn(K, device="cuda", generator=gen), 0).requires_grad_(requires_grad)
    grad = torch.randn(NUMEL, device="cuda", dtype=dtype, generator=gen)
    return xs, weights, grad


def _step(fn, xs, weights, grad, mode):
    if mode == "forward":
        with torch.no_grad():
            return fn(xs, weights)
    for t in (*xs, weights):
        t.grad = None
    out = fn(xs, weights)
    out.backward(grad)
    return out


@pytest.mark.parametrize("mode", ["forward", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("provider", ["eager", "triton"])
def test_bench_mixed_sum(benchmark, provider, dtype, mode):
    if provider == "triton" and not has_triton():
        pytest.skip("triton is not installed")
    from fastdarts.kernels.mixed_sum import mixed_sum_bytes, mixed_sum_ref, mixed_sum_triton

    if provider == "eager":

        def fn(xs, weights):
            return mixed_sum_ref(xs, weights, upcast=False)

    else:
        fn = mixed_sum_triton
    xs, weights, grad = _setup(dtype, mode)

    def run():
        _step(fn, xs, weights, grad, mode)
        torch.cuda.synchronize()

    run()  # compile / autotune outside the timing
    benchmark.pedantic(run, rounds=20, warmup_rounds=3, iterations=1)

    nbytes = mixed_sum_bytes(K, NUMEL, xs[0].element_size(), mode)
    median_s = benchmark.stats.stats.median
    if has_triton():
        import triton.testing

        do_bench_ms = triton.testing.do_bench(lambda: _step(fn, xs, weights, grad, mode), quantiles=[0.5, 0.2, 0.8])
        benchmark.extra_info["do_bench_ms"] = do_bench_ms
        benchmark.extra_info["do_bench_gbps"] = nbytes / (do_bench_ms[0] * 1e-3) / 1e9
    benchmark.extra_info.update(
        {
            "op": "mixed_sum",
            "provider": provider,
            "mode": mode,
            "dtype": str(dtype).removeprefix("torch."),
            "K": K,
            "numel": NUMEL,
            "bytes": nbytes,
            "gbps": nbytes / median_s / 1e9,
            "gpu_name": torch.cuda.get_device_name(),
            "torch": torch.__version__,
        }
    )
