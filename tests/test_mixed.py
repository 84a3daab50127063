"""Tests of the drop-in mixed ops (``fastdarts.MixedOp``, ``fastdarts.PartialMixedOp``) and ``mixed_sum``.

Ground truth is ``tests/reference_darts.py``: literal copies of quark0/darts' and PC-DARTS'
``MixedOp``. fastdarts must load their state_dicts with ``strict=True`` and give the same
outputs and gradients, on every backend this machine can run.
"""

from __future__ import annotations

import os

import pytest
import reference_darts as ref
import torch

import fastdarts
from fastdarts import _ext

HAS_CPP = _ext.cpp_available()
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

BACKENDS = [
    "eager",
    "auto",  # C++ on CPU when the extension is built, else eager
    pytest.param("triton", marks=pytest.mark.skipif(not TRITON_INTERPRET, reason="needs TRITON_INTERPRET=1")),
]
needs_cpp = pytest.mark.skipif(not HAS_CPP, reason="fastdarts._C is not built")

K = len(ref.PRIMITIVES)


def _shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _weights(k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, generator=g).softmax(0).detach().requires_grad_(True)


def _pair(kind, C, stride, backend="auto", recompute=False, seed=0):
    """A reference mixed op and a fastdarts one carrying the reference's weights."""
    torch.manual_seed(seed)
    if kind == "darts":
        theirs = ref.MixedOp(C, stride)
        ours = fastdarts.MixedOp(C, stride, backend=backend, recompute=recompute)
    else:
        theirs = ref.PCMixedOp(C, stride)
        ours = fastdarts.PartialMixedOp(C, stride, backend=backend, recompute=recompute)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def _run(module, x, w, g):
    """One forward + backward with upstream gradient ``g``; returns (out, x.grad, w.grad, param grads)."""
    x = x.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y = module(x, w)
    y.backward(g)
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, w.grad, grads


# ---------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [8, 16])
def test_mixed_op_layout_matches_quark0(C, stride):
    theirs = ref.MixedOp(C, stride)
    ours = fastdarts.MixedOp(C, stride)
    assert _shapes(ours) == _shapes(theirs)
    assert tuple(ours.primitives) == tuple(ref.PRIMITIVES)
    assert len(ours._ops) == K
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [8, 16])
def test_partial_mixed_op_layout_matches_pcdarts(C, stride):
    theirs = ref.PCMixedOp(C, stride)
    ours = fastdarts.PartialMixedOp(C, stride)
    assert _shapes(ours) == _shapes(theirs)
    assert all(k.startswith("_ops.") for k in ours.state_dict())
    assert isinstance(ours.mp, torch.nn.MaxPool2d)
    assert (ours.mp.kernel_size, ours.mp.stride) == (theirs.mp.kernel_size, theirs.mp.stride)
    ours.load_state_dict(theirs.state_dict(), strict=True)


def test_partial_mixed_op_needs_divisible_channels():
    with pytest.raises(ValueError, match="divisible"):
        fastdarts.PartialMixedOp(10, 1, k=4)


# ---------------------------------------------------------------------------------------------
# Numbers: outputs and gradients equal the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C,kind", [(8, "darts"), (16, "darts"), (8, "pcdarts"), (16, "pcdarts")])
def test_same_numbers_as_reference(kind, C, stride, backend):
    theirs, ours = _pair(kind, C, stride, backend=backend)
    torch.manual_seed(1)
    x = torch.randn(2, C, 8, 8)
    w = _weights(seed=2)
    g = torch.randn(2, C, 8 // stride, 8 // stride)

    y_ref, gx_ref, gw_ref, gp_ref = _run(theirs, x, w, g)
    y, gx, gw, gp = _run(ours, x, w, g)

    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(gx, gx_ref)
    # "eager" is quark0's code, so the defaults apply. The fused backends compute
    # ∂w_k = <g, op_k(x)> in their own kernel and share one ReLU per edge (its backward sums the
    # four ReLU-first ops' input gradients before masking): the same sums in a different
    # order, so allow a little float32 rounding on these reductions.
    tol = {} if backend == "eager" else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw_ref, **tol)
    assert gp.keys() == gp_ref.keys()
    for name in gp_ref:
        torch.testing.assert_close(gp[name], gp_ref[name], **tol, msg=name)
    # BatchNorm running statistics moved identically.
    for name, buf in theirs.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buf, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_numbers_in_eval_mode(backend):
    theirs, ours = _pair("darts", 8, 2, backend=backend)
    torch.manual_seed(1)
    x = torch.randn(2, 8, 8, 8)
    theirs(x, _weights())  # move the running stats away from their init
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.eval()
    ours.eval()
    w = _weights(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, w), theirs(x, w))


# ---------------------------------------------------------------------------------------------
# Recompute


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["darts", "pcdarts"])
def test_recompute_matches_and_updates_bn_once(kind, stride, backend):
    C = 8
    _, plain = _pair(kind, C, stride, backend=backend, recompute=False)
    _, rec = _pair(kind, C, stride, backend=backend, recompute=True)
    torch.manual_seed(1)
    x = torch.randn(2, C, 8, 8)
    w = _weights(seed=3)
    g = torch.randn(2, C, 8 // stride, 8 // stride)

    y0, gx0, gw0, gp0 = _run(plain, x, w, g)
    y1, gx1, gw1, gp1 = _run(rec, x, w, g)

    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    torch.testing.assert_close(gw1, gw0)
    for name in gp0:
        torch.testing.assert_close(gp1[name], gp0[name], msg=name)
    bufs0 = dict(plain.named_buffers())
    bufs1 = dict(rec.named_buffers())
    assert bufs0.keys() == bufs1.keys() and bufs0
    for name, b in bufs0.items():
        torch.testing.assert_close(bufs1[name], b, rtol=0, atol=0, msg=name)
        if name.endswith("num_batches_tracked"):
            assert int(bufs1[name]) == 1, name


def test_recompute_without_grad_is_plain_forward():
    _, plain = _pair("darts", 8, 1, recompute=False)
    _, rec = _pair("darts", 8, 1, recompute=True)
    x = torch.randn(2, 8, 8, 8)
    w = _weights()
    with torch.no_grad():
        torch.testing.assert_close(rec(x, w), plain(x, w))
    assert int(rec._ops[4].op[3].num_batches_tracked) == 1


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("cls", [fastdarts.MixedOp, fastdarts.PartialMixedOp])
def test_wrong_number_of_weights(cls):
    m = cls(8, 1)
    x = torch.randn(2, 8, 8, 8)
    with pytest.raises(ValueError, match="8"):
        m(x, torch.ones(7) / 7)
    with pytest.raises(ValueError, match=r"\[8\]"):
        m(x, torch.ones(9) / 9)
    with pytest.raises(ValueError):
        m(x, torch.ones(1, 8) / 8)


@pytest.mark.parametrize("cls", [fastdarts.MixedOp, fastdarts.PartialMixedOp])
def test_unknown_backend_lists_backends(cls):
    with pytest.raises(ValueError) as info:
        cls(8, 1, backend="fastest")
    msg = str(info.value)
    assert "fastest" in msg
    for name in ("auto", "triton", "cuda", "cpp", "eager"):
        assert name in msg
    with pytest.raises(ValueError, match="eager"):
        fastdarts.mixed_sum([torch.ones(3)], torch.ones(1), backend="fastest")


@pytest.mark.parametrize("cls", [fastdarts.MixedOp, fastdarts.PartialMixedOp])
def test_cuda_backend_on_cpu_tensors_raises(cls):
    m = cls(8, 1, backend="cuda")  # the choice is checked when the tensor's device is known
    with pytest.raises(ValueError, match="cuda"):
        m(torch.randn(2, 8, 8, 8), _weights())
    with pytest.raises(ValueError, match="cuda"):
        fastdarts.mixed_sum([torch.ones(3), torch.ones(3)], torch.ones(2), backend="cuda")


@pytest.mark.skipif(TRITON_INTERPRET, reason="Triton runs on CPU under the interpreter")
def test_triton_backend_on_cpu_without_interpreter_raises():
    m = fastdarts.MixedOp(8, 1, backend="triton")
    with pytest.raises(ValueError, match="triton"):
        m(torch.randn(2, 8, 8, 8), _weights())


def test_mixed_sum_bad_arguments():
    xs = [torch.randn(2, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="3"):
        fastdarts.mixed_sum(xs, torch.ones(2))
    with pytest.raises(ValueError, match="3"):
        fastdarts.mixed_sum(torch.stack(xs), torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        fastdarts.mixed_sum([xs[0], torch.randn(2, 4), xs[2]], torch.ones(3))
    with pytest.raises(ValueError):
        fastdarts.mixed_sum(xs, torch.ones(3, 1))
    with pytest.raises(ValueError):
        fastdarts.mixed_sum([], torch.ones(0))


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpp", marks=needs_cpp), "auto"])
def test_mixed_sum_accepts_stacked_tensor_and_list(backend):
    torch.manual_seed(0)
    xs = torch.randn(4, 2, 3, 5, 5)
    w = torch.randn(4)
    expected = sum(w[k] * xs[k] for k in range(4))
    torch.testing.assert_close(fastdarts.mixed_sum(xs, w, backend=backend), expected)
    torch.testing.assert_close(fastdarts.mixed_sum(list(xs.unbind(0)), w, backend=backend), expected)
    torch.testing.assert_close(fastdarts.mixed_sum(tuple(xs.clone().unbind(0)), w, backend=backend), expected)


@pytest.mark.parametrize("backend", ["eager", pytest.param("cpp", marks=needs_cpp)])
def test_mixed_sum_gradcheck(backend):
    torch.manual_seed(0)
    xs = [torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def fn(w, *xs):
        return fastdarts.mixed_sum(list(xs), w, backend=backend)

    assert torch.autograd.gradcheck(fn, (w, *xs))
    # The stacked form as well.
    stacked = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, s: fastdarts.mixed_sum(s, w, backend=backend), (w, stacked))


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("cls", [fastdarts.MixedOp, fastdarts.PartialMixedOp])
def test_recompute_replays_rng(cls, backend):
    # `noise` draws fresh values; the backward recomputation must replay the same draws.
    prims = ["noise", "sep_conv_3x3", "skip_connect"]
    torch.manual_seed(0)
    plain = cls(8, 2, primitives=prims, backend=backend)
    rec = cls(8, 2, primitives=prims, backend=backend, recompute=True)
    rec.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 8, 8, 8)
    w = _weights(3, seed=4)
    results = []
    for m in (plain, rec):
        xx = x.clone().requires_grad_(True)
        ww = w.detach().clone().requires_grad_(True)
        torch.manual_seed(5)
        y = m(xx, ww)
        y.square().sum().backward()
        results.append((y.detach(), xx.grad, ww.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a)
