"""DARTS update rules pinned against independent hand computations (quark0/darts ``architect.py``).

Every expected value is computed on a ``copy.deepcopy`` of the supernet with explicit autograd and
hand-written optimiser formulas, never by calling the method under test.
"""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from reference_lr import cosine_annealing

import fastdarts
from fastdarts.methods import get_method
from fastdarts.methods.darts import Darts, DartsSecondOrder
from fastdarts.methods.pcdarts import PCDarts

BN = nn.modules.batchnorm._BatchNorm



def _batch(seed, n=4, size=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def _make(method_cls, method="darts", dtype=torch.float32, seed=0, **hyper):
    torch.manual_seed(seed)
    model = fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=3, backend="eager")
    if dtype == torch.float64:
        model.double()
    hp = method_cls.resolve_hyper(dict(hyper))
    m = method_cls(model, hp)
    m.begin_epoch(0)
    return model, m


def _weights(model):
    return [p for p in model.parameters() if p.requires_grad]


def _bn_buffers(model):
    out = []
    for mod in model.modules():
        if isinstance(mod, BN) and mod.track_running_stats:
            out += [mod.running_mean.clone(), mod.running_var.clone(), mod.num_batches_tracked.clone()]
    return out


# ------------------------------------------------------------------------------------------ defaults


def test_darts_defaults_are_quark0():
    hp = Darts.resolve_hyper({})
    assert hp["w_lr"] == 0.025 and hp["w_lr_min"] == 0.001 and hp["w_momentum"] == 0.9
    assert hp["w_weight_decay"] == 3e-4 and hp["w_grad_clip"] == 5.0 and hp["w_nesterov"] is False
    assert hp["alpha_lr"] == 3e-4 and hp["alpha_betas"] == (0.5, 0.999) and hp["alpha_weight_decay"] == 1e-3
    assert hp["epochs"] == 50 and hp["arch_warmup"] == 0
    assert get_method("darts") is Darts and get_method("darts2") is DartsSecondOrder
    assert get_method("pcdarts") is PCDarts
    with pytest.raises(ValueError, match="nope"):
        get_method("nope")


def test_lr_schedule_as_run_on_pytorch_031():
    # quark0's scheduler.step() at each epoch start on PyTorch 0.3.1: epoch e at cos(π·e/T).
    _, m = _make(Darts)
    sched = cosine_annealing(0.025, 0.001, 50.0)  # train_search.py defaults
    # The same float64 operations in the same order as lr_at: equal, not approximately.
    assert [m.lr_at(e) for e in range(50)] == [sched.step() for _ in range(50)]
    assert m.lr == m.w_optim.param_groups[0]["lr"] == 0.025  # begin_epoch(0) applied it
    assert m.lr_at(49) > 0.001  # the last epoch is one step above the minimum
    # PC-DARTS: 0.1 → 0 with the same semantics.
    _, pc = _make(PCDarts, method="pcdarts")
    sched = cosine_annealing(0.1, 0.0, 50.0)
    assert [pc.lr_at(e) for e in range(50)] == [sched.step() for _ in range(50)]
    # NAS-Bench-201 settings index by epoch too (D-X-Y's scheduler.update(epoch, 0)).
    assert Darts.resolve_hyper({}, "nb201")["lr_schedule_offset"] == 0
    # epochs override changes T.
    _, m10 = _make(Darts, epochs=10)
    sched = cosine_annealing(0.025, 0.001, 10.0)
    assert [m10.lr_at(e) for e in range(10)] == [sched.step() for _ in range(10)]


# ------------------------------------------------------------------------------------------ first order


def _adam_reference(params, grads_seq, lr=3e-4, betas=(0.5, 0.999), wd=1e-3, eps=1e-8):
    """Adam with coupled L2 written out (torch.optim.Adam semantics), returns the final params."""
    p = [t.detach().clone() for t in params]
    m = [torch.zeros_like(t) for t in p]
    v = [torch.zeros_like(t) for t in p]
    for step, grads in enumerate(grads_seq, start=1):
        for i, g in enumerate(grads):
            g = g + wd * p[i]
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            mhat = m[i] / (1 - betas[0] ** step)
            vhat = v[i] / (1 - betas[1] ** step)
            p[i] = p[i] - lr * mhat / (vhat.sqrt() + eps)
    return p


def test_first_order_arch_step_is_adam_on_val_gradient():
    # float64: the expectations add the same terms in other orders (closed-form Adam, a separate
    # forward/backward), so they agree to rounding only; in float64 that is ~1e-16 of α's steps.
    model, m = _make(Darts, dtype=torch.float64)
    ref = copy.deepcopy(model)
    ref_arch = ref.arch_parameters()
    opt = torch.optim.Adam(ref_arch, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    w_before = [p.detach().clone() for p in _weights(model)]
    grads_seq = []
    for seed in (1, 2):
        xt, yt = _batch(100 + seed, dtype=torch.float64)
        xv, yv = _batch(seed, dtype=torch.float64)
        m.arch_step((xt, yt), (xv, yv))
        loss = F.cross_entropy(ref(xv), yv)
        g = torch.autograd.grad(loss, ref_arch)
        grads_seq.append([t.clone() for t in g])
        for a, t in zip(ref_arch, g):
            a.grad = t
        opt.step()
        for got, exp in zip(model.arch_parameters(), ref_arch):
            torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    # The arch step leaves the weights alone and the update actually moved α.
    for p, w in zip(_weights(model), w_before):
        assert torch.equal(p, w)
    # Closed-form Adam (independent of torch.optim) agrees as well.
    torch.manual_seed(0)
    fresh = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=3, backend="eager").double()
    manual = _adam_reference(fresh.arch_parameters(), grads_seq)
    for got, exp in zip(model.arch_parameters(), manual):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    assert not torch.equal(model.arch_parameters()[0], fresh.arch_parameters()[0])


@pytest.mark.parametrize("clip", [5.0, 1e-2])
def test_weight_step_is_clipped_sgd_momentum(clip):
    # float64: the method's gradient norm (clip_grad_norm_) and the one below sum in other orders.
    model, m = _make(Darts, w_grad_clip=clip, dtype=torch.float64)
    assert m.hp["w_grad_clip"] == clip
    ref = copy.deepcopy(model)
    ref_w = _weights(ref)
    lr, mu, wd = m.lr, 0.9, 3e-4
    bufs = None
    norms = []
    for seed in (1, 2):
        x, y = _batch(seed, dtype=torch.float64)
        arch_before = [a.detach().clone() for a in model.arch_parameters()]
        out = m.weight_step(x, y)
        for a, b in zip(model.arch_parameters(), arch_before):
            assert torch.equal(a, b)
        loss = F.cross_entropy(ref(x), y)
        assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-12)
        grads = torch.autograd.grad(loss, ref_w)
        total = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
        norms.append(total)
        coef = min(1.0, clip / (total + 1e-6))
        with torch.no_grad():
            d = [g * coef + wd * p for g, p in zip(grads, ref_w)]
            bufs = d if bufs is None else [mu * b + dd for b, dd in zip(bufs, d)]
            for p, b in zip(ref_w, bufs):
                p.sub_(lr * b)
        for got, exp in zip(_weights(model), ref_w):
            torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
        assert out["count"].item() == 4
    if clip < 1:
        assert min(norms) > clip  # clipping was active
    # (with clip=5 the tiny net's gradient may or may not exceed the threshold; both paths are covered)


# ------------------------------------------------------------------------------------------ second order


def _set_weights(params, values):
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _second_order_setup(monkeypatch):
    model, m = _make(DartsSecondOrder, method="darts", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in list(model.parameters()) + model.arch_parameters())
    # One weight step first, so the momentum buffer is non-zero.
    m.weight_step(*_batch(7, dtype=torch.float64))
    assert all(m.w_optim.state[p]["momentum_buffer"].abs().sum() > 0 for p in _weights(model)[:3])
    monkeypatch.setattr(m.a_optim, "step", lambda *a, **k: None)
    return model, m


def _expected_second_order(model, m, train, valid):
    """quark0 architect.py ``_backward_step_unrolled`` written out on an independent copy."""
    (xt, yt), (xv, yv) = train, valid
    ref = copy.deepcopy(model)
    ref_w, ref_a = _weights(ref), ref.arch_parameters()
    mom = [m.w_optim.state[p]["momentum_buffer"].clone() for p in _weights(model)]
    xi, mu, wd = m.lr, m.hp["w_momentum"], m.hp["w_weight_decay"]
    # w' = w − ξ(μm + ∇_w L_tr + λw): forward on the original (its BN statistics update, as quark0).
    g_w = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_w)
    w_prime = [p.detach() - xi * (mu * b + g + wd * p.detach()) for p, b, g in zip(ref_w, mom, g_w)]
    # The unrolled model: a copy holding w' (BN buffers copied, then thrown away).
    virt = copy.deepcopy(ref)
    _set_weights(_weights(virt), w_prime)
    lv = F.cross_entropy(virt(xv), yv)
    grads = torch.autograd.grad(lv, virt.arch_parameters() + _weights(virt))
    d_alpha, v = grads[: len(ref_a)], grads[len(ref_a):]
    eps = 0.01 / torch.cat([t.reshape(-1) for t in v]).norm()
    w0 = [p.detach().clone() for p in ref_w]
    _set_weights(ref_w, [p + eps * t for p, t in zip(w0, v)])
    g_plus = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_a)
    _set_weights(ref_w, [p - eps * t for p, t in zip(w0, v)])
    g_minus = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_a)
    _set_weights(ref_w, w0)
    g = [d - xi * (gp - gm) / (2 * eps) for d, gp, gm in zip(d_alpha, g_plus, g_minus)]
    return g, ref, v, d_alpha


def test_second_order_arch_gradient_matches_explicit_unrolling(monkeypatch):
    model, m = _second_order_setup(monkeypatch)
    train, valid = _batch(11, dtype=torch.float64), _batch(12, dtype=torch.float64)
    expected, ref, _, d_alpha = _expected_second_order(model, m, train, valid)
    w_before = [p.detach().clone() for p in _weights(model)]
    arch_before = [a.detach().clone() for a in model.arch_parameters()]
    bn_before = _bn_buffers(model)
    m.arch_step(train, valid)
    got = [a.grad for a in model.arch_parameters()]
    for g, e, d in zip(got, expected, d_alpha):
        assert g is not None and g.dtype == torch.float64
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
        assert not torch.allclose(g, d)  # the implicit term is not negligible here
    # a_optim.step was a no-op: α unchanged; the weights are restored bit for bit.
    for a, b in zip(model.arch_parameters(), arch_before):
        assert torch.equal(a, b)
    for p, w in zip(_weights(model), w_before):
        assert torch.equal(p, w)
    # BN statistics: exactly the three forwards quark0 runs on the original model (at w, w+εv,
    # w−εv); the unrolled model's forward on the validation batch leaves no trace.
    bn_after = _bn_buffers(model)
    for got_b, exp_b in zip(bn_after, _bn_buffers(ref)):
        torch.testing.assert_close(got_b, exp_b, rtol=1e-10, atol=1e-12)
    counts_before = [t for t in bn_before if t.dtype == torch.long]
    counts_after = [t for t in bn_after if t.dtype == torch.long]
    assert counts_before and all(int(a) - int(b) == 3 for a, b in zip(counts_after, counts_before))


def test_second_order_full_step_applies_adam():
    model, m = _make(DartsSecondOrder, dtype=torch.float64)
    m.weight_step(*_batch(7, dtype=torch.float64))
    train, valid = _batch(11, dtype=torch.float64), _batch(12, dtype=torch.float64)
    expected, _, _, _ = _expected_second_order(model, m, train, valid)
    arch0 = [a.detach().clone() for a in model.arch_parameters()]
    m.arch_step(train, valid)
    manual = _adam_reference(arch0, [expected])
    for got, exp in zip(model.arch_parameters(), manual):
        torch.testing.assert_close(got, exp, rtol=1e-9, atol=1e-12)


def test_finite_difference_hvp_matches_double_backward(monkeypatch):
    # A central difference is only as good as the loss is smooth along the probe: with ReLU and
    # max-pool kinks inside the ±0.01 probe of quark0's ε = 0.01/‖v‖ the difference jumps (the
    # relative error is O(1) on this tiny net). The formula under test does not depend on the
    # activation, so the probe runs on a smooth twin: SiLU for every ReLU, no max-pool candidate.
    silu = F.silu
    monkeypatch.setattr(torch.nn.functional, "relu", lambda x, inplace=False: silu(x))
    torch.manual_seed(0)
    prims = ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3")
    model = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=3, backend="eager",
                                     primitives=prims).double()
    m = DartsSecondOrder(model, DartsSecondOrder.resolve_hyper({}))
    m.begin_epoch(0)
    m.weight_step(*_batch(7, dtype=torch.float64))
    monkeypatch.setattr(m.a_optim, "step", lambda *a, **k: None)
    xt, yt = _batch(11, dtype=torch.float64)
    _, _, v_val, _ = _expected_second_order(model, m, (xt, yt), _batch(12, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    v_rand = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in _weights(model)]
    ref = copy.deepcopy(model)
    ref_w, ref_a = _weights(ref), ref.arch_parameters()

    def exact_hvp(v):  # ∇_α ⟨∇_w L_tr(w, α), v⟩ by double backward on an independent copy
        g_w = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_w, create_graph=True)
        return torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_w, v)), ref_a)

    def central(v, r):  # own central difference with probe length r
        eps = r / torch.cat([t.reshape(-1) for t in v]).norm()
        w0 = [p.detach().clone() for p in ref_w]
        _set_weights(ref_w, [p + eps * t for p, t in zip(w0, v)])
        gp = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_a)
        _set_weights(ref_w, [p - eps * t for p, t in zip(w0, v)])
        gm = torch.autograd.grad(F.cross_entropy(ref(xt), yt), ref_a)
        _set_weights(ref_w, w0)
        return [(a - b) / (2 * eps) for a, b in zip(gp, gm)]

    def rel(a, b):
        return max(((x - y).norm() / y.norm()).item() for x, y in zip(a, b))

    w_before = [p.detach().clone() for p in _weights(model)]
    # A random direction: the method's ε = 0.01/‖v‖ gives ~1e-5 relative error.
    exact = exact_hvp(v_rand)
    assert all(e.norm() > 0 for e in exact)
    fd = m.hessian_vector_product(list(v_rand), xt, yt)
    assert rel(fd, exact) < 1e-4, f"finite-difference HVP off by {rel(fd, exact):.2e} (relative)"
    # The direction the method really uses (v = ∇_w' L_val) is more curved: the error is the O(ε²)
    # truncation of a central difference, ~100x smaller at a 10x shorter probe.
    exact = exact_hvp(v_val)
    fd = m.hessian_vector_product(list(v_val), xt, yt)
    err = rel(fd, exact)
    assert err < 1e-2
    assert rel(central(v_val, 0.01), exact) == pytest.approx(err, rel=1e-3)
    assert 30 < err / rel(central(v_val, 0.001), exact) < 300
    for p, w in zip(_weights(model), w_before):
        assert torch.equal(p, w)
    # The classic bug (p − n)/2·ε is off by a factor 4ε², far outside any of these tolerances.
    eps = 0.01 / torch.cat([t.reshape(-1) for t in v_val]).norm()
    assert rel([f * eps * eps for f in fd], exact) > 0.5
    # And the full second-order gradient of this smooth twin still matches the explicit unrolling.
    expected, _, _, _ = _expected_second_order(model, m, (xt, yt), _batch(12, dtype=torch.float64))
    m.arch_step((xt, yt), _batch(12, dtype=torch.float64))
    for a, e in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(a.grad, e, rtol=1e-9, atol=1e-12)


def test_exact_hvp_reference_is_sound_on_the_real_ops():
    """Double backward through the real (ReLU, max-pool) supernet agrees with a central difference
    at a probe small enough to cross no kink: the ground truth above is trustworthy."""
    torch.manual_seed(0)
    model = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=3, backend="eager").double()
    W, A = _weights(model), model.arch_parameters()
    xt, yt = _batch(11, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in W]
    g_w = torch.autograd.grad(F.cross_entropy(model(xt), yt), W, create_graph=True)
    exact = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g_w, v)), A)
    eps = 1e-5 / torch.cat([t.reshape(-1) for t in v]).norm()
    w0 = [p.detach().clone() for p in W]
    _set_weights(W, [p + eps * t for p, t in zip(w0, v)])
    gp = torch.autograd.grad(F.cross_entropy(model(xt), yt), A)
    _set_weights(W, [p - eps * t for p, t in zip(w0, v)])
    gm = torch.autograd.grad(F.cross_entropy(model(xt), yt), A)
    _set_weights(W, w0)
    for a, b, e in zip(gp, gm, exact):
        torch.testing.assert_close((a - b) / (2 * eps), e, rtol=1e-6, atol=1e-6 * e.abs().max().item())


# ------------------------------------------------------------------------------------------ PC-DARTS


def test_pcdarts_arch_frozen_during_warmup():
    model, m = _make(PCDarts, method="pcdarts", arch_warmup=1)
    assert PCDarts.resolve_hyper({})["arch_warmup"] == 15  # paper default
    assert len(model.arch_parameters()) == 4  # α_normal, α_reduce, β_normal, β_reduce
    arch0 = [a.detach().clone() for a in model.arch_parameters()]
    w0 = [p.detach().clone() for p in _weights(model)]
    m.begin_epoch(0)
    for s in range(2):
        out = m.step(_batch(20 + s), _batch(30 + s), s)
        assert "arch_loss" not in out
    for a, b in zip(model.arch_parameters(), arch0):
        assert torch.equal(a, b)
    assert any(not torch.equal(p, w) for p, w in zip(_weights(model), w0))  # weights did train
    m.begin_epoch(1)
    out = m.step(_batch(40), _batch(41), 0)
    assert "arch_loss" in out
    for a, b in zip(model.arch_parameters(), arch0):
        assert not torch.equal(a, b)  # α and β both move once the warm-up is over
