"""Device-side sampling of sparse gates in Triton: hard-concrete gates (PR-DARTS) and gate noise.

The kernels draw their uniforms with ``tl.rand(seed, offset + i)`` (Philox), so one launch samples
every edge of a cell type from a (seed, offset) pair: no host RNG, no host synchronisation. Each
kernel is factored as *uniforms -> gates*: with ``HAS_U`` it reads the uniforms from memory instead
of drawing them, which lets the tests compare the transform exactly with the eager reference
(:func:`fastdarts.gates.hard_concrete_from_uniforms`) given the same uniforms. The kernel's Philox
stream does not match ``torch.Generator`` bit for bit; its draws are tested for their distribution.

Layers, top-down: eager references -> configs -> ``@triton.jit`` kernels -> host launchers ->
``autograd.Function`` for the hard-concrete gate (forward writes ``z`` and ``dz/dA``; backward is
``grad · dz/dA``, no second kernel).

Bytes moved for ``n = E·K`` gates (E edges, K ops; 112 per DARTS cell type): the hard-concrete
kernel reads ``4n`` (logits) and writes ``8n`` (``z``, ``dz/dA``); the noise kernel writes ``4n``.
These launches are latency-bound; their point is one launch per cell type and no host traffic.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the kernels run on CPU tensors.
"""

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "EPS",
    "NOISE_UNIFORM",
    "NOISE_GUMBEL",
    "NOISE_LOGISTIC",
    "hard_concrete_triton",
    "gate_noise_triton",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Uniforms are clamped to [EPS, 1 - EPS] so log(u), log(1-u) and -log(-log(u)) stay finite
# (the L0 / hard-concrete reference code draws u ~ U(1e-6, 1 - 1e-6)). Same value as the eager path.
EPS = 1e-6

NOISE_UNIFORM = 0  # out = u
NOISE_GUMBEL = 1  # out = -log(-log(u))
NOISE_LOGISTIC = 2  # out = log(u) - log(1 - u)


def _on_device(device: torch.device):
    """Triton launches on the *current* CUDA device: make it the tensors' one (a ``cuda:1`` tensor
    would otherwise be launched on device 0)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _block(n: int) -> int:
    # A DARTS cell type has 14·8 = 112 gates: one 256 block covers it. Under the interpreter small
    # sizes use a 64 block so that the tests' odd sizes span several programs and a partial tail,
    # and large ones a 1024 block (the interpreter's cost is per program: 20000 draws took 47 s
    # with 64-element blocks on the shared 2-core CPU machine).
    if _INTERPRET:
        return 64 if n <= 1024 else 1024
    return 256


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _uniform(u_ptr, seed, offset, offs, mask, HAS_U: tl.constexpr, EPS_: tl.constexpr):
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=0.5).to(tl.float32)
    else:
        u = tl.rand(seed, offset + offs)
    return tl.minimum(tl.maximum(u, EPS_), 1.0 - EPS_)


@triton.jit
def _hard_concrete_fwd_kernel(
    logit_ptr,  # gate logits A, [n] float32
    u_ptr,  # uniforms, [n] (read only when HAS_U)
    z_ptr,  # out: gate values z, [n] float32
    dz_ptr,  # out: dz/dA, [n] float32 (0 where z is clamped at 0 or 1)
    n,  # number of gates
    inv_tau,  # 1 / temperature
    seed,  # Philox seed (when not HAS_U)
    offset,  # Philox counter offset of element 0 (when not HAS_U)
    LIMIT_A: tl.constexpr,  # stretch interval lower end (-0.1)
    LIMIT_B: tl.constexpr,  # stretch interval upper end (1.1)
    HAS_U: tl.constexpr,  # read uniforms instead of drawing them
    EPS_: tl.constexpr,  # uniform clamp
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = _uniform(u_ptr, seed, offset, offs, mask, HAS_U, EPS_)
    a = tl.load(logit_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid((a + tl.log(u) - tl.log(1.0 - u)) * inv_tau)
    t = s * (LIMIT_B - LIMIT_A) + LIMIT_A
    z = tl.minimum(tl.maximum(t, 0.0), 1.0)
    inside = (t > 0.0) & (t < 1.0)
    dz = tl.where(inside, (LIMIT_B - LIMIT_A) * s * (1.0 - s) * inv_tau, 0.0)
    tl.store(z_ptr + offs, z, mask=mask)
    tl.store(dz_ptr + offs, dz, mask=mask)


@triton.jit
def _gate_noise_kernel(
    u_ptr,  # uniforms, [n] (read only when HAS_U)
    out_ptr,  # out: noise, [n] float32
    n,  # number of draws
    seed,  # Philox seed (when not HAS_U)
    offset,  # Philox counter offset of element 0 (when not HAS_U)
    MODE: tl.constexpr,  # NOISE_UNIFORM | NOISE_GUMBEL | NOISE_LOGISTIC
    HAS_U: tl.constexpr,
    EPS_: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    u = _uniform(u_ptr, seed, offset, offs, mask, HAS_U, EPS_)
    if MODE == 1:
        out = -tl.log(-tl.log(u))
    elif MODE == 2:
        out = tl.log(u) - tl.log(1.0 - u)
    else:
        out = u
    tl.store(out_ptr + offs, out, mask=mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
def _check_seed(seed: int, offset: int) -> None:
    if not (0 <= seed < 2**31 and 0 <= offset < 2**31):
        raise ValueError(f"seed and offset must lie in [0, 2**31), got seed={seed}, offset={offset}")


def hard_concrete_fwd(logits: Tensor, tau: float, seed: int = 0, offset: int = 0, u: Tensor | None = None,
                      limit_a: float = -0.1, limit_b: float = 1.1) -> tuple[Tensor, Tensor]:
    """``(z, dz/dA)`` of stretched hard-concrete gates for every entry of ``logits`` (one launch)."""
    _check_seed(seed, offset)
    a = logits.detach().contiguous().float()
    n = a.numel()
    z = torch.empty_like(a)
    dz = torch.empty_like(a)
    uu = a if u is None else u.detach().contiguous().float()
    if u is not None and uu.numel() != n:
        raise ValueError(f"u has {uu.numel()} entries, logits {n}")
    block = _block(n)
    with _on_device(a.device):
        _hard_concrete_fwd_kernel[(triton.cdiv(n, block),)](
            a, uu, z, dz, n, 1.0 / float(tau), seed, offset,
            LIMIT_A=limit_a, LIMIT_B=limit_b, HAS_U=u is not None, EPS_=EPS, BLOCK=block)
    return z, dz


class _HardConcrete(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, tau, seed, offset, u, limit_a, limit_b):
        z, dz = hard_concrete_fwd(logits, tau, seed, offset, u, limit_a, limit_b)
        ctx.save_for_backward(dz)
        return z.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        (dz,) = ctx.saved_tensors
        return (grad * dz.view_as(grad)).to(grad.dtype), None, None, None, None, None, None


def hard_concrete_triton(logits: Tensor, tau: float, seed: int = 0, offset: int = 0, u: Tensor | None = None,
                         limit_a: float = -0.1, limit_b: float = 1.1) -> Tensor:
    """Hard-concrete gates ``z = clamp(σ((A + log u − log(1−u))/τ)(b−a)+a, 0, 1)``, differentiable in A.

    ``u``: optional uniforms (same shape as ``logits``); without them they are drawn with
    ``tl.rand(seed, offset + i)``.
    """
    return _HardConcrete.apply(logits, tau, seed, offset, u, limit_a, limit_b)


def gate_noise_triton(n: int, device, mode: int = NOISE_UNIFORM, seed: int = 0, offset: int = 0,
                      u: Tensor | None = None) -> Tensor:
    """``n`` float32 draws: uniforms, Gumbel or logistic noise (``mode``), from ``(seed, offset)`` or ``u``."""
    _check_seed(seed, offset)
    out = torch.empty(n, device=device, dtype=torch.float32)
    uu = out if u is None else u.detach().contiguous().float().reshape(-1)
    if u is not None and uu.numel() != n:
        raise ValueError(f"u has {uu.numel()} entries, expected {n}")
    block = _block(n)
    with _on_device(out.device):
        _gate_noise_kernel[(triton.cdiv(n, block),)](uu, out, n, seed, offset, MODE=mode, HAS_U=u is not None,
                                                     EPS_=EPS, BLOCK=block)
    return out
