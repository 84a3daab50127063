"""Fused DARTS mixed sum ``y = sum_k w_k * x_k`` in Triton (forward and backward).

Layers, top-down (the order of flash-attn's ``layer_norm.py``): eager reference
``mixed_sum_ref`` -> autotune configs -> ``@triton.jit`` kernels -> host launchers
``mixed_sum_fwd`` / ``mixed_sum_bwd`` -> registered ops ``fastdarts::mixed_sum_triton`` and
``fastdarts::mixed_sum_triton_backward`` (``custom_op`` + ``register_fake``, autograd on the
forward op) -> public ``mixed_sum_triton``.

Bytes moved (s = activation element size, n = numel of one candidate, K candidates):

* forward reads ``K*n*s`` and writes ``n*s`` (plus, for K > 8 in fp16/bf16, ``2*n*4`` per extra
  chunk of 8 for the fp32 running sum);
* backward reads ``(K+1)*n*s`` (grad and every x_k; only the grad when the weights need no
  grad) and writes ``K'*n*s`` (K' = candidates needing a grad), plus the small fp32 partial
  buffer ``cdiv(n, BLOCK) * K * 4`` bytes.

``mixed_sum_bytes`` evaluates these formulas for benchmarks.

Numerics: products and sums are accumulated in fp32 and rounded once on store; the weight
gradient is reduced per block into ``partial[block, k]`` (no atomics) and summed on the host
with ``partial.sum(0)``, so it is bit-identical from run to run.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU
tensors; there the autotuner gets exactly one config, since several fail with
"0 active drivers" on a CPU-only machine.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "mixed_sum_ref",
    "mixed_sum_fwd",
    "mixed_sum_bwd",
    "mixed_sum_triton",
    "mixed_sum_bytes",
    "MAX_CANDIDATES_PER_LAUNCH",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# One launch handles up to 8 candidate pointers; larger K is chained in chunks of 8.
MAX_CANDIDATES_PER_LAUNCH = 8
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# 1. Eager reference
# ----------------------------------------------------------------------------------------------
def mixed_sum_ref(xs, weights: Tensor, upcast: bool = True) -> Tensor:
    """Eager ``sum_k weights[k] * xs[k]``.

    With ``upcast`` the sum is accumulated in fp32 and cast back to ``xs[0].dtype`` (what the
    kernels do); without it this is the plain eager loop in the activation dtype.
    """
    dtype = xs[0].dtype
    acc = None
    for k, x in enumerate(xs):
        if upcast:
            term = weights[k].float() * x.float()
        else:
            term = weights[k].to(dtype) * x
        acc = term if acc is None else acc + term
    return acc.to(dtype)


# ----------------------------------------------------------------------------------------------
# 2. Autotune configs
# ----------------------------------------------------------------------------------------------
def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":
        # Interpreter: exactly one config (several fail with "0 active drivers" on CPU). BLOCK is
        # small so that the tiny test shapes span several programs: that exercises the tail mask
        # and the cross-block reduction of the weight gradient.
        return [triton.Config({"BLOCK": 256}, num_warps=4)]
    # Streaming elementwise kernel: a few block sizes / warp counts, all near the bandwidth limit.
    # Not measured on this project's GPUs yet (no device was available when written).
    return [
        triton.Config({"BLOCK": 1024}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=4),
        triton.Config({"BLOCK": 2048}, num_warps=8),
        triton.Config({"BLOCK": 4096}, num_warps=8),
    ]


# The partial buffer of the backward is sized for the smallest BLOCK, so any config fits.
_MIN_BLOCK = min(cfg.kwargs["BLOCK"] for cfg in _configs())


# ----------------------------------------------------------------------------------------------
# 3./4. Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _fwd_term(acc, x_ptr, w_ptr, offs, mask):
    w = tl.load(w_ptr).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return acc + w * x


# restore_value: with ACCUMULATE the kernel reads what an earlier chunk wrote, so autotuning
# (which runs the kernel several times) must restore the running sum after each trial.
@triton.autotune(configs=_configs(), key=["K"], restore_value=["acc_ptr"])
@triton.jit
def _mixed_sum_fwd_kernel(
    x0_ptr,  # candidate 0 of this chunk, [numel] in storage order
    x1_ptr,  # candidate 1 (unused slots get x0; never read since K is constexpr)
    x2_ptr,  # candidate 2
    x3_ptr,  # candidate 3
    x4_ptr,  # candidate 4
    x5_ptr,  # candidate 5
    x6_ptr,  # candidate 6
    x7_ptr,  # candidate 7
    w_ptr,  # weights of all candidates, [K_total]
    w_offset,  # index of this chunk's first candidate in w_ptr
    acc_ptr,  # running sum of the earlier chunks, read only when ACCUMULATE
    out_ptr,  # output, [numel]; may be acc_ptr itself
    numel,  # number of elements of one candidate
    K: tl.constexpr,  # candidates in this chunk, 1..8
    ACCUMULATE: tl.constexpr,  # add acc_ptr (chaining chunks when K_total > 8)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if ACCUMULATE:
        acc = tl.load(acc_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    w_ptr = w_ptr + w_offset
    acc = _fwd_term(acc, x0_ptr, w_ptr + 0, offs, mask)
    if K > 1:
        acc = _fwd_term(acc, x1_ptr, w_ptr + 1, offs, mask)
    if K > 2:
        acc = _fwd_term(acc, x2_ptr, w_ptr + 2, offs, mask)
    if K > 3:
        acc = _fwd_term(acc, x3_ptr, w_ptr + 3, offs, mask)
    if K > 4:
        acc = _fwd_term(acc, x4_ptr, w_ptr + 4, offs, mask)
    if K > 5:
        acc = _fwd_term(acc, x5_ptr, w_ptr + 5, offs, mask)
    if K > 6:
        acc = _fwd_term(acc, x6_ptr, w_ptr + 6, offs, mask)
    if K > 7:
        acc = _fwd_term(acc, x7_ptr, w_ptr + 7, offs, mask)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_term(g, x_ptr, dx_ptr, w_ptr, p_ptr, offs, mask, HAS_DX: tl.constexpr, HAS_DW: tl.constexpr):
    if HAS_DX:
        w = tl.load(w_ptr).to(tl.float32)
        tl.store(dx_ptr + offs, (w * g).to(dx_ptr.dtype.element_ty), mask=mask)
    if HAS_DW:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(p_ptr, tl.sum(g * x, axis=0))


# reset_to_zero: the partial buffer has rows for the smallest BLOCK; a config with a larger BLOCK
# writes fewer rows, so rows left by earlier autotuning trials must be zeroed (the autotuner also
# zeroes once more before the final launch).
@triton.autotune(configs=_configs(), key=["K"], reset_to_zero=["partial_ptr"])
@triton.jit
def _mixed_sum_bwd_kernel(
    g_ptr,  # grad of the output, [numel] in storage order
    x0_ptr,  # candidate 0 of this chunk (read only when NEED_DW)
    x1_ptr,  # candidate 1 (unused slots get x0)
    x2_ptr,  # candidate 2
    x3_ptr,  # candidate 3
    x4_ptr,  # candidate 4
    x5_ptr,  # candidate 5
    x6_ptr,  # candidate 6
    x7_ptr,  # candidate 7
    dx0_ptr,  # grad of candidate 0, written when bit 0 of NEED_DX is set (unused slots get g)
    dx1_ptr,  # grad of candidate 1
    dx2_ptr,  # grad of candidate 2
    dx3_ptr,  # grad of candidate 3
    dx4_ptr,  # grad of candidate 4
    dx5_ptr,  # grad of candidate 5
    dx6_ptr,  # grad of candidate 6
    dx7_ptr,  # grad of candidate 7
    w_ptr,  # weights of all candidates, [K_total]
    w_offset,  # index of this chunk's first candidate in w_ptr / partial columns
    partial_ptr,  # float32 [rows >= n_blocks, K_total]: partial[pid, k] = <g, x_k> over block pid
    stride_partial_row,  # row stride of partial (= K_total)
    numel,  # number of elements of one candidate
    K: tl.constexpr,  # candidates in this chunk, 1..8
    NEED_DX: tl.constexpr,  # bit mask over the chunk's candidates: write dx_k = w_k * g
    NEED_DW: tl.constexpr,  # write the partial sums for the weight gradient
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w_ptr = w_ptr + w_offset
    p_ptr = partial_ptr + pid * stride_partial_row + w_offset
    _bwd_term(g, x0_ptr, dx0_ptr, w_ptr + 0, p_ptr + 0, offs, mask, (NEED_DX >> 0) & 1, NEED_DW)
    if K > 1:
        _bwd_term(g, x1_ptr, dx1_ptr, w_ptr + 1, p_ptr + 1, offs, mask, (NEED_DX >> 1) & 1, NEED_DW)
    if K > 2:
        _bwd_term(g, x2_ptr, dx2_ptr, w_ptr + 2, p_ptr + 2, offs, mask, (NEED_DX >> 2) & 1, NEED_DW)
    if K > 3:
        _bwd_term(g, x3_ptr, dx3_ptr, w_ptr + 3, p_ptr + 3, offs, mask, (NEED_DX >> 3) & 1, NEED_DW)
    if K > 4:
        _bwd_term(g, x4_ptr, dx4_ptr, w_ptr + 4, p_ptr + 4, offs, mask, (NEED_DX >> 4) & 1, NEED_DW)
    if K > 5:
        _bwd_term(g, x5_ptr, dx5_ptr, w_ptr + 5, p_ptr + 5, offs, mask, (NEED_DX >> 5) & 1, NEED_DW)
    if K > 6:
        _bwd_term(g, x6_ptr, dx6_ptr, w_ptr + 6, p_ptr + 6, offs, mask, (NEED_DX >> 6) & 1, NEED_DW)
    if K > 7:
        _bwd_term(g, x7_ptr, dx7_ptr, w_ptr + 7, p_ptr + 7, offs, mask, (NEED_DX >> 7) & 1, NEED_DW)


# ----------------------------------------------------------------------------------------------
# 5. Host launchers
# ----------------------------------------------------------------------------------------------
def _check_inputs(xs, weights, name: str = "mixed_sum_triton") -> None:
    """Metadata-only checks (also run on fake tensors)."""
    if not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise ValueError(f"{name}: xs must be a non-empty list of tensors")
    if not all(isinstance(x, Tensor) for x in xs):
        raise ValueError(f"{name}: every element of xs must be a Tensor")
    if not isinstance(weights, Tensor):
        raise ValueError(f"{name}: weights must be a Tensor, got {type(weights).__name__}")
    K = len(xs)
    x0 = xs[0]
    if weights.dim() != 1 or weights.shape[0] != K:
        raise ValueError(f"{name}: weights must have shape ({K},) to match len(xs) = {K}, got {tuple(weights.shape)}")
    if not weights.is_floating_point():
        raise ValueError(f"{name}: weights must be floating point, got {weights.dtype}")
    if x0.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"{name}: xs dtype must be one of float32/float16/bfloat16, got {x0.dtype}")
    for k, x in enumerate(xs):
        if x.shape != x0.shape:
            raise ValueError(f"{name}: xs[{k}] has shape {tuple(x.shape)}, xs[0] has {tuple(x0.shape)}")
        if x.dtype != x0.dtype:
            raise ValueError(f"{name}: xs[{k}] has dtype {x.dtype}, xs[0] has {x0.dtype}")
        if x.device != x0.device:
            raise ValueError(f"{name}: xs[{k}] is on {x.device}, xs[0] on {x0.device}")
    if weights.device != x0.device:
        raise ValueError(f"{name}: weights are on {weights.device}, xs on {x0.device}")


def _check_device(device: torch.device) -> None:
    if device.type == "cpu" and not _INTERPRET:
        raise ValueError(
            "mixed_sum_triton: CPU tensors need TRITON_INTERPRET=1 set before fastdarts.kernels.mixed_sum "
            "is imported; use the eager reference on CPU otherwise"
        )


def _shared_dense_layout(xs) -> bool:
    """True when every x has the same strides and they are dense (contiguous or channels_last)."""
    x0 = xs[0]
    if any(x.stride() != x0.stride() for x in xs[1:]):
        return False
    if x0.is_contiguous():
        return True
    if x0.dim() == 4 and x0.is_contiguous(memory_format=torch.channels_last):
        return True
    if x0.dim() == 5 and x0.is_contiguous(memory_format=torch.channels_last_3d):
        return True
    return False


def _new_like(xs, dtype=None) -> Tensor:
    """Output buffer in the layout the kernels use for xs: xs[0]'s if shared and dense, else contiguous."""
    x0 = xs[0]
    if _shared_dense_layout(xs):
        return torch.empty_like(x0, dtype=dtype)  # preserve_format keeps the dense strides
    return torch.empty(x0.shape, dtype=dtype or x0.dtype, device=x0.device)


def _normalize(xs):
    """xs sharing one dense layout (storage order = element order for the kernels)."""
    xs = list(xs)
    if _shared_dense_layout(xs):
        return xs
    return [x.contiguous() for x in xs]


def _on_device(device: torch.device):
    # Triton launches on the current CUDA device, not on the tensors' one.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _chunk_ptrs(seq, start: int, pad):
    chunk = list(seq[start : start + MAX_CANDIDATES_PER_LAUNCH])
    return chunk + [pad] * (MAX_CANDIDATES_PER_LAUNCH - len(chunk))


def mixed_sum_fwd(xs, weights: Tensor) -> Tensor:
    """``sum_k weights[k] * xs[k]`` with the Triton kernel; output in xs' shared dense layout."""
    _check_inputs(xs, weights)
    _check_device(xs[0].device)
    xs = _normalize(xs)
    weights = weights.contiguous()
    K = len(xs)
    out = _new_like(xs)
    numel = out.numel()
    if numel == 0:
        return out
    # Chunks of 8 chain through a running sum; it must stay fp32 in fp16/bf16 so that the result is
    # rounded once, not once per chunk.
    if K <= MAX_CANDIDATES_PER_LAUNCH or out.dtype == torch.float32:
        acc = out
    else:
        acc = torch.empty_like(out, dtype=torch.float32)

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)

    for start in range(0, K, MAX_CANDIDATES_PER_LAUNCH):
        kc = min(MAX_CANDIDATES_PER_LAUNCH, K - start)
        last = start + kc == K
        with _on_device(out.device):
            _mixed_sum_fwd_kernel[grid](
                *_chunk_ptrs(xs, start, xs[0]),
                weights,
                start,
                acc,
                out if last else acc,
                numel,
                K=kc,
                ACCUMULATE=start > 0,
            )
    return out


def _split_needs(needs_input_grad, K: int):
    needs = [bool(b) for b in needs_input_grad]
    if len(needs) == K:
        return needs, True
    if len(needs) == K + 1:
        return needs[:K], needs[K]
    raise ValueError(
        f"mixed_sum_triton_backward: needs_input_grad must have len(xs) = {K} entries "
        f"(or {K + 1}, the last one for the weights), got {len(needs)}"
    )


def _check_grad(grad: Tensor, xs) -> None:
    x0 = xs[0]
    if grad.shape != x0.shape or grad.dtype != x0.dtype or grad.device != x0.device:
        raise ValueError(
            "mixed_sum_triton_backward: grad must match xs[0] in shape, dtype and device, got "
            f"{tuple(grad.shape)}/{grad.dtype}/{grad.device} vs {tuple(x0.shape)}/{x0.dtype}/{x0.device}"
        )


def mixed_sum_bwd(grad: Tensor, xs, weights: Tensor, needs_input_grad) -> tuple[list[Tensor], Tensor]:
    """Gradients of ``sum_k weights[k] * xs[k]``: ``([dx_k], grad_w)`` in one pass over ``grad``.

    ``needs_input_grad`` has one bool per x_k, optionally followed by one for the weights.
    ``dx_k`` is ``weights[k] * grad`` in the activation dtype, or an empty placeholder (numel 0)
    when not needed; ``grad_w`` is float32 ``[K]`` (an empty placeholder when the weights need
    no grad), deterministic (per-block partial sums, no atomics).
    """
    _check_inputs(xs, weights, "mixed_sum_triton_backward")
    _check_grad(grad, xs)
    K = len(xs)
    need_dx, need_dw = _split_needs(needs_input_grad, K)
    _check_device(xs[0].device)
    xs = _normalize(xs)
    weights = weights.contiguous()
    x0 = xs[0]
    if grad.stride() != x0.stride():
        grad = torch.empty_like(x0).copy_(grad)  # bring grad into xs' storage order
    dxs = [torch.empty_like(x0) if need else x0.new_empty(0) for need in need_dx]
    numel = x0.numel()
    if numel == 0 or not (need_dw or any(need_dx)):
        return dxs, weights.new_zeros(K if need_dw else 0, dtype=torch.float32)
    rows = triton.cdiv(numel, _MIN_BLOCK) if need_dw else 1
    partial = torch.zeros((rows, K), dtype=torch.float32, device=x0.device)

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)

    for start in range(0, K, MAX_CANDIDATES_PER_LAUNCH):
        kc = min(MAX_CANDIDATES_PER_LAUNCH, K - start)
        mask = sum(1 << i for i in range(kc) if need_dx[start + i])
        if mask == 0 and not need_dw:
            continue
        with _on_device(x0.device):
            _mixed_sum_bwd_kernel[grid](
                grad,
                *_chunk_ptrs(xs, start, x0),
                *_chunk_ptrs(dxs, start, grad),
                weights,
                start,
                partial,
                partial.stride(0),
                numel,
                K=kc,
                NEED_DX=mask,
                NEED_DW=need_dw,
            )
    grad_w = partial.sum(0) if need_dw else weights.new_empty(0, dtype=torch.float32)
    return dxs, grad_w  # partial.sum(0): deterministic reduction over blocks


def mixed_sum_bytes(K: int, numel: int, element_size: int, mode: str = "forward", n_grad: int | None = None) -> int:
    """Bytes moved per the module docstring; ``mode`` in forward/backward/full, ``n_grad`` = K'."""
    n_grad = K if n_grad is None else n_grad
    fwd = (K + 1) * numel * element_size
    bwd = (K + 1 + n_grad) * numel * element_size
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


# ----------------------------------------------------------------------------------------------
# 6. Registered ops (custom_op + register_fake: opcheck passes under the interpreter, unlike
#    triton_op) and autograd
# ----------------------------------------------------------------------------------------------
@torch.library.custom_op("fastdarts::mixed_sum_triton", mutates_args=())
def _mixed_sum_op(xs: list[Tensor], weights: Tensor) -> Tensor:
    return mixed_sum_fwd(xs, weights)


@_mixed_sum_op.register_fake
def _(xs, weights):
    _check_inputs(xs, weights)
    return _new_like(xs)


@torch.library.custom_op("fastdarts::mixed_sum_triton_backward", mutates_args=())
def _mixed_sum_backward_op(
    grad: Tensor, xs: list[Tensor], weights: Tensor, needs_input_grad: list[bool]
) -> tuple[list[Tensor], Tensor]:
    return mixed_sum_bwd(grad, xs, weights, needs_input_grad)


@_mixed_sum_backward_op.register_fake
def _(grad, xs, weights, needs_input_grad):
    _check_inputs(xs, weights, "mixed_sum_triton_backward")
    _check_grad(grad, xs)
    need_dx, need_dw = _split_needs(needs_input_grad, len(xs))
    dxs = [_new_like(xs) if need else xs[0].new_empty(0) for need in need_dx]
    grad_w = weights.new_empty(len(xs) if need_dw else 0, dtype=torch.float32)
    return dxs, grad_w


def _setup_context(ctx, inputs, output):
    xs, weights = inputs
    ctx.save_for_backward(weights, *xs)  # never as ctx attributes: saved-tensor hooks must see them


def _backward(ctx, grad):
    weights, *xs = ctx.saved_tensors
    need_xs, need_w = ctx.needs_input_grad  # ([bool per x_k], bool), as the tensor-list structure
    dxs, grad_w = _mixed_sum_backward_op(grad, xs, weights, [*need_xs, need_w])
    dxs = [dx if need else None for dx, need in zip(dxs, need_xs, strict=True)]
    grad_w = grad_w.to(weights.dtype) if need_w else None
    return dxs, grad_w


_mixed_sum_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# 7. Public entry point
# ----------------------------------------------------------------------------------------------
def mixed_sum_triton(xs, weights: Tensor) -> Tensor:
    """``sum_k weights[k] * xs[k]`` through the registered op (differentiable in xs and weights).

    xs: K >= 1 tensors of one shape/dtype (float32, float16 or bfloat16) on one device; weights:
    ``[K]`` floating tensor on the same device. CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``. The output keeps xs' layout when they share a dense one
    (contiguous or channels_last), else it is contiguous.
    """
    return torch.ops.fastdarts.mixed_sum_triton(list(xs), weights)
