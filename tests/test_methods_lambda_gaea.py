"""Λ-DARTS and GAEA update rules pinned against independent hand computations.

Expected values are computed here with explicit formulas (``math.exp``), autograd of the
regularisers written out in the test, or a deep copy of the supernet driven by hand; the
method under test is never used to produce its own expectation.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts.gates import CellWeights
from fastdarts.methods import get_method
from fastdarts.methods.gaea import GaeaDarts, GaeaPCDarts
from fastdarts.methods.lambda_darts import LambdaDarts, alignment_directions, alignment_value
from fastdarts.optim import ExponentiatedGradient

# Few cheap candidates keep the DARTS-space supernets fast on a shared CPU.
SMALL_DARTS_OPS = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")



def _batch(seed, n=4, size=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def _build(space, name, layers, *, seed=0, dtype=torch.float32, epochs=3, epoch=0, **opts):
    torch.manual_seed(seed)
    hyper = {k: opts.pop(k) for k in list(opts) if k in get_method(name).DEFAULTS}
    model = fastdarts.build_supernet(space, name, C=4, num_classes=10, layers=layers, **opts)
    if dtype == torch.float64:
        model.double()
    cls = get_method(name)
    method = cls(model, cls.resolve_hyper({"epochs": epochs, **hyper}, space))
    method.begin_epoch(epoch)
    return model, method


def _weights(model):
    return [p for p in model.parameters() if p.requires_grad]


# ====================================================================================== GAEA: EG step


def _normalize_rows(rows):
    return [[v / sum(r) for v in r] for r in rows]


def test_exponentiated_gradient_by_hand():
    eta = 0.1
    p0 = [[0.5, 0.3, 0.2], [0.001, 0.499, 0.5]]
    g0 = [[1.0, -2.0, 0.5], [100.0, 0.0, -1.0]]
    alpha = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    alpha.grad = torch.tensor(g0, dtype=torch.float64)
    ExponentiatedGradient([alpha], lr=eta).step()
    # p·exp(−ηg); 0.001·e^{−10} ≈ 4.5e-8 falls under the floor and is clamped to 1e-5; renormalise.
    raw = [[p * math.exp(-eta * g) for p, g in zip(pr, gr)] for pr, gr in zip(p0, g0)]
    assert raw[1][0] < 1e-5
    clamped = [[max(v, 1e-5) for v in r] for r in raw]
    expected = _normalize_rows(clamped)
    torch.testing.assert_close(alpha.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert alpha.detach()[1, 0].item() == pytest.approx(1e-5 / sum(clamped[1]), rel=1e-12)
    torch.testing.assert_close(alpha.detach().sum(1), torch.ones(2, dtype=torch.float64))

    # clamp_first=False (GAEA EGDAS): normalise, then clamp — the row then sums to slightly more than 1.
    beta_rows = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    beta_rows.grad = torch.tensor(g0, dtype=torch.float64)
    ExponentiatedGradient([beta_rows], lr=eta, clamp_first=False).step()
    expected = [[max(v, 1e-5) for v in r] for r in _normalize_rows(raw)]
    torch.testing.assert_close(beta_rows.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert beta_rows.detach()[1].sum().item() > 1.0


def test_exponentiated_gradient_kl_weight_by_hand():
    eta, kappa = 0.1, 0.01
    p0, g0 = [0.5, 0.3, 0.2], [1.0, -2.0, 0.5]
    alpha = torch.tensor([p0], dtype=torch.float64, requires_grad=True)
    alpha.grad = torch.tensor([g0], dtype=torch.float64)
    ExponentiatedGradient([alpha], lr=eta, kl_weight=kappa).step()
    # ∂/∂p Σ p·log(K·p) = log(K·p) + 1 with K = 3.
    raw = [p * math.exp(-eta * (g + kappa * (math.log(3 * p) + 1))) for p, g in zip(p0, g0)]
    expected = [v / sum(raw) for v in raw]
    torch.testing.assert_close(alpha.detach(), torch.tensor([expected], dtype=torch.float64), rtol=1e-12, atol=0)


def test_exponentiated_gradient_node_groups_by_hand():
    eta = 0.1
    b0 = [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]
    g0 = [1.0, 0.0, 0.5, -0.5, 200.0]
    groups = [(0, 2), (2, 5)]
    beta = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    beta.grad = torch.tensor(g0, dtype=torch.float64)
    ExponentiatedGradient([{"params": [beta], "groups": groups}], lr=eta).step()
    raw = [max(b * math.exp(-eta * g), 1e-5) for b, g in zip(b0, g0)]  # entry 4: e^{-20}/3 → floor
    expected = [v / sum(raw[s:e]) for s, e in groups for v in raw[s:e]]
    torch.testing.assert_close(beta.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    for s, e in groups:
        assert beta.detach()[s:e].sum().item() == pytest.approx(1.0)
    # GAEA PC-DARTS' β group: no floor (min_value=0), only the per-node renormalisation.
    beta2 = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    beta2.grad = torch.tensor(g0, dtype=torch.float64)
    ExponentiatedGradient([beta2], lr=eta, min_value=0.0, groups=groups).step()
    raw = [b * math.exp(-eta * g) for b, g in zip(b0, g0)]
    expected = [v / sum(raw[s:e]) for s, e in groups for v in raw[s:e]]
    torch.testing.assert_close(beta2.detach(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="1-D"):
        bad = torch.ones(2, 3, requires_grad=True)
        bad.grad = torch.ones(2, 3)
        ExponentiatedGradient([bad], groups=groups).step()


# ====================================================================================== GAEA: methods


def test_gaea_defaults_and_schedule():
    hp = GaeaDarts.resolve_hyper({})
    assert hp["alpha_lr"] == 0.1 and hp["alpha_weight_decay"] == 0.0 and hp["lr_schedule_offset"] == 0
    assert hp["w_lr"] == 0.025 and hp["w_lr_min"] == 0.001 and hp["epochs"] == 50
    hp201 = GaeaDarts.resolve_hyper({}, "nb201")
    assert hp201["epochs"] == 25 and hp201["scheduler_epochs"] == 50 and hp201["w_nesterov"] is False
    assert hp201["w_weight_decay"] == 3e-4
    pc = GaeaPCDarts.resolve_hyper({})
    assert pc["w_lr"] == 0.1 and pc["w_lr_min"] == 0.0 and pc["beta_lr"] == 0.1 and pc["arch_warmup"] == 0
    assert get_method("gaea") is GaeaDarts and get_method("gaea_pcdarts") is GaeaPCDarts

    _, m = _build("nb201", "gaea", 1, epochs=25, scheduler_epochs=50)
    assert m.lr_at(0) == pytest.approx(0.025)
    assert m.lr_at(24) == pytest.approx(0.001 + 0.024 * 0.5 * (1 + math.cos(math.pi * 24 / 50)), rel=1e-12)
    assert m.lr_at(24) == pytest.approx(0.0138, abs=1e-4)
    m.hp["scheduler_epochs"] = None  # T_s defaults to the number of epochs
    assert m.lr_at(24) == pytest.approx(0.001 + 0.024 * 0.5 * (1 + math.cos(math.pi * 24 / 25)), rel=1e-12)
    # Past T_s GAEA's CosinePowerAnnealing restarts at half the peak.
    m.hp["scheduler_epochs"] = 10
    assert m.lr_at(10) == pytest.approx(0.0125)


def test_gaea_darts_arch_step_by_hand():
    model, m = _build("darts", "gaea", 3, primitives=SMALL_DARTS_OPS, dtype=torch.float64, backend="eager")
    K = len(SMALL_DARTS_OPS)
    for a in model.arch_parameters():
        torch.testing.assert_close(a.detach(), torch.full_like(a, 1.0 / K))
    # Push the α rows apart first so the check is not at the uniform point.
    with torch.no_grad():
        model.alphas_normal.copy_(torch.softmax(torch.randn(14, K, dtype=torch.float64), -1))
    ref = copy.deepcopy(model)
    xv, yv = _batch(1, dtype=torch.float64)
    loss = F.cross_entropy(ref(xv), yv)
    grads = torch.autograd.grad(loss, ref.arch_parameters())
    expected = []
    for a, g in zip(ref.arch_parameters(), grads):
        new = (a.detach() * torch.exp(-0.1 * g)).clamp(min=1e-5)
        expected.append(new / new.sum(-1, keepdim=True))
    m.arch_step(None, (xv, yv))
    for a, e in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(a.detach(), e, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a.detach().sum(-1), torch.ones(a.shape[0], dtype=torch.float64))
        assert (a.detach() >= 1e-5).all()


def test_gaea_pcdarts_arch_step_keeps_nodes_normalised():
    model, m = _build("darts", "gaea_pcdarts", 3, primitives=SMALL_DARTS_OPS, dtype=torch.float64,
                      backend="eager")
    assert model.arch_names() == ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]
    slices = [(0, 2), (2, 5), (5, 9), (9, 14)]
    for b in (model.betas_normal, model.betas_reduce):  # 1/(inputs of the node)
        init = torch.cat([torch.full((e - s,), 1.0 / (e - s), dtype=torch.float64) for s, e in slices])
        torch.testing.assert_close(b.detach(), init)
    assert m.a_optim.param_groups[1]["groups"] == slices and m.a_optim.param_groups[1]["lr"] == 0.1
    ref = copy.deepcopy(model)
    xv, yv = _batch(2, dtype=torch.float64)
    grads = torch.autograd.grad(F.cross_entropy(ref(xv), yv), ref.arch_parameters())
    beta_g = grads[2]
    raw = ref.betas_normal.detach() * torch.exp(-0.1 * beta_g)
    expected_beta = torch.cat([raw[s:e] / raw[s:e].sum() for s, e in slices])
    m.step(_batch(3, dtype=torch.float64), (xv, yv), 0)  # epoch 0: no warm-up, α/β move at once
    torch.testing.assert_close(model.betas_normal.detach(), expected_beta, rtol=1e-10, atol=1e-12)
    for b in (model.betas_normal, model.betas_reduce):
        for s, e in slices:
            assert b.detach()[s:e].sum().item() == pytest.approx(1.0, abs=1e-12)
    for a in (model.alphas_normal, model.alphas_reduce):
        torch.testing.assert_close(a.detach().sum(-1), torch.ones(14, dtype=torch.float64))
        assert not torch.allclose(a.detach(), torch.full_like(a, 1.0 / len(SMALL_DARTS_OPS)))
    # The genotype ranks α·β with the DARTS rule.
    g = model.genotype()
    assert len(g.normal) == 8 and len(g.reduce) == 8


# ====================================================================================== Λ-DARTS: terms


def _cosine_lambda(gs):
    L = len(gs)
    c = 1.0 / (L * (L - 1) / 2)
    return c * sum(F.cosine_similarity(gs[i].reshape(-1), gs[j].reshape(-1), dim=0)
                   for i in range(L) for j in range(i + 1, L))


def _sign_lambda(gs):
    L = len(gs)
    c = 1.0 / (L * (L - 1) / 2)
    return c * sum((gs[i] * gs[j]).sum() / (gs[i].abs() * gs[j].abs()).sum() for i in range(L) for j in range(i + 1, L))


@pytest.mark.parametrize("L", [2, 3])
def test_corr_direction_is_derivative_of_cosine(L):
    torch.manual_seed(L)
    gs = [torch.randn(2, 2, dtype=torch.float64) for _ in range(L)]
    d = alignment_directions(gs, "corr")
    leaves = [g.clone().requires_grad_(True) for g in gs]
    expected = torch.autograd.grad(_cosine_lambda(leaves), leaves)
    for a, b in zip(d, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert alignment_value(gs, "corr").item() == pytest.approx(_cosine_lambda(gs).item(), rel=1e-12)
    # Two cells: c = 1 and d_1 = (I − u_1u_1ᵀ)u_2/‖g_1‖ by hand.
    if L == 2:
        g1, g2 = gs[0].reshape(-1), gs[1].reshape(-1)
        u1, u2 = g1 / g1.norm(), g2 / g2.norm()
        torch.testing.assert_close(d[0].reshape(-1), (u2 - u1 * (u1 @ u2)) / g1.norm())


@pytest.mark.parametrize("L", [2, 4])
def test_signcorr_direction_is_derivative_of_sign_alignment(L):
    torch.manual_seed(10 + L)
    gs = [torch.randn(2, 2, dtype=torch.float64) for _ in range(L)]  # no exact zeros: |·| is differentiable
    d = alignment_directions(gs, "signcorr")
    leaves = [g.clone().requires_grad_(True) for g in gs]
    expected = torch.autograd.grad(_sign_lambda(leaves), leaves)
    for a, b in zip(d, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert alignment_value(gs, "signcorr").item() == pytest.approx(_sign_lambda(gs).item(), rel=1e-12)


def test_alignment_degenerate_inputs():
    z = torch.zeros(2, 2)
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    for kind in ("corr", "signcorr"):
        d = alignment_directions([z, g, -g], kind)
        assert all(torch.isfinite(t).all() for t in d)
        assert torch.equal(d[0], torch.zeros(2, 2))  # a zero gradient gets no direction
        assert [t.abs().sum().item() for t in alignment_directions([g], kind)] == [0.0]
    with pytest.raises(ValueError, match="corr_type"):
        alignment_directions([g, g], "cosine")


def test_lambda_ramp_and_defaults():
    hp = LambdaDarts.resolve_hyper({})
    assert hp["lambda_"] == 0.125 and hp["epsilon"] == 1e-4 and hp["corr_type"] == "corr"
    assert hp["lr_schedule_offset"] == 0 and hp["alpha_lr"] == 3e-4
    assert LambdaDarts.valid_sampling == "iterate"
    hp201 = LambdaDarts.resolve_hyper({}, "nb201")
    assert hp201["lambda_"] == 0.25 and hp201["alpha_lr"] == 1e-4 and hp201["epochs"] == 100
    # method_options reach the method through resolve_hyper (search.py routes keys found in DEFAULTS).
    assert {"lambda_", "epsilon", "corr_type"} <= set(LambdaDarts.DEFAULTS)
    hp = LambdaDarts.resolve_hyper({"lambda_": 0.5, "corr_type": "signcorr", "epsilon": 1e-3})
    assert (hp["lambda_"], hp["corr_type"], hp["epsilon"]) == (0.5, "signcorr", 1e-3)

    _, m = _build("nb201", "lambda_darts", 1, epochs=11, lambda_=0.5)
    for e in (0, 1, 5, 10):
        m.begin_epoch(e)
        assert m.lambda_t == pytest.approx(0.5 * e / 10)
    assert m.valid_sampling == "random"  # NAS-Bench-201 code pairs samples at random (D-X-Y)
    with pytest.raises(ValueError, match="corr_type"):
        _build("nb201", "lambda_darts", 1, corr_type="cos")
    with pytest.warns(UserWarning, match="at least 2"):
        _build("darts", "lambda_darts", 3, primitives=SMALL_DARTS_OPS)


# ====================================================================================== Λ-DARTS: model


def test_per_cell_gradients_sum_to_shared_gradient():
    model, m = _build("darts", "lambda_darts", 5, primitives=SMALL_DARTS_OPS, dtype=torch.float64,
                      backend="eager")
    assert m.kinds == ["normal", "reduce", "normal", "reduce", "normal"] and m.num_regularised == 3
    x, y = _batch(4, dtype=torch.float64)
    _, _, _, g_cells = m.per_cell_gradients(x, y)
    assert len(g_cells) == 3 and all(g.shape == (14, len(SMALL_DARTS_OPS)) for g in g_cells)
    with torch.no_grad():
        pn = F.softmax(model.alphas_normal, -1)
        pr = F.softmax(model.alphas_reduce, -1)
    W = pn.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x, cell_weights={"normal": CellWeights(W), "reduce": CellWeights(pr)}), y)
    (g_shared,) = torch.autograd.grad(loss, [W])
    torch.testing.assert_close(sum(g_cells), g_shared, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(g_cells[0], g_cells[1])  # the cells really see different gradients


@pytest.mark.parametrize("corr_type", ["corr", "signcorr"])
def test_finite_difference_matches_double_backward(corr_type):
    model, m = _build("nb201", "lambda_darts", 1, dtype=torch.float64, backend="eager", corr_type=corr_type)
    x, y = _batch(5, dtype=torch.float64)
    _, _, _, g_cells = m.per_cell_gradients(x, y)
    r = m.alignment_gradient(x, y, g_cells)
    # −∇_w Λ by double backward: Λ as a function of w through g_ℓ(w) = ∂L/∂W_ℓ.
    W = F.softmax(model.alphas.detach(), -1)
    leaves = [W.clone().requires_grad_(True) for _ in range(3)]
    loss = F.cross_entropy(model(x, cell_weights=[CellWeights(t) for t in leaves]), y)
    gs = torch.autograd.grad(loss, leaves, create_graph=True)
    lam = _cosine_lambda(gs) if corr_type == "corr" else _sign_lambda(gs)
    weights = _weights(model)
    exact = torch.autograd.grad(lam, weights, allow_unused=True)
    num = sum(((a + (0 if b is None else b)) ** 2).sum() for a, b in zip(r, exact))
    den = sum((b ** 2).sum() for b in exact if b is not None)
    assert den > 0
    assert (num / den).sqrt().item() < 1e-5


def _sgd_first_step(params, grads, lr, wd, clip):
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    coef = min(1.0, clip / (total.item() + 1e-6))
    return [p.detach() - lr * (g * coef + wd * p.detach()) for p, g in zip(params, grads)]


def test_lambda_weight_step_by_hand():
    """One weight step at epoch 2 of 3 (λ_t = λ): ∇L + λ_t(G+ − G−)/(2ε), clip 5, SGD — redone by hand."""
    model, m = _build("nb201", "lambda_darts", 1, dtype=torch.float64, backend="eager", epochs=3, epoch=2,
                      lambda_=0.5, epsilon=1e-3)
    assert m.lambda_t == pytest.approx(0.5)
    ref = copy.deepcopy(model)
    x, y = _batch(6, dtype=torch.float64)
    W = F.softmax(ref.alphas.detach(), -1)
    wts = _weights(ref)

    def grads_at(cell_ws, extra=()):
        loss = F.cross_entropy(ref(x, cell_weights=[CellWeights(t) for t in cell_ws]), y)
        return torch.autograd.grad(loss, wts + list(extra))

    leaves = [W.clone().requires_grad_(True) for _ in range(3)]
    out = grads_at(leaves, leaves)
    gw, gs = out[: len(wts)], out[len(wts):]
    gl = [g.clone().requires_grad_(True) for g in gs]
    d = torch.autograd.grad(_cosine_lambda(gl), gl)
    eps = 1e-3 / torch.cat([t.reshape(-1) for t in d]).norm()
    g_plus = grads_at([W - eps * t for t in d])
    g_minus = grads_at([W + eps * t for t in d])
    full = [g + 0.5 * (gp - gm) / (2 * eps) for g, gp, gm in zip(gw, g_plus, g_minus)]
    expected = _sgd_first_step(wts, full, m.lr, 3e-4, 5.0)

    metrics = m.weight_step(x, y)
    for p, e in zip(_weights(model), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-12)
    assert metrics["grad_corr"].item() == pytest.approx(_cosine_lambda(list(gs)).item(), rel=1e-9)
    # α is untouched by the weight step.
    torch.testing.assert_close(model.alphas.detach(), ref.alphas.detach(), rtol=0, atol=0)


# ====================================================================================== smoke: 2 steps


def _two_steps(space, name, layers, recompute, **opts):
    # float64: recompute re-associates the gradient sums at the cell inputs, and Λ-DARTS divides a
    # difference of gradients by ε ≈ 1e-4/‖d‖, which turns fp32 re-association (~1e-7) into ~1e-3
    # relative differences whose size depends on the CPU's and thread count's reduction order.
    # In float64 the same amplification leaves ~1e-12, far under assert_close's float64 tolerance.
    model, m = _build(space, name, layers, recompute=recompute, epochs=3, epoch=1, dtype=torch.float64, **opts)
    metrics = [m.step(_batch(20 + s, dtype=torch.float64), _batch(40 + s, dtype=torch.float64), s)
               for s in range(2)]
    return model, metrics


CASES = [
    ("darts", "lambda_darts", 4, dict(primitives=SMALL_DARTS_OPS)),  # normal cells 0 and 3
    ("nb201", "lambda_darts", 1, dict(corr_type="signcorr")),
    ("darts", "gaea", 3, dict(primitives=SMALL_DARTS_OPS)),
    ("nb201", "gaea", 1, {}),
    ("darts", "gaea_pcdarts", 3, dict(primitives=SMALL_DARTS_OPS)),
]


@pytest.mark.parametrize("space,name,layers,opts", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_two_steps_with_and_without_recompute(space, name, layers, opts):
    plain, mp = _two_steps(space, name, layers, False, **opts)
    rec, mr = _two_steps(space, name, layers, True, **opts)
    for a, b in zip(mp, mr):
        assert set(a) == set(b)
        for k in a:
            assert torch.isfinite(a[k]).all()
            torch.testing.assert_close(a[k], b[k])
    for p, q in zip(plain.arch_parameters(), rec.arch_parameters()):
        torch.testing.assert_close(p, q)
    for p, q in zip(_weights(plain), _weights(rec)):
        torch.testing.assert_close(p, q)
    fresh, _ = _build(space, name, layers, epochs=3, dtype=torch.float64, **opts)
    assert any(not torch.equal(p, q) for p, q in zip(_weights(plain), _weights(fresh)))
    if name.startswith("gaea"):
        for a in plain.arch_parameters()[:2]:
            torch.testing.assert_close(a.detach().sum(-1), torch.ones(a.shape[0], dtype=torch.float64))
    if name == "lambda_darts":
        assert "grad_corr" in mp[0]
    plain.genotype()
