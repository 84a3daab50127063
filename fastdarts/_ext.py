"""Loader of the optional C++/CUDA extension ``fastdarts._C`` and its Python-side registrations.

``fastdarts._C`` defines the operators below in ``torch.ops.fastdarts`` (schemas in
``csrc/module.cpp``, CPU kernels in ``csrc/cpu/``, CUDA kernels in ``csrc/cuda/``). This module
adds what the C++ side does not provide, following pytorch/extension-cpp's ``ops.py``:

* ``torch.library.register_fake`` for every op (shapes only), so the ops trace under
  ``torch.compile`` / ``torch.export``;
* ``torch.library.register_autograd`` for the forward ops, whose backward calls the
  corresponding ``*_backward`` op.

Importing this module never fails: when the extension is missing (pure-Python install, build
failure, ABI mismatch) the reason is logged at debug level and :func:`cpp_available` is False.
"""

from __future__ import annotations

import importlib
import logging

import torch

log = logging.getLogger(__name__)

#: The operators defined by ``fastdarts._C`` (``TORCH_LIBRARY(fastdarts, m)``). Other code may
#: register further ``fastdarts::`` ops from Python (e.g. Triton ops); these are the C++ ones.
CPP_OPS = ("mixed_sum", "mixed_sum_backward", "pc_shuffle_cat", "pc_shuffle_cat_backward")

_C = None
_LOAD_ERROR: str | None = None
try:
    _C = importlib.import_module("fastdarts._C")
except Exception as exc:  # ImportError, or OSError / undefined symbols from a stale build
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"
    log.debug("fastdarts._C is not available, C++/CUDA kernels disabled (%s)", _LOAD_ERROR)


def cpp_available() -> bool:
    """True if the compiled extension ``fastdarts._C`` was loaded (its CPU kernels are usable)."""
    return _C is not None


def load_error() -> str | None:
    """Why ``fastdarts._C`` could not be loaded, or None if it was."""
    return _LOAD_ERROR


def cuda_ext_available() -> bool:
    """True if ``fastdarts._C`` was compiled with its CUDA kernels (says nothing about a GPU being present)."""
    if _C is None:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key("fastdarts::mixed_sum", "CUDA"))


def cpp_op_names() -> list[str]:
    """Qualified names (``fastdarts::…``) of the C++ operators, for ``opcheck`` enumeration."""
    return [f"fastdarts::{name}" for name in CPP_OPS]


# --------------------------------------------------------------------------------------------
# Fake (meta) kernels. They mirror the output layouts of the C++ kernels exactly.
# --------------------------------------------------------------------------------------------


def _kernel_memory_format(t: torch.Tensor) -> torch.memory_format:
    """Layout the kernels walk (mirrors kernel_memory_format in csrc/fastdarts.h)."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _storage_order_like(ts):
    """Tensor whose layout the kernels give their outputs (mirrors same_storage_order in fastdarts.h)."""
    return ts[0].contiguous(memory_format=_kernel_memory_format(ts[0]))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _mixed_sum_fake(xs, weights):
    torch._check(len(xs) >= 1, lambda: "fastdarts::mixed_sum: xs must be a non-empty list of tensors")
    torch._check(weights.dim() == 1, lambda: "fastdarts::mixed_sum: weights must be 1-D")
    torch._check(weights.numel() == len(xs), lambda: "fastdarts::mixed_sum: K mismatch between xs and weights")
    for x in xs[1:]:
        torch._check(x.shape == xs[0].shape, lambda: "fastdarts::mixed_sum: shape mismatch")
        torch._check(x.dtype == xs[0].dtype, lambda: "fastdarts::mixed_sum: dtype mismatch")
    return torch.empty_like(_storage_order_like(xs))


def _mixed_sum_backward_fake(grad, xs, weights, needs_input_grad):
    like = _storage_order_like(xs)  # the inputs' layout, whatever grad's (in_storage_order_of)
    grad_xs = [torch.empty_like(like) if need else grad.new_empty(0) for need in needs_input_grad]
    grad_w = weights.new_empty(len(xs), dtype=_acc_dtype(grad.dtype))
    return grad_xs, grad_w


def _pc_out_hw(h, w, stride):
    return (h // 2, w // 2) if stride == 2 else (h, w)


def _pc_shuffle_cat_fake(x, ya, k, stride):
    n, c, h, w = x.shape
    torch._check(c % k == 0, lambda: f"fastdarts::pc_shuffle_cat: C={c} is not divisible by k={k}")
    ho, wo = _pc_out_hw(h, w, stride)
    return x.new_empty((n, c, ho, wo))


def _pc_shuffle_cat_backward_fake(grad, x, k, stride):
    n, c, h, w = x.shape
    ho, wo = _pc_out_hw(h, w, stride)
    return x.new_empty((n, c, h, w)), x.new_empty((n, c // k, ho, wo))


# --------------------------------------------------------------------------------------------
# Autograd. Everything needed in backward goes through ctx.save_for_backward (visible to
# saved_tensors_hooks and counted honestly by the memory profiler); only plain Python values
# are stored as ctx attributes.
# --------------------------------------------------------------------------------------------


def _mixed_sum_setup_context(ctx, inputs, output):
    xs, weights = inputs
    ctx.save_for_backward(weights, *xs)
    # needs_input_grad[0] is a single bool for the Tensor[] argument: keep per-element flags.
    ctx.xs_requires_grad = [bool(x.requires_grad) for x in xs]


def _mixed_sum_backward(ctx, grad):
    weights, *xs = ctx.saved_tensors
    want_xs = bool(ctx.needs_input_grad[0])
    needs = [want_xs and r for r in ctx.xs_requires_grad]
    grad_xs, grad_w = torch.ops.fastdarts.mixed_sum_backward(grad, xs, weights, needs)
    grad_xs = [g if need else None for g, need in zip(grad_xs, needs)]
    grad_w = grad_w.to(weights.dtype) if ctx.needs_input_grad[1] else None
    return grad_xs, grad_w


def _pc_shuffle_cat_setup_context(ctx, inputs, output):
    x, ya, k, stride = inputs
    ctx.save_for_backward(x)
    ctx.k = k
    ctx.stride = stride


def _pc_shuffle_cat_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    grad_x, grad_ya = torch.ops.fastdarts.pc_shuffle_cat_backward(grad, x, ctx.k, ctx.stride)
    return (grad_x if ctx.needs_input_grad[0] else None, grad_ya if ctx.needs_input_grad[1] else None, None, None)


def _register() -> None:
    torch.library.register_fake("fastdarts::mixed_sum")(_mixed_sum_fake)
    torch.library.register_fake("fastdarts::mixed_sum_backward")(_mixed_sum_backward_fake)
    torch.library.register_fake("fastdarts::pc_shuffle_cat")(_pc_shuffle_cat_fake)
    torch.library.register_fake("fastdarts::pc_shuffle_cat_backward")(_pc_shuffle_cat_backward_fake)
    torch.library.register_autograd(
        "fastdarts::mixed_sum", _mixed_sum_backward, setup_context=_mixed_sum_setup_context
    )
    torch.library.register_autograd(
        "fastdarts::pc_shuffle_cat", _pc_shuffle_cat_backward, setup_context=_pc_shuffle_cat_setup_context
    )


if _C is not None:
    try:
        _register()
    except Exception as exc:  # e.g. a stale _C built from older schemas
        _LOAD_ERROR = f"registration failed: {type(exc).__name__}: {exc}"
        log.debug("fastdarts._C loaded but its Python registrations failed, disabling it (%s)", _LOAD_ERROR)
        _C = None
