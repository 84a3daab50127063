"""Functional entry points with backend dispatch: mixed sum and the PC-DARTS partial-channel combine.

Backends: ``"eager"`` (plain PyTorch, the reference and ground truth of every test),
``"cpp"`` (C++ CPU kernels of ``fastdarts._C``), ``"cuda"`` (CUDA kernels of ``fastdarts._C``),
``"triton"`` (Triton kernels in ``fastdarts.kernels``; on CPU only under ``TRITON_INTERPRET=1``)
and ``"auto"`` (the fastest available for the tensor's device, falling back to eager).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

import torch
import torch.nn.functional as F

from fastdarts import _ext

log = logging.getLogger(__name__)

BACKENDS = ("auto", "triton", "cuda", "cpp", "eager")


def check_backend_name(backend: str) -> str:
    """Return ``backend`` if it is a known name, else raise a ValueError listing the valid ones."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


@functools.lru_cache(maxsize=None)
def _triton_usable(device_type: str) -> bool:
    from fastdarts.kernels import has_triton

    if not has_triton():
        return False
    return device_type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _why_unavailable(backend: str, device_type: str) -> str | None:
    """Reason the explicit ``backend`` cannot run on ``device_type``, or None if it can."""
    if backend == "eager":
        return None
    if backend == "triton":
        if not _triton_usable(device_type):
            return ("Triton is not installed" if device_type == "cuda" else
                    "Triton runs on CPU tensors only with TRITON_INTERPRET=1 set before import")
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the C++ backend runs on CPU tensors, got a {device_type} tensor"
        return None if _ext.cpp_available() else f"the extension fastdarts._C could not be loaded ({_ext.load_error()})"
    if backend == "cuda":
        if device_type != "cuda":
            return f"the CUDA backend needs CUDA tensors, got a {device_type} tensor"
        return None if _ext.cuda_ext_available() else "fastdarts._C was built without CUDA kernels"
    raise AssertionError(backend)


@functools.lru_cache(maxsize=None)
def resolve_backend(backend: str, device_type: str) -> str:
    """Map a requested backend to the concrete one used for tensors on ``device_type``.

    ``"auto"`` prefers Triton, then CUDA, on CUDA tensors and C++ on CPU, falling back to
    eager (logged once at debug level). An explicit backend that cannot run raises ValueError.
    The Triton-before-CUDA order is not measured yet: it should follow the fwd+bwd timing of
    both at a DARTS edge's size (~1M elements, K=7), which ``benchmarks/gpu_check.sh`` reports.
    """
    check_backend_name(backend)
    if backend != "auto":
        reason = _why_unavailable(backend, device_type)
        if reason is not None:
            raise ValueError(f"backend {backend!r} is unavailable for {device_type} tensors: {reason}")
        return backend
    candidates = ("triton", "cuda") if device_type == "cuda" else ("cpp",)
    for name in candidates:
        if _why_unavailable(name, device_type) is None:
            return name
    log.debug("backend 'auto' on %s falls back to eager: %s", device_type,
              "; ".join(f"{n}: {_why_unavailable(n, device_type)}" for n in candidates))
    return "eager"


def _as_list(xs) -> list[torch.Tensor]:
    if isinstance(xs, torch.Tensor):
        if xs.dim() < 1:
            raise ValueError("xs must be a [K, ...] tensor or a sequence of K tensors, got a 0-d tensor")
        return list(xs.unbind(0))  # views, no copy
    xs = list(xs)
    if not xs:
        raise ValueError("mixed_sum needs at least one candidate tensor")
    return xs


def _check_mixed_sum_args(xs: list[torch.Tensor], weights: torch.Tensor) -> None:
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1:
        raise ValueError(f"weights must be a 1-D tensor with one entry per candidate, got "
                         f"{getattr(weights, 'shape', type(weights).__name__)}")
    if weights.numel() != len(xs):
        raise ValueError(f"got {len(xs)} candidate tensors but {weights.numel()} weights")
    if not weights.is_floating_point():
        raise ValueError(f"weights must be floating point, got {weights.dtype}")
    bad = next((k for k, x in enumerate(xs) if not isinstance(x, torch.Tensor)), None)
    if bad is not None:
        raise TypeError(f"candidate {bad} is a {type(xs[bad]).__name__}, not a tensor")
    ref = xs[0]
    for k, x in enumerate(xs):
        if x.shape != ref.shape:
            raise ValueError(f"candidate {k} has shape {tuple(x.shape)}, candidate 0 has {tuple(ref.shape)}")
        if x.dtype != ref.dtype:
            raise ValueError(f"candidate {k} has dtype {x.dtype}, candidate 0 has {ref.dtype}")
        if x.device != ref.device:
            raise ValueError(f"candidate {k} is on {x.device}, candidate 0 on {ref.device}")
    if not ref.is_floating_point():
        raise ValueError(f"candidates must be floating point, got {ref.dtype}")
    if weights.device != ref.device:
        raise ValueError(f"weights are on {weights.device} but the candidates on {ref.device}")


def mixed_sum_ref(xs: Sequence[torch.Tensor], weights: torch.Tensor, upcast: bool = True) -> torch.Tensor:
    """Eager reference: ``Σ_k weights[k] · xs[k]``, accumulated in fp32 when ``upcast``."""
    xs = list(xs)
    dtype = xs[0].dtype
    acc_dtype = torch.promote_types(dtype, torch.float32) if upcast else dtype
    w = weights.to(acc_dtype)
    out = w[0] * xs[0].to(acc_dtype)
    for k in range(1, len(xs)):
        out = out + w[k] * xs[k].to(acc_dtype)
    return out.to(dtype)


def mixed_sum(xs, weights: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Fused weighted sum ``Σ_k weights[k] · xs[k]`` of K same-shape candidate outputs.

    Args:
        xs: a ``[K, ...]`` tensor or a sequence of K tensors of equal shape, dtype and device
            (float32, bfloat16 or float16; float64 on the eager and C++ backends).
        weights: 1-D tensor of K mixing weights (float32; float64 with float64 inputs).
        backend: ``"auto" | "triton" | "cuda" | "cpp" | "eager"``.

    Returns:
        A tensor shaped like one candidate, in its dtype and memory format. Gradients flow
        to every candidate and to ``weights``.
    """
    xs = _as_list(xs)
    _check_mixed_sum_args(xs, weights)
    name = resolve_backend(check_backend_name(backend), xs[0].device.type)
    if name == "eager":
        return mixed_sum_ref(xs, weights)
    if name == "triton":
        from fastdarts.kernels.mixed_sum import mixed_sum_triton

        return mixed_sum_triton(xs, weights)
    return torch.ops.fastdarts.mixed_sum(xs, weights)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """PC-DARTS channel shuffle: view (N, g, C/g, H, W) → swap dims 1, 2 → (N, C, H, W)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def partial_channel_combine_ref(x: torch.Tensor, ya: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Eager PC-DARTS edge tail: concat the op output with the bypassed channels, then shuffle."""
    xb = x[:, x.shape[1] // k:]
    if stride == 2:
        xb = F.max_pool2d(xb, 2, 2)
    return channel_shuffle(torch.cat([ya, xb], dim=1), k)


def partial_channel_combine(x: torch.Tensor, ya: torch.Tensor, k: int, stride: int, *,
                            backend: str = "auto") -> torch.Tensor:
    """PC-DARTS ``shuffle(cat(ya, bypass(x[:, C/k:])))`` as one gather (C++/CUDA) or eagerly.

    ``x`` is the edge input ``[N, C, H, W]``, ``ya`` the mixed-op output on the first ``C/k``
    channels; the bypass is max-pooled 2×2 when ``stride == 2``. The extension kernels keep
    only ``x`` (alive anyway) for backward.
    """
    if x.dim() != 4 or x.shape[1] % k != 0:
        raise ValueError(f"x must be [N, C, H, W] with C divisible by k={k}, got {tuple(x.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    name = resolve_backend(check_backend_name(backend), x.device.type)
    if name == "triton":  # the gather lives in the C++/CUDA extension
        name = "cuda" if (x.is_cuda and _ext.cuda_ext_available()) else "eager"
    if name == "eager":
        return partial_channel_combine_ref(x, ya, k, stride)
    return torch.ops.fastdarts.pc_shuffle_cat(x, ya, k, stride)


def gated_mixed_sum(xs, gates: torch.Tensor, active, *, backend: str = "auto") -> torch.Tensor:
    """Gated sum over the active candidates only: ``Σ_i gates[active[i]] · xs[i]``.

    Sampled-gate methods (PR-DARTS, DropNAS, GDAS) run only the candidates in ``active``;
    ``xs`` are their outputs, in ``active`` order, and ``gates`` is the full ``[K]`` gate row
    (straight-through values, renormalised weights, ...). The active entries are taken from
    ``gates`` without an index tensor (see :func:`select_entries`) and summed with
    :func:`mixed_sum`, so gradients reach ``gates`` (hence the gate logits) at the active
    positions; inactive candidates get neither compute nor gradient.

    Args:
        xs: outputs of the active candidates (a ``[len(active), ...]`` tensor or a sequence).
        gates: 1-D float tensor with one entry per candidate of the edge.
        active: candidate indices, one per entry of ``xs``, each in ``[0, K)``.
        backend: as for :func:`mixed_sum`.
    """
    xs = _as_list(xs)
    active = tuple(int(k) for k in active)
    if not isinstance(gates, torch.Tensor) or gates.dim() != 1:
        raise ValueError(f"gates must be a 1-D tensor with one entry per candidate, got "
                         f"{getattr(gates, 'shape', type(gates).__name__)}")
    if len(active) != len(xs):
        raise ValueError(f"got {len(xs)} candidate outputs for {len(active)} active indices {list(active)}")
    if not active or not all(0 <= k < gates.numel() for k in active):
        raise ValueError(f"active must be non-empty indices in [0, {gates.numel()}), got {list(active)}")
    return mixed_sum(xs, select_entries(gates, active), backend=backend)


def select_entries(row: torch.Tensor, indices: tuple[int, ...]) -> torch.Tensor:
    """``row[list(indices)]`` for a 1-D ``row``, without building an index tensor.

    An index tensor made from Python ints is a host→device copy, which on CUDA blocks the
    host: once per edge and forward it would serialise the whole step. A run of consecutive
    indices (every edge of a softmax-mixed supernet: all candidates but a leading ``none``) is a
    view; other index sets stack views of the entries (one small device kernel, no copy).
    Gradients flow back to ``row`` at ``indices``.
    """
    first, n = indices[0], len(indices)
    if indices == tuple(range(first, first + n)):
        return row.narrow(0, first, n)
    entries = row.unbind(0)
    return torch.stack([entries[k] for k in indices])


_INDEX_CACHE: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def device_index(indices, device: torch.device | str) -> torch.Tensor:
    """A ``long`` tensor of ``indices`` on ``device``, made once per (indices, device) and reused.

    For fixed index lists (op groups, chain edges) used every step: the host→device copy happens
    on the first call only, never inside a later step. Treat the result as read-only.
    """
    key = (tuple(int(i) for i in indices), torch.device(device))
    out = _INDEX_CACHE.get(key)
    if out is None:
        out = _INDEX_CACHE[key] = torch.tensor(key[0], dtype=torch.long, device=key[1])
    return out
