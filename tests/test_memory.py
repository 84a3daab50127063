"""Memory: what a search-step forward leaves allocated, measured deterministically on CPU.

The figure is the net bytes the forward leaves allocated (saved activations + output),
the sum of ``self_cpu_memory_usage`` over the profiler's events — see STYLE.md.
"""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

import fastdarts as fd
from fastdarts import _ext
from fastdarts.bench import forward_net_bytes

needs_cpp = pytest.mark.skipif(not _ext.cpp_available(), reason="fastdarts._C is not built")


def _net_bytes(method: str, **options) -> int:
    torch.manual_seed(0)
    model = fd.build_supernet("darts", method, C=8, num_classes=10, layers=5, **options)
    x = torch.randn(4, 3, 16, 16)
    return forward_net_bytes(model, x)


def test_recompute_forward_keeps_under_5_percent_of_eager():
    eager = _net_bytes("darts", backend="eager")
    recompute = _net_bytes("darts", recompute=True)
    assert recompute < 0.05 * eager, f"recompute keeps {recompute} B, eager {eager} B ({recompute / eager:.1%})"


@needs_cpp
def test_default_backend_keeps_less_than_eager():
    # Skipping `none` and sharing ReLU(x) across conv ops saves activations even without recompute.
    assert _net_bytes("darts") < _net_bytes("darts", backend="eager")


@needs_cpp
def test_pcdarts_extension_keeps_less_than_its_eager_version():
    assert _net_bytes("pcdarts") < _net_bytes("pcdarts", backend="eager")


@needs_cpp
@pytest.mark.parametrize("backend", ["cpp", "eager"])
def test_mixed_sum_saves_its_inputs_through_save_for_backward(backend):
    # saved_tensors_hooks only sees ctx.save_for_backward: a tensor kept as a ctx attribute would be missed.
    xs = [torch.randn(3, 5, requires_grad=True) for _ in range(4)]
    w = torch.rand(4, requires_grad=True)
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        y = fd.mixed_sum(xs, w, backend=backend)
    y.sum().backward()
    saved_ptrs = {t.data_ptr() for t in packed}
    assert all(x.data_ptr() in saved_ptrs for x in xs)
    assert all(x.grad is not None for x in xs) and w.grad is not None
