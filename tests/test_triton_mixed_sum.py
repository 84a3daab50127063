"""Triton mixed sum (fastdarts.kernels.mixed_sum) vs its eager fp32 reference.

On a CPU-only machine the kernels run under TRITON_INTERPRET=1, which must be set before the
kernel module is imported; shapes are small and odd (the interpreter's BLOCK is 256, so they span
several programs and end on a partial block).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="Triton is not installed")

from fastdarts.kernels import mixed_sum as ms  # noqa: E402

pytestmark = pytest.mark.interpreter

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# torch.testing.assert_close's default atol per dtype; the low-precision rule adds it to 2x
# PyTorch's own error (flash-attn's tests/test_flash_attn.py).
ATOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
# [!] Triton 3.6's interpreter casts fp32 -> bf16 by truncation (round toward zero), where the GPU
# rounds to nearest even: measured on 1000 randn values, 494 differ from torch's .to(bfloat16) and
# the max error doubles. Under the interpreter bf16 results are therefore checked for faithful
# rounding (elementwise error below one bf16 ulp of the fp32 reference) instead of the 2x rule.
_INTERPRETED_BF16_TRUNCATES = os.environ.get("TRITON_INTERPRET") == "1"


def _xs(K, shape, dtype, layout="contiguous", seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = []
    for _ in range(K):
        if layout == "sliced":  # non-dense: every other element of the last dim
            x = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen).to(device=DEVICE, dtype=dtype)[..., ::2]
        else:
            x = torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        xs.append(x)
    weights = torch.softmax(torch.randn(K, generator=gen), 0).to(DEVICE)
    grad = torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)
    return xs, weights, grad


def _leaves(tensors, dtype=None):
    return [t.detach().clone().to(dtype or t.dtype).requires_grad_() for t in tensors]


def _run(fn, xs, weights, grad, dtype=None):
    """Forward + backward through fn on fresh leaves; returns (out, [dx_k], grad_w)."""
    xs_l = _leaves(xs, dtype)
    (w_l,) = _leaves([weights])
    out = fn(xs_l, w_l)
    out.backward(grad.to(dtype or grad.dtype))
    return out.detach(), [x.grad for x in xs_l], w_l.grad


def _assert_match(got, ref32, pt, dtype, what, stored_in_dtype=True):
    """fp32: assert_close defaults vs the fp32 reference; low precision: error <= 2 x PyTorch's + atol.

    ``stored_in_dtype``: the kernel rounded this result to ``dtype`` (False for the fp32 weight grad).
    """
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref32, msg=lambda m: f"{what}: {m}")
        return
    assert got.dtype == pt.dtype, what
    if dtype == torch.bfloat16 and _INTERPRETED_BF16_TRUNCATES and stored_in_dtype:
        ref = ref32.float()
        ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(ref.abs().clamp_min(1e-30))))
        excess = (got.float() - ref).abs() - ulp - ATOL[dtype]
        assert excess.max().item() <= 0, f"{what}: error exceeds one bf16 ulp by {excess.max().item():.3g}"
        return
    err = (got.float() - ref32.float()).abs().max().item()
    pt_err = (pt.float() - ref32.float()).abs().max().item()
    assert err <= 2 * pt_err + ATOL[dtype], f"{what}: max error {err:.3g} > 2 x PyTorch's {pt_err:.3g} + atol"


def _check_against_reference(xs, weights, grad):
    dtype = xs[0].dtype
    out, dxs, gw = _run(ms.mixed_sum_triton, xs, weights, grad)
    ref, ref_dxs, ref_gw = _run(ms.mixed_sum_ref, xs, weights, grad, dtype=torch.float32)
    pt, pt_dxs, pt_gw = _run(lambda a, b: ms.mixed_sum_ref(a, b, upcast=False), xs, weights, grad)
    assert out.shape == xs[0].shape and out.dtype == dtype
    assert gw.dtype == weights.dtype
    _assert_match(out, ref, pt, dtype, "output")
    for k, (dx, r, p) in enumerate(zip(dxs, ref_dxs, pt_dxs, strict=True)):
        assert dx.dtype == dtype
        _assert_match(dx, r, p, dtype, f"grad of xs[{k}]")
    # grad_w is reduced and stored in fp32; PyTorch's low-precision loop reduces in the activation dtype
    if dtype == torch.float32:
        _assert_dot_close(gw, ref_gw, grad, xs, "grad of weights")
    else:
        _assert_match(gw, ref_gw, pt_gw, dtype, "grad of weights", stored_in_dtype=False)
    return out


def _assert_dot_close(gw, gw_ref, grad, xs, what):
    """Two fp32 evaluations of grad_w[k] = Σ_i g_i·x_k,i (n products) in different orders — the
    kernel's tiles against PyTorch's vectorised sum, whose order depends on the CPU's SIMD width.
    Each is within γ_(n+1)·Σ|g·x| of the exact value (u = eps/2), so they differ by at most
    2·γ_(n+1)·Σ|g·x| ≈ (n+1)·eps·Σ|g·x|."""
    abs_sum = torch.stack([(grad.double() * x.double()).abs().sum() for x in xs])
    bound = (xs[0].numel() + 1) * torch.finfo(torch.float32).eps * abs_sum
    err = (gw.double() - gw_ref.double()).abs()
    assert bool((err <= bound).all()), f"{what}: error {err.tolist()} exceeds the reordering bound {bound.tolist()}"


@pytest.mark.parametrize("shape", [(5, 7, 9), (2, 3, 11, 13), (1000,)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", [1, 2, 3, 8, 9, 13])
def test_forward_backward_matches_reference(K, dtype, shape):
    xs, weights, grad = _xs(K, shape, dtype, seed=K)
    _check_against_reference(xs, weights, grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K", [3, 9])
def test_channels_last_keeps_layout(K, dtype):
    xs, weights, grad = _xs(K, (2, 3, 11, 13), dtype, layout="channels_last")
    out = _check_against_reference(xs, weights, grad)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    xs_l = _leaves(xs)
    ms.mixed_sum_triton(xs_l, weights).backward(grad)  # contiguous grad into channels_last inputs
    torch.testing.assert_close(xs_l[1].grad, weights[1] * grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_non_dense_and_mixed_layouts(dtype):
    xs, weights, grad = _xs(3, (2, 3, 11, 13), dtype, layout="sliced")
    assert not xs[0].is_contiguous()
    out = _check_against_reference(xs, weights, grad)
    assert out.is_contiguous()
    # one channels_last candidate among contiguous ones -> contiguous fallback, same values
    xs_cl, _, _ = _xs(3, (2, 3, 11, 13), dtype)
    xs_cl[1] = xs_cl[1].contiguous(memory_format=torch.channels_last)
    out = _check_against_reference(xs_cl, weights, grad)
    assert out.is_contiguous()


def test_partial_requires_grad():
    xs, weights, grad = _xs(10, (5, 7, 9), torch.float32)
    xs_l = [x.clone().requires_grad_(k % 3 == 0) for k, x in enumerate(xs)]
    ms.mixed_sum_triton(xs_l, weights).backward(grad)  # weights need no grad
    for k, x in enumerate(xs_l):
        if k % 3 == 0:
            torch.testing.assert_close(x.grad, weights[k] * grad)
        else:
            assert x.grad is None
    # an expanded (stride-0) grad, as out.sum().backward() produces
    xs_l = _leaves(xs)
    ms.mixed_sum_triton(xs_l, weights).sum().backward()
    torch.testing.assert_close(xs_l[4].grad, weights[4].expand(xs[4].shape))
    # the backward op itself: placeholders for what is not needed, grad_w computed by default
    need = [k % 2 == 1 for k in range(10)]
    dxs, gw = ms.mixed_sum_bwd(grad, xs, weights, need)
    assert [dx.numel() == 0 for dx in dxs] == [not n for n in need]
    for k in range(1, 10, 2):
        torch.testing.assert_close(dxs[k], weights[k] * grad)
    _assert_dot_close(gw, torch.stack([(grad * x).sum() for x in xs]), grad, xs, "grad_w of mixed_sum_bwd")
    _, gw_none = ms.mixed_sum_bwd(grad, xs, weights, need + [False])
    assert gw_none.numel() == 0


def test_weight_grad_is_deterministic():
    xs, weights, grad = _xs(9, (2, 3, 11, 13), torch.float32)
    _, gw1 = ms.mixed_sum_bwd(grad, xs, weights, [True] * 9)
    _, gw2 = ms.mixed_sum_bwd(grad, xs, weights, [True] * 9)
    assert gw1.dtype == torch.float32
    assert torch.equal(gw1, gw2)


def test_empty_input():
    xs, weights, grad = _xs(3, (0, 5), torch.float32)
    assert ms.mixed_sum_triton(xs, weights).shape == (0, 5)
    dxs, gw = ms.mixed_sum_bwd(grad, xs, weights, [True] * 3)
    assert dxs[0].shape == (0, 5) and torch.equal(gw, torch.zeros(3, device=DEVICE))


def test_clear_errors():
    xs, weights, _ = _xs(3, (5, 7), torch.float32)
    with pytest.raises(ValueError, match="weights must have shape"):
        ms.mixed_sum_triton(xs, weights[:2])
    with pytest.raises(ValueError, match="shape"):
        ms.mixed_sum_triton([xs[0], xs[1], xs[2][:, :6]], weights)
    with pytest.raises(ValueError, match="dtype"):
        ms.mixed_sum_triton([xs[0], xs[1].half(), xs[2]], weights)
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        ms.mixed_sum_triton([x.double() for x in xs], weights)
    with pytest.raises(ValueError, match="non-empty"):
        ms.mixed_sum_fwd([], weights)
    with pytest.raises(ValueError, match="needs_input_grad"):
        ms.mixed_sum_bwd(xs[0], xs, weights, [True])


@pytest.mark.parametrize("K", [3, 9])
def test_opcheck(K):
    xs, weights, grad = _xs(K, (5, 7, 9), torch.float32)
    xs_l = _leaves(xs)
    (w_l,) = _leaves([weights])
    torch.library.opcheck(torch.ops.fastdarts.mixed_sum_triton.default, (xs_l, w_l))
    need = [k != 1 for k in range(K)] + [True]
    torch.library.opcheck(torch.ops.fastdarts.mixed_sum_triton_backward.default, (grad, xs, weights, need))


def _misaligned(shape, dtype, gen):
    """A contiguous view one element past a fresh allocation: its data pointer is not 16-byte aligned."""
    n = 1
    for s in shape:
        n *= s
    return torch.randn(n + 1, generator=gen).to(device=DEVICE, dtype=dtype)[1:].view(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K", [2, 9])
def test_misaligned_views_and_non_dense_grad(K, dtype):
    gen = torch.Generator().manual_seed(K)
    shape = (2, 3, 11, 13)
    xs = [_misaligned(shape, dtype, gen) for _ in range(K)]
    assert all(x.is_contiguous() and x.data_ptr() % 16 != 0 for x in xs)
    weights = torch.softmax(torch.randn(K, generator=gen), 0).to(DEVICE)
    # the dense misaligned views are used in place (no copy), like aligned ones
    assert all(a is b for a, b in zip(ms._normalize(xs), xs))
    grad = torch.randn(*shape[:-1], 2 * shape[-1], generator=gen).to(device=DEVICE, dtype=dtype)[..., ::2]
    assert not grad.is_contiguous()
    _check_against_reference(xs, weights, grad)
    # the gradients take the inputs' layout, not the non-dense grad's
    dxs, _ = ms.mixed_sum_bwd(grad, xs, weights, [True] * K)
    assert all(dx.is_contiguous() for dx in dxs)
    cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    dxs, gw = ms.mixed_sum_bwd(grad, cl, weights, [True] * K)
    assert all(dx.is_contiguous(memory_format=torch.channels_last) and not dx.is_contiguous() for dx in dxs)
    _, gw_ref = ms.mixed_sum_bwd(grad.contiguous(), xs, weights, [True] * K)
    # same elementwise products, summed over tiles in storage order: contiguous and channels_last
    # visit the elements in different orders, so only fp32 reassociation separates them: each is
    # within γ_(n+1)·Σ|g·x| of the exact dot product (products and sums rounded once each, u = eps/2),
    # so they differ by at most 2·γ_(n+1)·Σ|g·x| ≈ (n+1)·eps·Σ|g·x|.
    abs_sum = torch.stack([(grad.float() * x.float()).abs().sum() for x in xs])
    n = xs[0].numel()
    assert bool(((gw - gw_ref).abs() <= (n + 1) * torch.finfo(torch.float32).eps * abs_sum).all())


def test_backward_is_persistent_and_not_autotuned():
    """Fixed launch configuration (no autotuner: capturable, same reduction order in every process);
    several tiles per program so the persistent loop and its uneven split are exercised."""
    assert not isinstance(ms._mixed_sum_fwd_kernel, triton.runtime.Autotuner)
    assert not isinstance(ms._mixed_sum_bwd_kernel, triton.runtime.Autotuner)
    for dtype in DTYPES:
        for kc in range(1, 9):
            block, warps = ms.kernel_config(dtype, kc)
            assert block == ms.kernel_config(dtype, 1)[0] and warps in (4, 8)
    block, _ = ms.kernel_config(torch.float32, 8)
    n = 7 * block + 5  # 8 tiles over at most 3 programs (interpreter) or 8 (GPU)
    programs = ms.backward_programs(n, block)
    assert 1 <= programs <= 8
    xs, weights, grad = _xs(3, (n,), torch.float32, seed=5)
    dxs, gw = ms.mixed_sum_bwd(grad, xs, weights, [True, False, True])
    exp = torch.stack([(grad.double() * x.double()).sum() for x in xs])
    abs_sum = torch.stack([(grad.double() * x.double()).abs().sum() for x in xs])
    # fp32 sums of n products: |error| <= n·eps·Σ|g·x| (classical bound for recursive summation)
    assert bool(((gw.double() - exp).abs() <= n * torch.finfo(torch.float32).eps * abs_sum).all())
    torch.testing.assert_close(dxs[2], weights[2] * grad)
    assert dxs[1].numel() == 0
