"""ExponentiatedGradient with very large steps (lr·|g| in the hundreds and beyond).

GAEA's formula ``p·exp(−lr·g)`` overflows float32 once lr·g < −88.7 and float64 once it is below
−709.8; the optimiser works in log space and must give finite rows that sum to 1 (EDARTS) or lie
in [1, 1 + K·min_value] (EGDAS: clamped after normalising). Expected values come from the naive
formula evaluated in float64 where it stays finite.
"""

import pytest
import torch

from fastdarts.optim import ExponentiatedGradient

LR = 500.0
MIN_VALUE = 1e-5
E, K = 14, 8
GROUPS = [(0, 2), (2, 5), (5, 9), (9, 14)]


def _simplex_rows(seed, shape=(E, K)):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), -1)


def _grad(seed, shape=(E, K), scale=1.0):
    """Uniform in [−scale, scale]: with scale 1, |lr·g| ≤ 500 keeps the float64 naive formula finite."""
    g = torch.Generator().manual_seed(seed)
    return scale * (2 * torch.rand(*shape, generator=g, dtype=torch.float64) - 1)


def _step(p0, g0, dtype, **kw):
    p = p0.to(dtype).clone().requires_grad_(True)
    p.grad = g0.to(dtype)
    ExponentiatedGradient([p], **kw).step()
    return p.detach()


def _naive(p0, g0, lr, clamp_first, kl_weight=0.0, groups=None):
    """GAEA's update in float64 as written (architect_edarts.py / architect_egdas.py ``normalize``)."""
    g = g0 + kl_weight * (torch.log(p0.shape[-1] * p0) + 1)
    raw = p0 * torch.exp(-lr * g)
    assert torch.isfinite(raw).all() and (raw > 0).all(), "the naive reference must not overflow or underflow"
    if clamp_first:
        raw = raw.clamp(min=MIN_VALUE)
    if groups is None:
        out = raw / raw.sum(-1, keepdim=True)
    else:
        out = torch.cat([raw[s:e] / raw[s:e].sum() for s, e in groups])
    return out if clamp_first else out.clamp(min=MIN_VALUE)


def _rtol(p0, g0, lr, dtype, n):
    """Relative error bound of the log-space result: the exponent z = log p − lr·g and the shift
    max z each carry ≤ 2ε·max|z| absolute error, so exp(z − max z) is off by ≤ 4ε·max|z| relative;
    the n-term normalisation adds ≤ 2nε. Doubled for the reference's own rounding."""
    eps = torch.finfo(dtype).eps
    zmax = (torch.log(p0) - lr * g0).abs().max().item()
    return 2 * (4 * zmax + 2 * n) * eps


def _row_sums(x, groups):
    return x.sum(-1) if groups is None else torch.stack([x[s:e].sum() for s, e in groups])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("clamp_first", [True, False], ids=["edarts", "egdas"])
@pytest.mark.parametrize("scale", [1.0, 3.0, 1e30], ids=["lr_g_500", "lr_g_1500", "lr_g_5e32"])
def test_large_steps_give_finite_rows_on_the_simplex(dtype, clamp_first, scale):
    p0, g0 = _simplex_rows(0), _grad(1, scale=scale)
    out = _step(p0, g0, dtype, lr=LR, min_value=MIN_VALUE, clamp_first=clamp_first, kl_weight=0.01)
    assert torch.isfinite(out).all()
    sums = out.double().sum(-1)
    # Each row is e_i/Σe with e_i ≤ 1 = max: K rounded quotients and a K-term sum, ≤ 2K·ε off 1.
    tol = 2 * K * torch.finfo(dtype).eps
    if clamp_first:
        assert ((sums - 1).abs() <= tol).all(), f"row sums off 1 by {(sums - 1).abs().max().item():.3g}"
    else:  # the floor is applied after normalising: 1 ≤ Σ ≤ 1 + K·min_value
        assert (out >= MIN_VALUE).all()
        assert ((sums >= 1 - tol) & (sums <= 1 + K * MIN_VALUE + tol)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("clamp_first", [True, False], ids=["edarts", "egdas"])
def test_large_step_matches_the_naive_formula(dtype, clamp_first):
    p0, g0 = _simplex_rows(2), _grad(3)
    out = _step(p0, g0, dtype, lr=LR, min_value=MIN_VALUE, clamp_first=clamp_first)
    expected = _naive(p0, g0, LR, clamp_first)
    assert torch.isfinite(out).all()
    # Entries below float32's normal range are flushed there: at most `tiny` absolute error.
    torch.testing.assert_close(out.double(), expected, rtol=_rtol(p0, g0, LR, dtype, K),
                               atol=torch.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("min_value", [MIN_VALUE, 0.0], ids=["floor", "gaea_beta"])
def test_large_step_per_node_edge_weights(dtype, min_value):
    b0 = torch.cat([torch.softmax(torch.randn(e - s, generator=torch.Generator().manual_seed(s),
                                              dtype=torch.float64), 0) for s, e in GROUPS])
    g0 = _grad(4, shape=(E,))
    out = _step(b0, g0, dtype, lr=LR, min_value=min_value, groups=GROUPS)
    assert torch.isfinite(out).all()
    sums = _row_sums(out.double(), GROUPS)
    assert ((sums - 1).abs() <= 2 * 5 * torch.finfo(dtype).eps).all()  # groups of ≤ 5 edges
    raw = b0 * torch.exp(-LR * g0)
    assert torch.isfinite(raw).all() and (raw > 0).all()
    raw = raw.clamp(min=min_value)
    expected = torch.cat([raw[s:e] / raw[s:e].sum() for s, e in GROUPS])
    torch.testing.assert_close(out.double(), expected, rtol=_rtol(b0, g0, LR, dtype, 5), atol=torch.finfo(dtype).tiny)


def test_kl_weight_large_step_matches_the_naive_formula():
    # GAEA GDAS: κ = 0.01, normalise then clamp. With |g| ≤ 1 and p ≥ 1e-3 the exponent stays ≤ 510.
    p0, g0 = _simplex_rows(5), _grad(6)
    out = _step(p0, g0, torch.float64, lr=LR, min_value=MIN_VALUE, clamp_first=False, kl_weight=0.01)
    expected = _naive(p0, g0, LR, clamp_first=False, kl_weight=0.01)
    zmax = (torch.log(p0) - LR * (g0 + 0.01 * (torch.log(K * p0) + 1))).abs().max().item()
    torch.testing.assert_close(out, expected, rtol=2 * (4 * zmax + 2 * K) * torch.finfo(torch.float64).eps, atol=0)


def test_entries_below_the_float32_range_stay_usable():
    # A float32 EDARTS step this large leaves the losing entries at ≈ 1e-5·e^{−1000}, below float32's
    # range: they are stored as its smallest normal number, so log p is finite and a further step
    # with the entropic term (log(K·p)) stays finite too.
    p0, g0 = _simplex_rows(7), _grad(8, scale=3.0)
    p = p0.float().clone().requires_grad_(True)
    opt = ExponentiatedGradient([p], lr=LR, min_value=MIN_VALUE, kl_weight=0.01)
    p.grad = g0.float()
    opt.step()
    tiny = torch.finfo(torch.float32).tiny
    assert (p.detach() == tiny).any() and (p.detach() >= tiny).all()
    p.grad = _grad(9).float()
    opt.step()
    assert torch.isfinite(p.detach()).all()
    assert ((p.detach().double().sum(-1) - 1).abs() <= 2 * K * torch.finfo(torch.float32).eps).all()
