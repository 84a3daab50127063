"""Tests of the drop-in mixed ops (``fastdarts.MixedOp``, ``fastdarts.PartialMixedOp``) and ``mixed_sum``.

Ground truth is ``tests/reference_darts.py``: literal copies of quark0/darts' and PC-DARTS'
``MixedOp``. fastdarts must load their state_dicts with ``strict=True`` and give the same
outputs and gradients, on every backend this machine can run.
"""

from __future__ import annotations

import copy
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


def _gamma(n: int) -> float:
    """Higham's γ_n = n·u/(1 − n·u) for fp32 (u = eps/2): a sum of n terms in any order (or a dot
    product with or without FMA) is within γ_n·Σ|term| of the exact value."""
    u = torch.finfo(torch.float32).eps / 2
    return n * u / (1 - n * u)


def _term_magnitudes(module, x, w, g):
    """The reference's per-candidate terms: op outputs y_k, the gradients reaching the mixed sum
    (grad_out_k = w_k·g') and those leaving each op towards the edge input (gin_k)."""
    module = copy.deepcopy(module)  # the BN statistics of the module under test stay put
    outs, grads_out, grads_in = {}, {}, {}
    def keep_out(k):
        def hook(mod, inputs, out):
            outs[k] = out.detach()
        return hook

    def keep_grads(k):
        def hook(mod, grad_in, grad_out):
            grads_in[k], grads_out[k] = grad_in[0], grad_out[0]
        return hook

    for k, op in enumerate(module._ops):
        op.register_forward_hook(keep_out(k))
        op.register_full_backward_hook(keep_grads(k))
    _run(module, x, w, g)
    ks = range(len(module._ops))
    return [outs[k] for k in ks], [grads_out[k] for k in ks], [grads_in[k] for k in ks]


def _assert_within(name, got, exp, bound):
    err = (got.double() - exp.double()).abs()
    assert bool((err <= bound).all()), f"{name}: max error {err.max().item():.3g} exceeds the rounding bound"


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
    # The fused backends add the same terms as quark0 in another order: Σ_k w_k·op_k(x) in one
    # kernel, ∂w_k = <g', op_k(x)> in their own reduction, and one shared ReLU per edge (its
    # backward adds the ReLU-first ops' input gradients before masking). Only rounding differs:
    # eager and C++ run in float64, where it is ~1e-15 and the default tolerances hold on any CPU.
    # Triton takes no float64, so it runs in fp32 against the bound for two orders of the same
    # fp32 terms: |Δ| ≤ 2·γ_n·Σ|term| (n terms, +1 for a fused multiply-add).
    dtype = torch.float32 if backend == "triton" else torch.float64
    theirs, ours = _pair(kind, C, stride, backend=backend)
    theirs.to(dtype)
    ours.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(2, C, 8, 8, dtype=dtype)
    w = _weights(seed=2).to(dtype)
    g = torch.randn(2, C, 8 // stride, 8 // stride, dtype=dtype)
    if dtype == torch.float32:
        outs, grads_out, grads_in = _term_magnitudes(theirs, x, w, g)

    y_ref, gx_ref, gw_ref, gp_ref = _run(theirs, x, w, g)
    y, gx, gw, gp = _run(ours, x, w, g)

    if dtype == torch.float64:
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        torch.testing.assert_close(gw, gw_ref)
    else:
        n_k = len(outs) + 1
        # y: K weighted candidates per element (PC-DARTS: the bypass channels are copied exactly,
        # so the largest candidate sum bounds every element).
        y_bound = 2 * _gamma(n_k) * sum(wk * o.abs() for wk, o in zip(w.tolist(), outs)).max().item()
        _assert_within("y", y, y_ref, y_bound)
        # ∂x: ≤ K candidate input gradients per element of the candidates' input slice.
        gx_terms = sum(t.abs() for t in grads_in if t is not None)
        gx_bound = torch.zeros_like(gx_ref)
        gx_bound[:, : gx_terms.shape[1]] = 2 * _gamma(n_k) * gx_terms
        _assert_within("x.grad", gx, gx_ref, gx_bound)
        # ∂w_k = Σ_i g'_i·y_k,i with g' = grad_out_k / w_k: n = numel(y_k) products.
        gw_bound = torch.tensor([2 * _gamma(o.numel() + 1) * (go.abs() * o.abs()).sum().item() / wk
                                 for wk, o, go in zip(w.tolist(), outs, grads_out)])
        _assert_within("w.grad", gw, gw_ref, gw_bound)
    # Each candidate receives the same w_k·g' and the same ReLU(x) in both: its parameter
    # gradients are computed from identical inputs by identical kernels.
    assert gp.keys() == gp_ref.keys()
    for name in gp_ref:
        torch.testing.assert_close(gp[name], gp_ref[name], msg=name)
    # BatchNorm running statistics moved identically.
    for name, buf in theirs.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buf, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_numbers_in_eval_mode(backend):
    # As above: float64 where the backend takes it; Triton (fp32) within 2·γ_(K+1)·Σ_k w_k·|op_k(x)|.
    dtype = torch.float32 if backend == "triton" else torch.float64
    theirs, ours = _pair("darts", 8, 2, backend=backend)
    theirs.to(dtype)
    ours.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(2, 8, 8, 8, dtype=dtype)
    theirs(x, _weights().to(dtype))  # move the running stats away from their init
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.eval()
    ours.eval()
    w = _weights(seed=5).to(dtype)
    with torch.no_grad():
        y, y_ref = ours(x, w), theirs(x, w)
        if dtype == torch.float64:
            torch.testing.assert_close(y, y_ref)
        else:
            terms = sum(wk * op(x).abs() for wk, op in zip(w.tolist(), theirs._ops))
            _assert_within("y", y, y_ref, 2 * _gamma(len(theirs._ops) + 1) * terms)


# ---------------------------------------------------------------------------------------------
# Recompute


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kind", ["darts", "pcdarts"])
def test_recompute_matches_and_updates_bn_once(kind, stride, backend):
    # float64: recompute re-associates the gradient sums at the edge input (rounding only).
    C = 8
    _, plain = _pair(kind, C, stride, backend=backend, recompute=False)
    _, rec = _pair(kind, C, stride, backend=backend, recompute=True)
    plain.double()
    rec.double()
    torch.manual_seed(1)
    x = torch.randn(2, C, 8, 8, dtype=torch.float64)
    w = _weights(seed=3).double()
    g = torch.randn(2, C, 8 // stride, 8 // stride, dtype=torch.float64)

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
    torch.manual_seed(0)  # float64: the kernel may add the four terms in another order
    xs = torch.randn(4, 2, 3, 5, 5, dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64)
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
    plain = cls(8, 2, primitives=prims, backend=backend).double()  # float64: recompute reorders sums
    rec = cls(8, 2, primitives=prims, backend=backend, recompute=True).double()
    rec.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    w = _weights(3, seed=4).double()
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
