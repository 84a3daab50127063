"""GDAS architecture gradients pinned against their closed form (ALGORITHMS.md §8, §12.1).

With fixed Gumbel noise G, ``p = softmax((log_softmax(α) + G)/τ)``, ``idx = argmax p`` and
``h = one_hot(idx) − sg(p) + p``:

* DARTS space, quark0's and D-X-Y's NASNet-super networks (D-X-Y ``MixedOp.forward_gdas``): an
  edge is ``y = h[idx]·op_idx(x)``, so ``dL/dα = s · dp_idx/dα`` with ``s = ⟨dL/dy, op_idx(x)⟩``
  (summed over the cells sharing α).
* NAS-Bench-201 (``NAS201SearchCell.forward_gdas``): the edge adds ``Σ_{o≠idx} h[o]``, which
  adds ``t · Σ_{o≠idx} dp_o/dα`` with ``t = Σ dL/dy`` (the scalars broadcast over the output).

The Jacobians are composed explicitly here: ``dp_o/dl_i = p_o(δ_oi − p_i)`` and
``dl_i/dα_j = (δ_ij − softmax(α)_j)/τ``. ``s`` and ``t`` come from hooks on the edge modules; the
gradient under test is plain autograd through the supernet. Everything runs in float64.
"""

import pytest
import torch
import torch.nn.functional as F

import fastdarts.gates as G
from fastdarts.spaces.darts import DartsSupernet
from fastdarts.spaces.nasnet import NasnetSupernet
from fastdarts.spaces.nb201 import NB201SearchCell, NB201Supernet
from fastdarts.spaces.robust import robust_primitives

TAU = 1.5
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture
def fixed_noise(monkeypatch):
    """Replace the sampler's uniforms by fixed float64 draws per (stream, part); returns them by stream."""
    drawn = {}

    def uniforms(rng, stream, shape, device, use_triton, part=0):
        g = torch.Generator().manual_seed(1000 + 16 * stream + part)
        u = torch.rand(*shape, generator=g, dtype=torch.float64).clamp_(G.UNIFORM_EPS, 1.0 - G.UNIFORM_EPS)
        drawn[stream] = u
        return u.to(device)

    monkeypatch.setattr(G, "_uniforms", uniforms)
    return drawn


def _jacobians(alpha: torch.Tensor, u: torch.Tensor, tau: float):
    """Per edge ``dp/dα`` (``[E, K, K]``, row o = dp_o/dα), the probabilities p and the arg-max."""
    q = F.softmax(alpha, -1)
    p = F.softmax((F.log_softmax(alpha, -1) - torch.log(-torch.log(u))) / tau, -1)
    K = alpha.shape[1]
    eye = torch.eye(K, dtype=alpha.dtype)
    jac = []
    for e in range(alpha.shape[0]):
        dp_dl = torch.diag(p[e]) - p[e][:, None] * p[e][None, :]  # p_o(δ_oi − p_i)
        dl_da = (eye - q[e][None, :]) / tau  # log_softmax Jacobian, then the 1/τ
        jac.append(dp_dl @ dl_da)
    return torch.stack(jac), p, p.argmax(-1)


class _EdgeProbe:
    """Hooks on the edges: ``s[key] = Σ ⟨dL/dy, op_idx(x)⟩``, ``t[key] = Σ dL/dy``, ``a``/``b`` their |·| sums."""

    def __init__(self):
        self.s, self.t, self.a, self.b, self.n = {}, {}, {}, {}, {}
        self._outs, self.handles = [], []

    def watch(self, key, mixed_op, idx: int) -> None:
        record = {}
        self._outs.append((key, record))

        def op_hook(mod, inputs, out):
            record["o"] = out.detach()

        def edge_hook(mod, inputs, out):
            out.register_hook(lambda g: record.__setitem__("g", g.detach()))

        self.handles += [mixed_op._ops[idx].register_forward_hook(op_hook), mixed_op.register_forward_hook(edge_hook)]

    def collect(self) -> None:
        for key, r in self._outs:
            g, o = r["g"], r["o"]
            for d, v in ((self.s, (g * o).sum()), (self.t, g.sum()), (self.a, (g * o).abs().sum()),
                         (self.b, g.abs().sum())):
                d[key] = d.get(key, 0.0) + v
            self.n[key] = self.n.get(key, 0) + g.numel()
        for h in self.handles:
            h.remove()


def _tolerance(n: int, K: int, a: float, b: float) -> float:
    """Bound on |autograd − closed form|: each of s, t is a float64 sum of n products, computed
    here and in autograd in possibly different orders (error ≤ n·ε·Σ|terms| each side); every
    Jacobian entry and each of its K-term intermediates is ≤ 1/τ in magnitude and carries ≤ 4Kε
    relative error per side. Together ≤ 8(n + K)·ε·(Σ|g·o| + Σ|g|)/τ."""
    return 8 * (n + K) * EPS64 * (a + b) / TAU


def _batch(n=2, size=8):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, size, size, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("network,primitives", [(DartsSupernet, None), (DartsSupernet, "s3"), (NasnetSupernet, None)],
                         ids=["quark0", "quark0_robust_s3", "nasnet_super"])
def test_darts_space_edge_gradient_has_no_scalar_terms(fixed_noise, network, primitives):
    torch.manual_seed(0)
    prims = None if primitives is None else robust_primitives(primitives)
    model = network(C=4, num_classes=10, layers=3, primitives=prims, backend="eager",
                    mixing=G.GumbelMixing(tau=TAU, seed=0, sampler="torch")).double()
    with torch.no_grad():  # away from the uniform point so that p, and hence J, are not symmetric
        for a in model.arch_parameters():
            a.copy_(0.7 * torch.randn_like(a))
    cw = model.cell_weights()
    probe = _EdgeProbe()
    for cell in model.cells:
        kind = "reduce" if cell.reduction else "normal"
        for e, mixed in enumerate(cell._ops):
            probe.watch((kind, e), mixed, cw[kind].active[e][0])
    x, y = _batch()
    grads = torch.autograd.grad(F.cross_entropy(model(x, cell_weights=cw), y), model.arch_parameters())
    probe.collect()

    for stream, (kind, alpha, grad) in enumerate(zip(("normal", "reduce"), model.arch_parameters(), grads)):
        jac, p, idx = _jacobians(alpha.detach(), fixed_noise[stream], TAU)
        assert [a[0] for a in cw[kind].active] == idx.tolist()
        for e in range(alpha.shape[0]):
            key, i = (kind, e), int(idx[e])
            expected = probe.s[key] * jac[e, i]  # s · dp_idx/dα, nothing from the other gates
            tol = _tolerance(probe.n[key], alpha.shape[1], float(probe.a[key]), float(probe.b[key]))
            err = (grad[e] - expected).abs().max().item()
            assert err <= tol, f"{kind} edge {e}: |autograd − closed form| = {err:.3g} > {tol:.3g}"
            # The NB201 scalars would add t·Σ_{o≠idx} dp_o/dα; make sure that would have been visible.
            extra = probe.t[key] * (jac[e].sum(0) - jac[e, i])
            assert extra.abs().max().item() > 100 * tol


def test_nb201_edge_gradient_keeps_the_scalar_terms(fixed_noise):
    torch.manual_seed(0)
    model = NB201Supernet(C=4, num_classes=10, N=1, backend="eager",
                          mixing=G.GumbelMixing(tau=TAU, seed=0, sampler="torch")).double()
    with torch.no_grad():
        model.alphas.copy_(0.7 * torch.randn_like(model.alphas))
    cw = model.cell_weights()
    probe = _EdgeProbe()
    for cell in model.cells:
        if isinstance(cell, NB201SearchCell):
            for key, mixed in cell.edges.items():
                e = cell.edge2index[key]
                probe.watch(e, mixed, cw["normal"].active[e][0])
    x, y = _batch()
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x, cell_weights=cw), y), [model.alphas])
    probe.collect()

    alpha = model.alphas.detach()
    jac, p, idx = _jacobians(alpha, fixed_noise[0], TAU)
    assert [a[0] for a in cw["normal"].active] == idx.tolist()
    K, live = alpha.shape[1], 0
    for e in range(alpha.shape[0]):
        i = int(idx[e])
        darts_like = probe.s[e] * jac[e, i]
        scalars = probe.t[e] * sum(jac[e, o] for o in range(K) if o != i)  # Σ_{o≠idx} h[o] terms
        tol = _tolerance(probe.n[e], K, float(probe.a[e]), float(probe.b[e]))
        err = (grad[e] - (darts_like + scalars)).abs().max().item()
        assert err <= tol, f"edge {e}: |autograd − closed form| = {err:.3g} > {tol:.3g}"
        if float(probe.b[e]) == 0:  # the edge's node reaches the output only through sampled `none` ops
            assert torch.equal(grad[e], torch.zeros_like(grad[e]))
        else:
            assert scalars.abs().max().item() > 100 * tol, "the scalar terms must be visible in ∂α"
            live += 1
    assert live >= 3  # this draw: the three edges into the output node (the others feed sampled `none` ops)
