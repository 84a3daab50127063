"""Sampled gates (fastdarts.gates): PR-DARTS hard-concrete, DropNAS masks, GDAS Gumbel, and their kernels.

Statistical checks use fixed seeds and a 4σ tolerance from the binomial (or bounded-variable)
standard deviation of the sample size. The Triton gate kernels run under TRITON_INTERPRET=1 on CPU.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastdarts  # noqa: E402
from fastdarts import gates as G  # noqa: E402
from fastdarts.functional import gated_mixed_sum  # noqa: E402
from fastdarts.gated import GatedMixedOp  # noqa: E402
from fastdarts.mixed import MixedOp  # noqa: E402
from fastdarts.ops import DARTS_PRIMITIVES  # noqa: E402

E, K = 14, 8



def _within(p_hat, p, n, sigmas=4.0):
    """|p̂ − p| ≤ 4·sqrt(p(1−p)/n) (+ a tiny floor for p ≈ 0 or 1)."""
    tol = sigmas * torch.sqrt(p * (1 - p) / n) + 1e-3
    bad = (p_hat - p).abs() > tol
    assert not bad.any(), f"empirical {p_hat[bad]} vs expected {p[bad]} (tol {tol[bad]}, n={n})"


def _assert_within(name, got, exp, bound):
    """Every |got − exp| (in float64) within the elementwise ``bound``."""
    err = (got.double() - exp.double()).abs()
    bad = err > bound
    assert not bad.any(), f"{name}: error {err[bad].tolist()[:4]} over the bound {bound[bad].tolist()[:4]}"


def _logits(seed=0, shape=(E, K), scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g)


# ----------------------------------------------------------------------------------- PR-DARTS gates


@pytest.mark.parametrize("tau", [1.0, 0.4])
def test_hard_concrete_closed_forms(tau):
    A = torch.linspace(-3, 3, 13)
    n = 20000
    u = torch.rand(n, A.numel(), generator=torch.Generator().manual_seed(1)).clamp(G.UNIFORM_EPS, 1 - G.UNIFORM_EPS)
    z = G.hard_concrete_from_uniforms(A, tau, u)
    _within((z != 0).double().mean(0), G.hard_concrete_prob_nonzero(A, tau).double(), n)
    _within((z == 1).double().mean(0), G.hard_concrete_prob_one(A, tau).double(), n)
    torch.testing.assert_close(G.hard_concrete_prob_zero(A, tau), 1 - G.hard_concrete_prob_nonzero(A, tau))
    # P(z = 0) = σ(τ·log(−a/b) − A); with a = −0.1, b = 1.1: log(1/11) = −2.3979.
    torch.testing.assert_close(G.hard_concrete_prob_zero(A, tau), torch.sigmoid(-2.397895 * tau - A))
    # E[z] by quadrature over u (midpoint rule, 2e5 points) vs the sample mean (z ∈ [0, 1]: σ ≤ 0.5/√n).
    grid = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    ez = G.hard_concrete_from_uniforms(A.double(), tau, grid[:, None]).mean(0)
    assert ((z.double().mean(0) - ez).abs() < 4 * 0.5 / math.sqrt(n)).all()
    assert (ez[1:] > ez[:-1]).all()  # E[z] grows with A
    assert (G.hard_concrete_prob_one(A, tau) <= ez.float() + 1e-6).all()
    assert (ez.float() <= G.hard_concrete_prob_nonzero(A, tau) + 1e-6).all()


def test_mixing_gate_frequencies_match_closed_form():
    A = _logits(2, scale=1.0)
    mix = G.HardConcreteMixing(seed=3, tau=0.7, dropout=0.4)
    n = 1500
    nonzero = torch.zeros(E, K)
    for _ in range(n):
        mix.all_cell_weights({"normal": (A, None)}, 4)
        nonzero += (mix.last["normal"].z != 0).float()
    _within(nonzero.double() / n, G.hard_concrete_prob_nonzero(A, 0.7).double(), n)


def test_hard_concrete_mask_and_straight_through():
    A = _logits(4).requires_grad_(True)
    B = _logits(5).requires_grad_(True)
    mix = G.HardConcreteMixing(seed=11, tau=0.6)
    cws = mix.all_cell_weights({"normal": (A, None), "reduce": (B, None)}, 4)
    for kind, alpha, stream in (("normal", A, 0), ("reduce", B, 1)):
        cw, s = cws[kind], mix.last[kind]
        assert all(len(a) == 2 for a in cw.active)
        m = torch.zeros(E, K)
        for e, act in enumerate(cw.active):
            m[e, list(act)] = 1
        assert torch.equal(s.keep, m.bool())
        # h = m − z.detach() + z: two fp32 roundings of numbers ≤ 2 in size, |h − m| ≤ 2·eps ≈ 2.4e-7.
        torch.testing.assert_close(cw.weights.detach(), m, atol=1e-6, rtol=0)  # value of h = mask
        # The gates come from GateRNG(seed) at counter 0, stream = cell type: recompute them.
        rng = G.GateRNG(11)
        u = torch.rand(E, K, generator=rng.generator("cpu", 16 * stream)).clamp(G.UNIFORM_EPS, 1 - G.UNIFORM_EPS)
        z_ref = G.hard_concrete_from_uniforms(alpha, 0.6, u)
        torch.testing.assert_close(s.z, z_ref.detach(), rtol=0, atol=0)
        assert s.z.grad_fn is None  # `last` is detached (the supernet stays deep-copyable)
        # Gradient of h is dz/dA (straight-through); here against autograd through the reference.
        c = torch.randn(E, K, generator=torch.Generator().manual_seed(stream))
        (g_h,) = torch.autograd.grad((cw.weights * c).sum(), alpha, retain_graph=True)
        (g_z,) = torch.autograd.grad((z_ref * c).sum(), alpha)
        torch.testing.assert_close(g_h, g_z)
        # ...and against the closed form (b−a)·s(1−s)/τ inside (0, 1), 0 where clamped.
        s_ = torch.sigmoid((alpha.detach() + u.log() - (1 - u).log()) / 0.6)
        inside = (z_ref > 0) & (z_ref < 1)
        torch.testing.assert_close(g_h, torch.where(inside, c * 1.2 * s_ * (1 - s_) / 0.6, torch.zeros(())))
    assert mix.rng.counter == 1  # one counter step per forward (both cell types)


def test_topk_ties_follow_the_permutation_and_dropout_sinks_gates():
    z = torch.ones(3, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    m = G.select_topk_gates(z, torch.zeros(3, 5), perm, 2)
    assert torch.equal(m, torch.zeros(3, 5).index_fill(1, torch.tensor([3, 0]), 1.0))
    drop = torch.zeros(3, 5)
    drop[:, 3] = 1  # dropped: 1 − 1 = 0 < the kept ones
    m = G.select_topk_gates(z, drop, perm, 2)
    assert torch.equal(m, torch.zeros(3, 5).index_fill(1, torch.tensor([0, 4]), 1.0))


# ----------------------------------------------------------------------------------- DropNAS masks


def test_dropnas_keep_rate_and_group_survival():
    r = 0.1
    p = r ** 0.25  # 0.562
    mix = G.DropNASMixing(drop_rate=r, seed=5)
    A = _logits(6, scale=0.5)
    groups = torch.tensor(G.dropnas_group_ids(DARTS_PRIMITIVES))
    n, kept = 500, torch.zeros(2)
    for _ in range(n):
        cw = mix.all_cell_weights({"normal": (A, None)}, 4)["normal"]
        keep = mix.last["normal"].keep
        for g in (0, 1):
            per_edge = keep[:, groups == g].sum(1)
            assert (per_edge >= 1).all(), "every edge keeps at least one op of each group"
            kept[g] += per_edge.sum()
        w = cw.weights.detach()
        torch.testing.assert_close(w.sum(1), torch.ones(E))
        assert (w[~keep] == 0).all()
        expected = torch.exp(A) * keep / (torch.exp(A) * keep).sum(1, keepdim=True)
        torch.testing.assert_close(w, expected)
        assert [tuple(torch.nonzero(row).flatten().tolist()) for row in keep] == cw.active
    # Keep rate given "not all 4 dropped" (the redraw): (1 − p)/(1 − p⁴) = (1 − p)/(1 − r) = 0.487.
    # Per (edge, group) the kept fraction lies in [1/4, 1], so its std is ≤ 3/8.
    rate = kept / (n * E * 4)
    tol = 4 * 0.375 / math.sqrt(n * E)
    assert ((rate - (1 - p) / (1 - r)).abs() < tol).all(), rate
    assert (rate - (1 - p)).abs().min() > 0.03  # and not the unconditional 1 − p


def test_dropnas_separate_rates_and_no_drop():
    A = _logits(7)
    groups = torch.tensor(G.dropnas_group_ids(DARTS_PRIMITIVES))
    mix = G.DropNASMixing(drop_rate=(0.3, 0.0), seed=1)
    seen_drop = False
    for _ in range(50):
        mix.all_cell_weights({"normal": (A, None)}, 4)
        keep = mix.last["normal"].keep
        assert keep[:, groups == 1].all()
        seen_drop |= bool((~keep[:, groups == 0]).any())
    assert seen_drop
    mix.set_drop_rate(0.0)
    cw = mix.all_cell_weights({"normal": (A, None)}, 4)["normal"]
    assert all(a == tuple(range(K)) for a in cw.active)
    torch.testing.assert_close(cw.weights, F.softmax(A, -1))


def test_dropnas_groups_are_by_name():
    # DropNAS' own order (sep3, sep5, dil3, dil5 | max, avg, skip, none) and fastdarts' give the same groups.
    assert G.dropnas_group_ids(DARTS_PRIMITIVES) == (1, 1, 1, 1, 0, 0, 0, 0)
    order = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
             "skip_connect", "none")
    assert G.dropnas_group_ids(order) == (0, 0, 0, 0, 1, 1, 1, 1)


# ----------------------------------------------------------------------------------- GDAS


def test_gumbel_one_active_and_zero_bias_with_gradients():
    A = _logits(8, scale=0.3).requires_grad_(True)
    mix = G.GumbelMixing(tau=2.0, seed=4)
    cw = mix.all_cell_weights({"normal": (A, None)}, 4)["normal"]
    assert all(len(a) == 1 for a in cw.active)
    idx = torch.tensor([a[0] for a in cw.active])
    # h = one_hot − p.detach() + p: two fp32 roundings of numbers ≤ 2, |h − 1| ≤ 2·eps ≈ 2.4e-7.
    torch.testing.assert_close(cw.weights.detach()[torch.arange(E), idx], torch.ones(E), atol=1e-6, rtol=0)
    assert torch.equal(cw.edge_bias.detach(), torch.zeros(E))  # exactly zero in value
    c = torch.randn(E, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((cw.edge_bias * c).sum(), A)
    assert (g != 0).all(), "the zero-valued bias carries gradient to every logit"
    # Reference: p = softmax((log_softmax(A) + G)/τ) with G from the same stream.
    u = torch.rand(E, K, generator=G.GateRNG(4).generator("cpu", 0)).clamp(G.UNIFORM_EPS, 1 - G.UNIFORM_EPS)
    p = F.softmax((F.log_softmax(A.detach(), -1) - torch.log(-torch.log(u))) / 2.0, -1)
    assert torch.equal(p.argmax(-1), idx)


def test_gumbel_argmax_frequencies_follow_softmax():
    A = torch.tensor([[0.0, 1.0, -1.0, 0.5, 2.0]])
    mix = G.GumbelMixing(tau=5.0, seed=0)
    n, counts = 3000, torch.zeros(5)
    for _ in range(n):
        counts[mix.all_cell_weights({"normal": (A, None)}, 1)["normal"].active[0][0]] += 1
    _within(counts.double() / n, F.softmax(A[0], -1).double(), n)


# ----------------------------------------------------------------------------------- RNG and host copies


@pytest.mark.parametrize("cls", [G.HardConcreteMixing, G.DropNASMixing, G.GumbelMixing])
def test_seeded_streams_are_reproducible(cls):
    A = _logits(9)
    kw = {"drop_rate": 0.1} if cls is G.DropNASMixing else {}

    def draws(seed, n=4):
        mix = cls(seed=seed, **kw)
        return [mix.all_cell_weights({"normal": (A, None), "reduce": (A, None)}, 4) for _ in range(n)]

    a, b, c = draws(1), draws(1), draws(2)
    for x, y in zip(a, b):
        for kind in ("normal", "reduce"):
            assert x[kind].active == y[kind].active
            assert torch.equal(x[kind].weights, y[kind].weights)
    assert [x["normal"].active for x in a] != [x["normal"].active for x in c]
    assert a[0]["normal"].active != a[1]["normal"].active  # each forward draws anew
    assert a[0]["normal"].active != a[0]["reduce"].active  # cell types have their own streams
    # The counter is state: restoring it reproduces the next draw.
    mix = cls(seed=1, **kw)
    mix.all_cell_weights({"normal": (A, None)}, 4)
    state = mix.state_dict()
    nxt = mix.all_cell_weights({"normal": (A, None)}, 4)["normal"].active
    other = cls(seed=99, **kw)
    other.load_state_dict(state)
    assert other.all_cell_weights({"normal": (A, None)}, 4)["normal"].active == nxt


def test_seed_none_follows_torch_manual_seed():
    torch.manual_seed(0)
    a = G.GateRNG().seed
    torch.manual_seed(0)
    assert G.GateRNG().seed == a


@pytest.mark.parametrize("method", ["prdarts", "dropnas", "gdas"])
def test_one_host_copy_per_forward(method, monkeypatch):
    torch.manual_seed(0)
    model = fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=3)
    if method == "dropnas":
        model.mixing.set_drop_rate(0.1)
    x = torch.randn(2, 3, 8, 8)
    calls = []
    for name in ("tolist", "cpu", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            calls.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model(x)
    model(x)
    monkeypatch.undo()
    assert calls == ["tolist", "tolist"], calls


# ----------------------------------------------------------------------------------- compute skipping


def _record_op_calls(model):
    """Forward hooks on every module inside every candidate op: records (cell, edge, op) that ran."""
    ran, handles = set(), []
    for c, cell in enumerate(model.cells):
        for e, mixed in enumerate(cell._ops):
            for k, op in enumerate(mixed._ops):
                for mod in op.modules():
                    handles.append(mod.register_forward_hook(lambda *_, key=(c, e, k): ran.add(key)))
    return ran, handles


@pytest.mark.parametrize("backend", ["auto", "eager"])
@pytest.mark.parametrize("method", ["prdarts", "dropnas", "gdas"])
def test_unselected_ops_never_run(method, backend):
    torch.manual_seed(0)
    model = fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=3, backend=backend)
    if method == "dropnas":
        model.mixing.set_drop_rate(0.3)
    ran, handles = _record_op_calls(model)
    cws = model.cell_weights()
    model(torch.randn(2, 3, 8, 8), cell_weights=cws)
    for h in handles:
        h.remove()
    allowed = {(c, e, k) for c, cell in enumerate(model.cells)
               for e, act in enumerate(cws["reduce" if cell.reduction else "normal"].active) for k in act}
    assert ran <= allowed, sorted(ran - allowed)[:5]
    if backend == "eager":
        assert ran == allowed  # and every selected op did run
    assert len(allowed) < sum(len(cell._ops) * K for cell in model.cells)


# ----------------------------------------------------------------------------------- gated sum


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_gated_mixed_sum_matches_reference(backend):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(K, generator=g, requires_grad=True)
    active = [5, 1, 6]
    xs = [torch.randn(2, 3, 5, 7, generator=g, requires_grad=True) for _ in active]
    p = F.softmax(logits, -1)
    gates = torch.zeros(K).index_fill(0, torch.tensor(active), 1.0) - p.detach() + p
    out = gated_mixed_sum(xs, gates, active, backend=backend)
    ref = sum(gates[k] * x for k, x in zip(active, xs))
    torch.testing.assert_close(out, ref)
    gy = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, [logits, *xs], gy, retain_graph=True)
    want = torch.autograd.grad(ref, [logits, *xs], gy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="active"):
        gated_mixed_sum(xs, gates, [1, 2], backend=backend)
    with pytest.raises(ValueError, match="active"):
        gated_mixed_sum(xs[:1], gates, [K], backend=backend)


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("recompute", [False, True])
def test_gated_mixed_op_equals_mixed_op_on_active(backend, recompute):
    torch.manual_seed(0)
    ref = MixedOp(4, 1, backend="eager")
    op = GatedMixedOp(4, 1, backend=backend, recompute=recompute)
    op.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 6, 6)
    logits = torch.randn(K, requires_grad=True)
    for active in ([0, 3, 6], [0], [4]):
        gates = F.softmax(logits, -1)
        y = op(x, gates, active)
        y_ref = ref(x, gates, active)
        torch.testing.assert_close(y, y_ref)
        (g1,) = torch.autograd.grad(y.sum(), logits, retain_graph=True)
        (g2,) = torch.autograd.grad(y_ref.sum(), logits)
        torch.testing.assert_close(g1, g2)
    with pytest.raises(ValueError, match="active"):
        op(x, gates)


# ----------------------------------------------------------------------------------- Triton kernels

from fastdarts.kernels import has_triton  # noqa: E402

triton_missing = not has_triton()
needs_triton = pytest.mark.skipif(triton_missing, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("n", [1, 112, 157])
def test_triton_hard_concrete_transform_matches_eager(n):
    from fastdarts.kernels import gates as kg

    # Elementwise fp32 on both sides, so the bounds follow from the formulas: each log, exp or
    # sigmoid is within c = 4 ulps (SLEEF ≤ 1, NumPy's SIMD log/exp < 4) and each +,−,×,÷ within
    # one, so two implementations differ by at most 2c·eps relative per function, propagated
    # through the formula with float64 magnitudes of the reference (no tuned constants).
    eps, c = torch.finfo(torch.float32).eps, 4
    tau, lo, hi = 0.7, G.HC_LIMIT_A, G.HC_LIMIT_B
    g = torch.Generator().manual_seed(n)
    A = (2 * torch.randn(n, generator=g)).to(DEVICE).requires_grad_(True)
    u = torch.rand(n, generator=g).clamp(G.UNIFORM_EPS, 1 - G.UNIFORM_EPS).to(DEVICE)
    z = kg.hard_concrete_triton(A, tau, u=u)
    z_ref = G.hard_concrete_from_uniforms(A, tau, u)
    a64, u64 = A.detach().double(), u.double()
    lu, l1u = u64.log(), torch.log1p(-u64)
    t = (a64 + lu - l1u) / tau
    s = torch.sigmoid(t)
    # Argument of σ: 2c·eps on each log and the sum, eps for 1−u rounded before its log (kernel).
    dt = (2 * c * eps * (a64.abs() + lu.abs() + l1u.abs()) + eps) / tau + 2 * c * eps * t.abs()
    dz = (hi - lo) * (s * (1 - s) * dt + 2 * c * eps * s) + 4 * eps
    _assert_within("z", z, z_ref, dz)
    z64 = s * (hi - lo) + lo
    assert bool(((z64.abs() > dz) & ((z64 - 1).abs() > dz)).all()), "an entry sits on a clamp kink"
    cvec = torch.randn(n, generator=g).to(DEVICE)
    (g1,) = torch.autograd.grad((z * cvec).sum(), A)
    (g2,) = torch.autograd.grad((z_ref * cvec).sum(), A)
    # dz/dA = (b−a)·s(1−s)/τ inside the clamp: 1−s is relatively off by δs/(1−s) ≤ 12·δs there
    # (z < 1 ⇒ s < 11/12), s(1−s) by ≤ 2·δt more; four roundings for the products.
    _assert_within("dz/dA", g1, g2, g2.double().abs() * (2 * dt + 12 * 2 * c * eps + 2 * c * eps + 4 * eps))
    y = -torch.log(-lu)
    gum = kg.gate_noise_triton(n, DEVICE, kg.NOISE_GUMBEL, u=u)
    _assert_within("gumbel", gum, -torch.log(-torch.log(u)), 2 * c * eps * (2 + y.abs()))
    logi = kg.gate_noise_triton(n, DEVICE, kg.NOISE_LOGISTIC, u=u)
    _assert_within("logistic", logi, torch.log(u) - torch.log1p(-u),
                   2 * c * eps * (lu.abs() + l1u.abs() + (lu - l1u).abs()) + eps)


@pytest.mark.interpreter
@needs_triton
def test_triton_seeded_draws_have_the_right_distribution():
    from fastdarts.kernels import gates as kg

    n = 20000
    A = torch.full((n,), 0.3, device=DEVICE)
    z = kg.hard_concrete_triton(A, 0.8, seed=123, offset=0)
    p = G.hard_concrete_prob_nonzero(torch.tensor([0.3]), 0.8).double()
    _within((z != 0).double().mean().cpu().view(1), p, n)
    _within((z == 1).double().mean().cpu().view(1), G.hard_concrete_prob_one(torch.tensor([0.3]), 0.8).double(), n)
    u = kg.gate_noise_triton(n, DEVICE, kg.NOISE_UNIFORM, seed=123, offset=0)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.double().mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    gum = kg.gate_noise_triton(n, DEVICE, kg.NOISE_GUMBEL, seed=7, offset=0)
    assert abs(gum.double().mean().item() - 0.5772157) < 4 * math.pi / math.sqrt(6 * n)
    assert torch.equal(u, kg.gate_noise_triton(n, DEVICE, kg.NOISE_UNIFORM, seed=123, offset=0))
    assert not torch.equal(u, kg.gate_noise_triton(n, DEVICE, kg.NOISE_UNIFORM, seed=123, offset=n))
    assert not torch.equal(u, kg.gate_noise_triton(n, DEVICE, kg.NOISE_UNIFORM, seed=124, offset=0))


@pytest.mark.interpreter
@needs_triton
@pytest.mark.parametrize("cls", [G.HardConcreteMixing, G.DropNASMixing, G.GumbelMixing])
def test_samplers_on_the_triton_path(cls):
    A = _logits(3).to(DEVICE).requires_grad_(True)
    mix = cls(seed=0, sampler="triton")
    a = mix.all_cell_weights({"normal": (A, None), "reduce": (A, None)}, 4)
    b = cls(seed=0, sampler="triton").all_cell_weights({"normal": (A, None), "reduce": (A, None)}, 4)
    for kind in ("normal", "reduce"):
        assert a[kind].active == b[kind].active
        assert all(len(x) >= 1 for x in a[kind].active)
    if cls is G.HardConcreteMixing:
        assert all(len(x) == 2 for x in a["normal"].active)
        (g,) = torch.autograd.grad(a["normal"].weights.sum(), A)
        assert torch.isfinite(g).all()
    if cls is G.GumbelMixing:
        assert all(len(x) == 1 for x in a["normal"].active)
