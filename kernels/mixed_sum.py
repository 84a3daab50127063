"""Fused DARTS mixed sum ``y = sum_k w_k * x_k`` in Triton (forward and backward).

Layers, top-down (the order of flash-attn's ``layer_norm.py``): eager reference
``mixed_sum_ref`` -> fixed launch configs -> ``@triton.jit`` kernels -> host launchers
``mixed_sum_fwd`` / ``mixed_sum_bwd`` -> registered ops ``fastdarts::mixed_sum_triton`` and
``fastdarts::mixed_sum_triton_backward`` (``custom_op`` + ``register_fake``, autograd on the
forward op) -> public ``mixed_sum_triton``.

Bytes moved (s = activation element size, n = numel of one candidate, K candidates):

* forward reads ``K*n*s`` and writes ``n*s`` (plus, for K > 8 in fp16/bf16, ``2*n*4`` per extra
  chunk of 8 for the fp32 running sum);
* backward reads ``(K+1)*n*s`` (grad and every x_k; only the grad when the weights need no
  grad) and writes ``K'*n*s`` (K' = candidates needing a grad), plus the small fp32 partial
  buffer ``P * K * 4`` bytes (P <= 1024 programs of the persistent backward).

``mixed_sum_bytes`` evaluates these formulas for benchmarks.

Numerics: products and sums are accumulated in fp32 and rounded once on store. The backward is
persistent: program p accumulates ``g * x_k`` elementwise over its tiles and reduces once into
``partial[p, k]`` (no atomics, no zero-fill); ``partial.sum(0)`` finishes on the device. The
launch configuration is fixed per (dtype, candidates per launch), never autotuned, so the
reduction order (hence grad_w, bit for bit) is the same in every process, and no benchmark or
synchronisation runs inside a CUDA-graph capture.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU
tensors, with a small BLOCK and at most 3 programs (see ``kernel_config``).
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
    "kernel_config",
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
# 2. Fixed launch configurations
# ----------------------------------------------------------------------------------------------
# No autotuning: an autotuner benchmarks (and synchronises) on the first call, which is illegal
# inside CUDA-graph capture, and the config it picks can differ between processes, which changes
# the backward's reduction order and so grad_w's last bits. Each (dtype, candidates per launch)
# has one configuration instead; with it, the grid and every program's tile order depend only on
# numel, so grad_w is bit-identical across runs and restarts. Choice (not yet measured on a GPU,
# benchmarks/gpu_check.sh stage 5 reports it): 32 bytes per thread per tensor (two 16-byte vectors)
# with 4 warps; K > 4 uses 8 warps of one vector each (the same BLOCK; fewer live registers per
# thread, more warps to hide latency).
# Interpreter: a small BLOCK and at most 3 programs, so that the tests' small odd shapes span
# several tiles per program, uneven tile counts per program and a masked tail.
_INTERPRET_BLOCK = 256
_INTERPRET_MAX_PROGRAMS = 3
# Persistent backward grid cap: about 8 programs per SM on a 132-SM H100 / H200. A constant, not
# the device's SM count, so that grad_w's reduction order does not depend on the GPU model.
_MAX_PROGRAMS = 1024


def kernel_config(dtype: torch.dtype, k_chunk: int) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` of the kernels for activations of ``dtype`` and ``k_chunk`` (1..8) candidates."""
    if _INTERPRET:
        return _INTERPRET_BLOCK, 4
    return 4096 // dtype.itemsize, (4 if k_chunk <= 4 else 8)


def backward_programs(numel: int, block: int) -> int:
    """Number of programs of the persistent backward (rows of its partial-sum buffer)."""
    cap = _INTERPRET_MAX_PROGRAMS if _INTERPRET else _MAX_PROGRAMS
    return max(1, min(triton.cdiv(numel, block), cap))


# ----------------------------------------------------------------------------------------------
# 3./4. Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_f32(ptr, offs, mask, ON: tl.constexpr, BLOCK: tl.constexpr):
    """``ptr[offs]`` as fp32 when ON (a compile-time switch), else zeros (folded away)."""
    v = tl.zeros([BLOCK], dtype=tl.float32)
    if ON:
        v = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return v


@triton.jit
def _load_weight(w_ptr, ON: tl.constexpr):
    w = 0.0
    if ON:
        w = tl.load(w_ptr).to(tl.float32)
    return w


@triton.jit
def _store_scaled(dx_ptr, w, g, offs, mask, ON: tl.constexpr):
    if ON:
        tl.store(dx_ptr + offs, (w * g).to(dx_ptr.dtype.element_ty), mask=mask)


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
    w_ptr = w_ptr + w_offset
    # Every load is issued before the one store (the store may alias acc_ptr, never an x_k).
    acc = _load_f32(acc_ptr, offs, mask, ACCUMULATE, BLOCK)
    x0 = _load_f32(x0_ptr, offs, mask, True, BLOCK)
    x1 = _load_f32(x1_ptr, offs, mask, K > 1, BLOCK)
    x2 = _load_f32(x2_ptr, offs, mask, K > 2, BLOCK)
    x3 = _load_f32(x3_ptr, offs, mask, K > 3, BLOCK)
    x4 = _load_f32(x4_ptr, offs, mask, K > 4, BLOCK)
    x5 = _load_f32(x5_ptr, offs, mask, K > 5, BLOCK)
    x6 = _load_f32(x6_ptr, offs, mask, K > 6, BLOCK)
    x7 = _load_f32(x7_ptr, offs, mask, K > 7, BLOCK)
    # Summed in candidate order k = 0, 1, ... (the C++ kernels' and the reference's order).
    acc += _load_weight(w_ptr + 0, True) * x0
    if K > 1:
        acc += _load_weight(w_ptr + 1, True) * x1
    if K > 2:
        acc += _load_weight(w_ptr + 2, True) * x2
    if K > 3:
        acc += _load_weight(w_ptr + 3, True) * x3
    if K > 4:
        acc += _load_weight(w_ptr + 4, True) * x4
    if K > 5:
        acc += _load_weight(w_ptr + 5, True) * x5
    if K > 6:
        acc += _load_weight(w_ptr + 6, True) * x6
    if K > 7:
        acc += _load_weight(w_ptr + 7, True) * x7
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


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
    partial_ptr,  # float32 [num_programs, K_total]: partial[p, k] = <g, x_k> over program p's tiles
    stride_partial_row,  # row stride of partial (= K_total)
    numel,  # number of elements of one candidate
    num_tiles,  # cdiv(numel, BLOCK)
    K: tl.constexpr,  # candidates in this chunk, 1..8
    NEED_DX: tl.constexpr,  # bit mask over the chunk's candidates: write dx_k = w_k * g
    NEED_DW: tl.constexpr,  # write the partial sums for the weight gradient
    BLOCK: tl.constexpr,
):
    # Persistent: program p walks tiles p, p + P, p + 2P, ... accumulating g * x_k elementwise
    # in fp32 registers, and reduces each accumulator once (one tl.sum per candidate) at the end.
    # Every row of `partial` is written, so it needs no zero-fill.
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    w_ptr = w_ptr + w_offset
    w0 = _load_weight(w_ptr + 0, (NEED_DX >> 0) & 1)
    w1 = _load_weight(w_ptr + 1, (NEED_DX >> 1) & 1)
    w2 = _load_weight(w_ptr + 2, (NEED_DX >> 2) & 1)
    w3 = _load_weight(w_ptr + 3, (NEED_DX >> 3) & 1)
    w4 = _load_weight(w_ptr + 4, (NEED_DX >> 4) & 1)
    w5 = _load_weight(w_ptr + 5, (NEED_DX >> 5) & 1)
    w6 = _load_weight(w_ptr + 6, (NEED_DX >> 6) & 1)
    w7 = _load_weight(w_ptr + 7, (NEED_DX >> 7) & 1)
    acc0 = tl.zeros([BLOCK], dtype=tl.float32)
    acc1 = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    acc3 = tl.zeros([BLOCK], dtype=tl.float32)
    acc4 = tl.zeros([BLOCK], dtype=tl.float32)
    acc5 = tl.zeros([BLOCK], dtype=tl.float32)
    acc6 = tl.zeros([BLOCK], dtype=tl.float32)
    acc7 = tl.zeros([BLOCK], dtype=tl.float32)
    # A while loop, not `for tile in tl.range(pid, num_tiles, nprog)`: Triton 3.6's interpreter
    # cannot take runtime loop bounds under numpy 2 (int() of a 1-element array), while both the
    # interpreter and the compiler (scf.while) handle this form.
    tile = pid.to(tl.int64)
    while tile < num_tiles:
        offs = tile * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        # All loads first: a dx_k store may not be moved above an x_j load it could alias.
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x0 = _load_f32(x0_ptr, offs, mask, NEED_DW, BLOCK)
        x1 = _load_f32(x1_ptr, offs, mask, NEED_DW and K > 1, BLOCK)
        x2 = _load_f32(x2_ptr, offs, mask, NEED_DW and K > 2, BLOCK)
        x3 = _load_f32(x3_ptr, offs, mask, NEED_DW and K > 3, BLOCK)
        x4 = _load_f32(x4_ptr, offs, mask, NEED_DW and K > 4, BLOCK)
        x5 = _load_f32(x5_ptr, offs, mask, NEED_DW and K > 5, BLOCK)
        x6 = _load_f32(x6_ptr, offs, mask, NEED_DW and K > 6, BLOCK)
        x7 = _load_f32(x7_ptr, offs, mask, NEED_DW and K > 7, BLOCK)
        _store_scaled(dx0_ptr, w0, g, offs, mask, (NEED_DX >> 0) & 1)
        _store_scaled(dx1_ptr, w1, g, offs, mask, (NEED_DX >> 1) & 1)
        _store_scaled(dx2_ptr, w2, g, offs, mask, (NEED_DX >> 2) & 1)
        _store_scaled(dx3_ptr, w3, g, offs, mask, (NEED_DX >> 3) & 1)
        _store_scaled(dx4_ptr, w4, g, offs, mask, (NEED_DX >> 4) & 1)
        _store_scaled(dx5_ptr, w5, g, offs, mask, (NEED_DX >> 5) & 1)
        _store_scaled(dx6_ptr, w6, g, offs, mask, (NEED_DX >> 6) & 1)
        _store_scaled(dx7_ptr, w7, g, offs, mask, (NEED_DX >> 7) & 1)
        # Accumulators of unused candidates are never stored, so the compiler drops them.
        acc0 += g * x0
        acc1 += g * x1
        acc2 += g * x2
        acc3 += g * x3
        acc4 += g * x4
        acc5 += g * x5
        acc6 += g * x6
        acc7 += g * x7
        tile += nprog
    if NEED_DW:
        p_ptr = partial_ptr + pid.to(tl.int64) * stride_partial_row + w_offset
        tl.store(p_ptr + 0, tl.sum(acc0, axis=0))
        if K > 1:
            tl.store(p_ptr + 1, tl.sum(acc1, axis=0))
        if K > 2:
            tl.store(p_ptr + 2, tl.sum(acc2, axis=0))
        if K > 3:
            tl.store(p_ptr + 3, tl.sum(acc3, axis=0))
        if K > 4:
            tl.store(p_ptr + 4, tl.sum(acc4, axis=0))
        if K > 5:
            tl.store(p_ptr + 5, tl.sum(acc5, axis=0))
        if K > 6:
            tl.store(p_ptr + 6, tl.sum(acc6, axis=0))
        if K > 7:
            tl.store(p_ptr + 7, tl.sum(acc7, axis=0))


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

    for start in range(0, K, MAX_CANDIDATES_PER_LAUNCH):
        kc = min(MAX_CANDIDATES_PER_LAUNCH, K - start)
        last = start + kc == K
        block, warps = kernel_config(out.dtype, kc)
        with _on_device(out.device):
            _mixed_sum_fwd_kernel[(triton.cdiv(numel, block),)](
                *_chunk_ptrs(xs, start, xs[0]),
                weights,
                start,
                acc,
                out if last else acc,
                numel,
                K=kc,
                ACCUMULATE=start > 0,
                BLOCK=block,
                num_warps=warps,
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
    no grad), deterministic (per-program partial sums of a fixed grid, no atomics).
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
    # BLOCK depends on the dtype only, so every chunk has the same persistent grid and shares one
    # partial buffer: row p, columns of chunk c = program p's sums for c's candidates.
    block, _ = kernel_config(x0.dtype, 1)
    num_tiles = triton.cdiv(numel, block)
    programs = backward_programs(numel, block)
    partial = torch.empty((programs, K) if need_dw else (1, 1), dtype=torch.float32, device=x0.device)
    for start in range(0, K, MAX_CANDIDATES_PER_LAUNCH):
        kc = min(MAX_CANDIDATES_PER_LAUNCH, K - start)
        mask = sum(1 << i for i in range(kc) if need_dx[start + i])
        if mask == 0 and not need_dw:
            continue
        _, warps = kernel_config(x0.dtype, kc)
        with _on_device(x0.device):
            _mixed_sum_bwd_kernel[(programs,)](
                grad,
                *_chunk_ptrs(xs, start, x0),
                *_chunk_ptrs(dxs, start, grad),
                weights,
                start,
                partial,
                partial.stride(0),
                numel,
                num_tiles,
                K=kc,
                NEED_DX=mask,
                NEED_DW=need_dw,
                BLOCK=block,
                num_warps=warps,
            )
    # partial.sum(0): a fixed-shape reduction without atomics, deterministic like the kernel itself
    grad_w = partial.sum(0) if need_dw else weights.new_empty(0, dtype=torch.float32)
    return dxs, grad_w


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
