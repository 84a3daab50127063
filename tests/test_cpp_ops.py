"""Tests of the C++ (and, on a GPU, CUDA) operators of ``fastdarts._C`` against PyTorch references.

Ops: ``fastdarts::mixed_sum`` / ``mixed_sum_backward`` and ``fastdarts::pc_shuffle_cat`` /
``pc_shuffle_cat_backward``. Every test body takes the device from the ``device`` fixture; CUDA
cases are marked ``cuda`` and skipped without a GPU or without the compiled CUDA kernels.

Tolerances (one table, ``_ATOL_LOWP``): float32/float64 use ``torch.testing.assert_close``
defaults against a float64 reference; float16/bfloat16 use the flash-attn rule
``|ours - ref64| <= 2 * |pytorch_lowp - ref64| + atol``, where ``pytorch_lowp`` is the same
reference evaluated by PyTorch entirely in the low-precision dtype. The weight gradient (a dot
product that may cancel) is bounded relative to Σ|grad·x| instead (``_check_dot``). pc_shuffle_cat only moves
and max-selects values, so it must match its reference exactly in every dtype.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

try:
    from fastdarts import _ext
except Exception as exc:  # the package itself failed to import: not this file's subject
    pytest.skip(f"fastdarts is not importable: {type(exc).__name__}: {exc}", allow_module_level=True)

if not _ext.cpp_available():
    pytest.skip(f"fastdarts._C is not built ({_ext.load_error()}); run `pip install --no-build-isolation -e .`",
                allow_module_level=True)

ops = torch.ops.fastdarts

_HAS_CUDA_RUNTIME = torch.cuda.is_available() and _ext.cuda_ext_available()


@pytest.fixture(
    params=[
        "cpu",
        pytest.param("cuda", marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not _HAS_CUDA_RUNTIME, reason="needs a CUDA GPU and fastdarts._C built with CUDA"),
        ]),
    ]
)
def device(request):
    return torch.device(request.param)


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
KS = [1, 2, 3, 5, 8, 11]
SHAPES = [(2, 5, 7, 9), (3, 16, 11, 13)]
# Low-precision absolute slack of the flash-attn rule: one ulp near 1 (the format's epsilon).
_ATOL_LOWP = {dt: torch.finfo(dt).eps for dt in (torch.float16, torch.bfloat16)}


# ----------------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------------


def mixed_sum_ref(xs, weights, upcast=True):
    """``Σ_k weights[k] · xs[k]``; accumulated in fp32 (fp64 for fp64) when ``upcast``."""
    dtype = xs[0].dtype
    acc = torch.promote_types(dtype, torch.float32) if upcast else dtype
    w = weights.to(acc)
    out = w[0] * xs[0].to(acc)
    for k in range(1, len(xs)):
        out = out + w[k] * xs[k].to(acc)
    return out.to(dtype)


def pc_shuffle_cat_ref(x, ya, k, stride):
    n, c = x.shape[:2]
    xb = x[:, c // k:]
    if stride == 2:
        xb = F.max_pool2d(xb, 2, 2)
    y = torch.cat([ya, xb], 1)
    n, c, h, w = y.shape
    return y.view(n, k, c // k, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


def _make(shape, dtype, device, layout, gen_seed):
    """A random tensor of `shape` in one of the layouts the kernels must handle."""
    g = torch.Generator().manual_seed(gen_seed)
    base = torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)
    if layout == "contiguous":
        t = base
    elif layout == "channels_last":
        t = base.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # non-dense: every other column of a wider tensor
        wide = torch.zeros(*shape[:-1], 2 * shape[-1], dtype=dtype)
        wide[..., ::2] = base
        t = wide[..., ::2]
    else:
        raise AssertionError(layout)
    return t.to(device)


def _check(name, out, ref64, ref_lowp, dtype):
    """fp32/fp64: assert_close to the fp64 reference; 16-bit: the flash-attn 2x rule."""
    assert out.shape == ref64.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    if dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(out, ref64.to(out.dtype), msg=lambda m: f"{name}: {m}")
        return
    err = (out.double() - ref64).abs().max().item()
    err_pt = (ref_lowp.double() - ref64).abs().max().item()
    bound = 2 * err_pt + _ATOL_LOWP[dtype]
    assert err <= bound, (f"{name} ({dtype}): max error {err:.3e} vs fp64 reference exceeds 2 x PyTorch's own "
                          f"{dtype} error {err_pt:.3e} + atol {_ATOL_LOWP[dtype]:.1e} = {bound:.3e}")


def _check_dot(name, out, ref64, terms):
    """Dot products (grad_w[k] = Σ_i grad_i·x_i, accumulated in fp32) against fp64.

    With cancellation, the result can be much smaller than its terms, so a relative tolerance
    on the result alone is meaningless: the fp32 error of any summation order scales with
    Σ_i |grad_i·x_i|. Allowed: assert_close's fp32 rtol on the result plus an atol of
    2^-20 (~8 fp32 ulps) of that absolute sum.
    """
    abs_sum = torch.stack([t.abs().sum() for t in terms])
    err = (out.double() - ref64).abs()
    bound = 1.3e-6 * ref64.abs() + 2.0**-20 * abs_sum
    assert bool((err <= bound).all()), f"{name}: error {err.tolist()} exceeds bound {bound.tolist()}"


# ----------------------------------------------------------------------------------------------
# mixed_sum
# ----------------------------------------------------------------------------------------------


def _mixed_inputs(K, shape, dtype, device, layout, requires_grad=True):
    layouts = [layout] * K
    if layout == "mixed":  # first channels_last, the rest contiguous -> kernels copy to one layout
        layouts = ["channels_last"] + ["contiguous"] * (K - 1)
    xs = [_make(shape, dtype, device, lay, 100 + i).requires_grad_(requires_grad) for i, lay in enumerate(layouts)]
    w = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(K)), 0)
    w = w.to(torch.float64 if dtype == torch.float64 else torch.float32).to(device).requires_grad_(requires_grad)
    return xs, w


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "mixed", "strided"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("K", KS)
def test_mixed_sum_forward_backward(device, K, dtype, shape, layout):
    xs, w = _mixed_inputs(K, shape, dtype, device, layout)
    out = ops.mixed_sum(xs, w)
    assert out.dtype == dtype and out.device.type == device.type
    if layout == "channels_last" or layout == "mixed":
        assert out.is_contiguous(memory_format=torch.channels_last), "output must keep xs[0]'s channels_last layout"
    elif layout == "contiguous":
        assert out.is_contiguous()

    # fp64 ground truth and PyTorch's own low-precision evaluation, both through autograd.
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    w64 = w.detach().double().requires_grad_()
    ref64 = mixed_sum_ref(xs64, w64)
    xs_lo = [x.detach().clone().requires_grad_() for x in xs]
    w_lo = w.detach().clone().requires_grad_()
    ref_lo = mixed_sum_ref(xs_lo, w_lo, upcast=False)
    _check("mixed_sum", out, ref64, ref_lo, dtype)

    grad = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(device)
    got = torch.autograd.grad(out, [*xs, w], grad)
    exp64 = torch.autograd.grad(ref64, [*xs64, w64], grad.double())
    exp_lo = torch.autograd.grad(ref_lo, [*xs_lo, w_lo], grad)
    for k in range(K):
        _check(f"grad_xs[{k}]", got[k], exp64[k], exp_lo[k], dtype)
    assert got[K].dtype == w.dtype
    _check_dot("grad_weights", got[K], exp64[K], [grad.double() * x.double() for x in xs64])


@pytest.mark.parametrize("requires", [(True, False, True), (False, False, False), (False, True, False)])
@pytest.mark.parametrize("weights_requires_grad", [True, False])
def test_mixed_sum_partial_requires_grad(device, requires, weights_requires_grad):
    xs = [torch.randn(2, 3, 5, 7, device=device, requires_grad=r) for r in requires]
    w = torch.rand(3, device=device, requires_grad=weights_requires_grad)
    if not any(requires) and not weights_requires_grad:
        assert not ops.mixed_sum(xs, w).requires_grad
        return
    out = ops.mixed_sum(xs, w)
    grad = torch.randn_like(out)
    out.backward(grad)
    for k, x in enumerate(xs):
        if requires[k]:
            torch.testing.assert_close(x.grad, w[k].detach() * grad)
        else:
            assert x.grad is None
    if weights_requires_grad:
        # Against fp64, not an fp32 torch sum: that one's order follows the CPU's SIMD width.
        terms = [grad.double() * x.detach().double() for x in xs]
        _check_dot("w.grad", w.grad, torch.stack([t.sum() for t in terms]), terms)


def test_mixed_sum_backward_op_needs_input_grad(device):
    xs, w = _mixed_inputs(3, (2, 4, 5, 3), torch.float32, device, "contiguous", requires_grad=False)
    grad = torch.randn(2, 4, 5, 3, device=device)
    grad_xs, grad_w = ops.mixed_sum_backward(grad, xs, w, [True, False, True])
    assert grad_xs[1].numel() == 0
    torch.testing.assert_close(grad_xs[0], w[0] * grad)
    torch.testing.assert_close(grad_xs[2], w[2] * grad)
    assert grad_w.dtype == torch.float32
    torch.testing.assert_close(grad_w, torch.stack([(grad.double() * x.double()).sum() for x in xs]).float())


def test_mixed_sum_weights_dtype(device):
    """16-bit candidates with fp32 weights: output in the candidates' dtype, grad_w in fp32."""
    xs, w = _mixed_inputs(3, (2, 3, 4, 5), torch.bfloat16, device, "contiguous")
    out = ops.mixed_sum(xs, w)
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert w.grad.dtype == torch.float32 and xs[0].grad.dtype == torch.bfloat16


def test_mixed_sum_saves_with_save_for_backward(device):
    """Everything kept for backward is visible to saved_tensors_hooks (no ctx attributes)."""
    xs, w = _mixed_inputs(3, (2, 3, 4, 5), torch.float32, device, "contiguous")
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ops.mixed_sum(xs, w)
    assert len(packed) == len(xs) + 1
    assert {t.data_ptr() for t in packed} == {w.data_ptr(), *(x.data_ptr() for x in xs)}
    out.sum().backward()
    assert all(x.grad is not None for x in xs) and w.grad is not None


@pytest.mark.parametrize("K", [3, 11])
def test_mixed_sum_gradcheck_fp64(device, K):
    xs, w = _mixed_inputs(K, (2, 3, 5, 7), torch.float64, device, "contiguous")
    assert torch.autograd.gradcheck(lambda w_, *xs_: ops.mixed_sum(list(xs_), w_), (w, *xs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mixed_sum_deterministic(device, dtype):
    """Bit-identical results run to run and, on CPU, for 1, 2 and 3 threads (fixed-size chunks)."""
    shape = (4, 16, 33, 35)  # 73920 elements: 19 reduction chunks of 4096
    xs, w = _mixed_inputs(5, shape, dtype, device, "contiguous", requires_grad=False)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype).to(device)
    needs = [True, False, True, True, False]

    def run():
        return ops.mixed_sum(xs, w), *ops.mixed_sum_backward(grad, xs, w, needs)

    def same(a, b):
        (ya, gxa, gwa), (yb, gxb, gwb) = a, b
        return (torch.equal(ya, yb) and torch.equal(gwa, gwb)
                and all(torch.equal(p, q) for p, q in zip(gxa, gxb)))

    first = run()
    assert same(first, run()), "two runs differ"
    if device.type == "cpu":
        old = torch.get_num_threads()
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                assert same(first, run()), f"result changes with torch.set_num_threads({n})"
        finally:
            torch.set_num_threads(old)


def _misaligned(shape, dtype, device, seed):
    """A contiguous view one element into a fresh allocation: not 16-byte aligned, so the CUDA
    kernels take their scalar path (the aligned tensors elsewhere take the vector path)."""
    g = torch.Generator().manual_seed(seed)
    flat = torch.randn(torch.Size(shape).numel() + 1, generator=g).to(dtype).to(device)
    return flat[1:].view(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("K", [3, 9])
def test_mixed_sum_misaligned_views_and_grad_layout(device, K, dtype):
    """Misaligned inputs give the reference numbers; the gradients take the inputs' layout, not the
    incoming grad's (a non-dense grad costs one copy of grad, not of the K inputs)."""
    shape = (2, 5, 7, 9)  # 630 elements: not a multiple of the vector width, so there is a tail
    xs = [_misaligned(shape, dtype, device, 10 + k) for k in range(K)]
    assert all(x.is_contiguous() and x.data_ptr() % 16 != 0 for x in xs)
    w = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(K)), 0).to(device)
    wide = torch.randn(*shape[:-1], 2 * shape[-1], generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    grad = wide[..., ::2]  # non-dense
    xs64 = [x.double() for x in xs]
    ref64 = mixed_sum_ref(xs64, w.double())
    _check("mixed_sum", ops.mixed_sum(xs, w), ref64, mixed_sum_ref(xs, w, upcast=False), dtype)
    grad_xs, grad_w = ops.mixed_sum_backward(grad, xs, w, [True] * K)
    for k in range(K):
        assert grad_xs[k].is_contiguous()
        _check(f"grad_xs[{k}]", grad_xs[k], w[k].double() * grad.double(), (w[k].to(dtype) * grad), dtype)
    exp_w = torch.stack([(grad.double() * x).sum() for x in xs64])
    _check_dot("grad_weights", grad_w, exp_w, [grad.double() * x for x in xs64])
    # channels_last inputs, contiguous grad: gradients stay channels_last
    xs_cl = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    grad_xs, grad_w_cl = ops.mixed_sum_backward(grad.contiguous(), xs_cl, w, [True] * K)
    assert all(g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous() for g in grad_xs)
    _check_dot("grad_weights (channels_last)", grad_w_cl, exp_w, [grad.double() * x for x in xs64])
    torch.testing.assert_close(grad_xs[1], (w[1] * grad.float()).to(dtype).contiguous(
        memory_format=torch.channels_last), rtol=0, atol=0)


def test_mixed_sum_errors(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    w = torch.rand(2, device=device)
    with pytest.raises(RuntimeError, match="non-empty"):
        ops.mixed_sum([], w)
    with pytest.raises(RuntimeError, match="K mismatch"):
        ops.mixed_sum([x, x, x], w)
    with pytest.raises(RuntimeError, match=re.escape("xs[1] has shape [2, 3, 4, 4]")):
        ops.mixed_sum([x, x[..., :4]], w)
    with pytest.raises(RuntimeError, match="dtype mismatch"):
        ops.mixed_sum([x, x.double()], w)
    with pytest.raises(RuntimeError, match="weights must be 1-D"):
        ops.mixed_sum([x, x], w.view(1, 2))
    with pytest.raises(RuntimeError, match="must be float32, float16, bfloat16 or float64"):
        ops.mixed_sum([x.int(), x.int()], w)
    with pytest.raises(RuntimeError, match="needs_input_grad has 1 entries"):
        ops.mixed_sum_backward(x, [x, x], w, [True])


# ----------------------------------------------------------------------------------------------
# pc_shuffle_cat
# ----------------------------------------------------------------------------------------------

PC_CASES = [  # (shape of x, k, stride); odd H / W for stride 2
    ((2, 8, 7, 9), 2, 1),
    ((2, 8, 7, 9), 4, 1),
    ((2, 8, 7, 9), 2, 2),
    ((3, 16, 11, 13), 4, 2),
    ((2, 12, 8, 6), 4, 2),
    ((1, 4, 3, 3), 2, 2),  # 1x1 output plane
]

PC_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _pc_inputs(shape, k, stride, dtype, device, ties=False, channels_last=False):
    n, c, h, w = shape
    ho, wo = (h // 2, w // 2) if stride == 2 else (h, w)
    g = torch.Generator().manual_seed(sum(shape) + k + stride)
    if ties:  # small integers: many equal values inside the 2x2 windows
        x = torch.randint(-2, 3, shape, generator=g).to(dtype)
    else:
        x = torch.randn(shape, generator=g).to(dtype)
    ya = torch.randn(n, c // k, ho, wo, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        ya = ya.contiguous(memory_format=torch.channels_last)
    return x.to(device).requires_grad_(), ya.to(device).requires_grad_()


def _assert_exact(name, got, exp, equal_nan=False):
    torch.testing.assert_close(got, exp, rtol=0, atol=0, equal_nan=equal_nan, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
@pytest.mark.parametrize("dtype", PC_DTYPES, ids=str)
@pytest.mark.parametrize("shape,k,stride", PC_CASES, ids=str)
def test_pc_shuffle_cat_forward_backward(device, shape, k, stride, dtype, ties, channels_last):
    x, ya = _pc_inputs(shape, k, stride, dtype, device, ties, channels_last)
    out = ops.pc_shuffle_cat(x, ya, k, stride)
    xr = x.detach().contiguous().requires_grad_()
    yar = ya.detach().contiguous().requires_grad_()
    ref = pc_shuffle_cat_ref(xr, yar, k, stride)
    _assert_exact("pc_shuffle_cat", out, ref)
    assert out.is_contiguous()

    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5)).to(dtype).to(device)
    gx, gya = torch.autograd.grad(out, [x, ya], grad)
    ex, eya = torch.autograd.grad(ref, [xr, yar], grad)
    _assert_exact("grad_x", gx, ex)
    _assert_exact("grad_ya", gya, eya)


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_shuffle_cat_misaligned_views(device, stride):
    """Misaligned x / ya / grad (the CUDA kernels' scalar path) give exactly the reference."""
    shape, k = (2, 8, 8, 12), 4  # 96-element planes: a multiple of every vector width
    ho, wo = (4, 6) if stride == 2 else (8, 12)
    x = _misaligned(shape, torch.float32, device, 1).requires_grad_()
    ya = _misaligned((2, 2, ho, wo), torch.float32, device, 2).requires_grad_()
    grad = _misaligned((2, 8, ho, wo), torch.float32, device, 3)
    out = ops.pc_shuffle_cat(x, ya, k, stride)
    xr, yar = x.detach().clone().requires_grad_(), ya.detach().clone().requires_grad_()
    ref = pc_shuffle_cat_ref(xr, yar, k, stride)
    _assert_exact("pc_shuffle_cat", out, ref)
    got = torch.autograd.grad(out, (x, ya), grad)
    exp = torch.autograd.grad(ref, (xr, yar), grad)
    for name, a, b in zip(("grad_x", "grad_ya"), got, exp):
        _assert_exact(name, a, b)


@pytest.mark.parametrize("dtype", PC_DTYPES, ids=str)
def test_pc_shuffle_cat_nan_propagates(device, dtype):
    x, ya = _pc_inputs((2, 8, 7, 9), 2, 2, dtype, device)
    x = x.detach().clone()
    x[0, 5, 0, 1] = float("nan")  # bypass channel, window (0, 0)
    x[1, 7, 3, 2] = float("nan")  # window (1, 1)
    x[1, 7, 2, 3] = float("nan")  # same window: the last NaN takes the gradient
    x.requires_grad_()
    out = ops.pc_shuffle_cat(x, ya, 2, 2)
    xr = x.detach().clone().requires_grad_()
    ref = pc_shuffle_cat_ref(xr, ya, 2, 2)
    _assert_exact("pc_shuffle_cat", out, ref, equal_nan=True)
    grad = torch.ones_like(out)
    _assert_exact("grad_x", torch.autograd.grad(out, x, grad)[0], torch.autograd.grad(ref, xr, grad)[0])


def test_pc_shuffle_cat_empty_pooled_plane(device):
    """H = 1 with stride 2 pools to an empty plane (PyTorch's max_pool2d refuses it): no output
    values, and the whole gradient of x is zero."""
    x, _ = _pc_inputs((1, 4, 1, 3), 2, 1, torch.float32, device)
    ya = torch.randn(1, 2, 0, 1, device=device, requires_grad=True)
    out = ops.pc_shuffle_cat(x, ya, 2, 2)
    assert out.shape == (1, 4, 0, 1)
    gx, gya = ops.pc_shuffle_cat_backward(torch.randn(1, 4, 0, 1, device=device), x.detach(), 2, 2)
    assert gx.shape == x.shape and not gx.any() and gya.shape == (1, 2, 0, 1)


def test_pc_shuffle_cat_backward_op(device):
    """Direct call of the backward op: grad_ya gathers channel j*k, non-bypass grad_x is zero."""
    x, _ = _pc_inputs((2, 8, 6, 5), 4, 1, torch.float32, device)
    grad = torch.randn(2, 8, 6, 5, device=device)
    gx, gya = ops.pc_shuffle_cat_backward(grad, x.detach(), 4, 1)
    assert gx.shape == x.shape and gya.shape == (2, 2, 6, 5)
    _assert_exact("grad_ya", gya, grad[:, ::4])
    assert not gx[:, :2].any()
    _assert_exact("grad_x bypass", gx[:, 2:4], grad[:, 1::4])


def test_pc_shuffle_cat_saves_only_x(device):
    x, ya = _pc_inputs((2, 8, 6, 6), 4, 2, torch.float32, device)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out = ops.pc_shuffle_cat(x, ya, 4, 2)
    assert len(packed) == 1 and packed[0].data_ptr() == x.data_ptr() and packed[0].shape == x.shape
    out.sum().backward()
    assert x.grad is not None and ya.grad is not None


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_shuffle_cat_gradcheck_fp64(device, stride):
    x, ya = _pc_inputs((2, 8, 5, 7), 4, stride, torch.float64, device)
    assert torch.autograd.gradcheck(lambda a, b: ops.pc_shuffle_cat(a, b, 4, stride), (x, ya))


def test_pc_shuffle_cat_errors(device):
    x = torch.randn(2, 6, 8, 8, device=device)
    with pytest.raises(RuntimeError, match="C=6 is not divisible by k=4"):
        ops.pc_shuffle_cat(x, torch.randn(2, 1, 8, 8, device=device), 4, 1)
    with pytest.raises(RuntimeError, match="ya shape mismatch"):
        ops.pc_shuffle_cat(x, torch.randn(2, 3, 8, 8, device=device), 2, 2)
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        ops.pc_shuffle_cat(x, torch.randn(2, 3, 3, 3, device=device), 2, 3)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.pc_shuffle_cat(x[0], torch.randn(3, 8, 8, device=device), 2, 1)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        ops.pc_shuffle_cat_backward(torch.randn(2, 6, 8, 8, device=device), x, 2, 2)


# ----------------------------------------------------------------------------------------------
# Registration: opcheck on every C++ op of the namespace, torch.compile
# ----------------------------------------------------------------------------------------------


def _cpp_defined_fastdarts_ops() -> list[str]:
    """All ``fastdarts::`` ops whose schema comes from C++ (TORCH_LIBRARY in csrc/).

    Python ``custom_op`` / ``triton_op`` registrations may share the namespace; their
    dispatcher debug line points at a ``.py`` file, the C++ ones at a ``.cpp`` file.
    """
    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdarts::"))
    out = []
    for name in names:
        debug = re.search(r"^debug: registered at (\S+?):\d+", torch._C._dispatch_dump(name), re.M)
        if debug is None or not debug.group(1).endswith(".py"):
            out.append(name)
    return out


def _opcheck_samples(device):
    """Sample arguments per C++ op (add an entry when an op is added to csrc/module.cpp)."""
    t = dict(device=device)
    xs, w = _mixed_inputs(3, (2, 3, 5, 7), torch.float32, device, "contiguous")
    xs_cl, w_cl = _mixed_inputs(2, (2, 3, 5, 7), torch.bfloat16, device, "channels_last")
    xs_nd, w_nd = _mixed_inputs(4, (2, 3, 5, 7), torch.float32, device, "strided", requires_grad=False)
    g = torch.randn(2, 3, 5, 7, **t)
    x1, ya1 = _pc_inputs((2, 8, 7, 9), 2, 1, torch.float32, device)
    x2, ya2 = _pc_inputs((2, 8, 7, 9), 4, 2, torch.float32, device)
    return {
        "fastdarts::mixed_sum": [(xs, w), (xs_cl, w_cl), (xs_nd, w_nd)],
        "fastdarts::mixed_sum_backward": [
            (g, [x.detach() for x in xs], w.detach(), [True, False, True]),
            (g.to(torch.bfloat16).contiguous(memory_format=torch.channels_last), [x.detach() for x in xs_cl],
             w_cl.detach(), [True, True]),
            (g, xs_nd, w_nd, [False] * 4),
        ],
        "fastdarts::pc_shuffle_cat": [(x1, ya1, 2, 1), (x2, ya2, 4, 2)],
        "fastdarts::pc_shuffle_cat_backward": [
            (torch.randn(2, 8, 7, 9, **t), x1.detach(), 2, 1),
            (torch.randn(2, 8, 3, 4, **t), x2.detach(), 4, 2),
        ],
    }


def test_cpp_op_list_is_complete():
    """The C++ ops found in the dispatcher are exactly the ones _ext registers fakes/autograd for."""
    assert _cpp_defined_fastdarts_ops() == sorted(_ext.cpp_op_names())


@pytest.mark.parametrize("op_name", _cpp_defined_fastdarts_ops())
def test_opcheck(device, op_name):
    samples = _opcheck_samples(device)
    assert op_name in samples, f"no opcheck sample inputs for {op_name}: add them to _opcheck_samples"
    op = getattr(ops, op_name.split("::")[1]).default
    for args in samples[op_name]:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    def edge(xs, w, x, ya):
        y = ops.mixed_sum(xs, w)
        return ops.pc_shuffle_cat(x, ya, 2, 2), y * 2

    compiled = torch.compile(edge, fullgraph=True)
    xs, w = _mixed_inputs(3, (2, 3, 5, 7), torch.float32, device, "contiguous")
    x, ya = _pc_inputs((2, 8, 7, 9), 2, 2, torch.float32, device)
    got = compiled(xs, w, x, ya)
    exp = edge(xs, w, x, ya)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)
    (got[0].sum() + got[1].square().sum()).backward()
    grads = [t.grad.clone() for t in (*xs, w, x, ya)]
    for t in (*xs, w, x, ya):
        t.grad = None
    (exp[0].sum() + exp[1].square().sum()).backward()
    for a, t in zip(grads, (*xs, w, x, ya)):
        torch.testing.assert_close(a, t.grad)
