"""Drop-in tests of ``fastdarts.build_supernet`` against the original search networks.

``tests/reference_darts.py`` holds literal copies of quark0/darts' and PC-DARTS' search
``Network``. For equal weights and architecture tensors the fastdarts supernet must give the
same logits, the same gradients (weights by name, every architecture tensor), the same BN
running statistics and the same genotype, and the original state_dict must load strictly.
"""

from __future__ import annotations

import pytest
import reference_darts as ref
import torch
import torch.nn as nn

import fastdarts

# (method, C, reference class, architecture tensor names in the original order)
METHODS = {
    "darts": (4, ref.Network, ["alphas_normal", "alphas_reduce"]),
    # C must be divisible by k=4 in every cell, and C/4 even for FactorizedReduce: C=8 works.
    "pcdarts": (8, ref.PCNetwork, ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]),
}
LAYERS = 5  # the drop-in tests: reductions at cells 1 and 3, as in the brief's reference setting
SMALL_LAYERS = 3  # the other forward tests: a normal cell, two reduction cells (cells 1 and 2)
BACKENDS = ["eager", None]  # None: build_supernet's default backend ("auto": C++ on CPU)


def _build(method, backend=None, layers=LAYERS, **options):
    C = METHODS[method][0]
    if backend is not None:
        options["backend"] = backend
    return fastdarts.build_supernet(space="darts", method=method, C=C, num_classes=10, layers=layers, **options)


def _reference(method, seed=0, layers=LAYERS):
    C, cls, _ = METHODS[method]
    torch.manual_seed(seed)
    net = cls(C, 10, layers, nn.CrossEntropyLoss())
    # Spread the architecture tensors (1e-3·N(0,1) at init) so that the genotype is not decided
    # by ties or rounding.
    with torch.no_grad():
        for a in net.arch_parameters():
            a.copy_(torch.randn_like(a))
    return net


def _double(reference):
    """Move an original network to float64, its architecture tensors too (plain tensors there)."""
    reference.double()
    for a in reference.arch_parameters():
        a.data = a.data.double()
    return reference


def _copy_into(net, reference):
    net.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        for ours, theirs in zip(net.arch_parameters(), reference.arch_parameters(), strict=True):
            ours.copy_(theirs)


def _batch(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g, dtype=dtype), torch.randint(0, 10, (2,), generator=g)


def _step(net, x, y):
    """One training-mode forward + backward of the cross-entropy loss."""
    net.train()
    net.zero_grad(set_to_none=True)
    for a in net.arch_parameters():
        a.grad = None
    logits = net(x)
    nn.functional.cross_entropy(logits, y).backward()
    weight_grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    arch_grads = [a.grad.detach().clone() for a in net.arch_parameters()]
    return logits.detach(), weight_grads, arch_grads


def _shapes(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


# ---------------------------------------------------------------------------------------------
# Drop-in: layout, numbers, genotype


@pytest.mark.parametrize("method", list(METHODS))
def test_state_dict_layout_matches_original(method):
    theirs = _reference(method)
    ours = _build(method)
    assert _shapes(ours) == _shapes(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("method", list(METHODS))
def test_arch_parameters_order_and_shapes(method):
    net = _build(method, layers=SMALL_LAYERS)
    names = METHODS[method][2]
    arch = net.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)] + [(14,)] * (len(names) - 2)
    for name, a in zip(names, arch, strict=True):
        assert getattr(net, name) is a, name
        assert a.is_leaf and a.requires_grad and a.dtype == torch.float32
    # Architecture tensors are neither weights nor state (as Variables in the originals).
    arch_ids = {id(a) for a in arch}
    assert not arch_ids & {id(p) for p in net.parameters()}
    keys = net.state_dict().keys()
    assert not any("alpha" in k or "beta" in k for k in keys)
    assert all(id(v) not in arch_ids for v in net.state_dict().values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_same_logits_gradients_and_genotype(method, backend):
    # float64: the default backend fuses the weighted sums (mixed ops and PC-DARTS nodes) and
    # shares one ReLU per edge, which reorders the gradient reductions; even "eager" is only
    # promised to agree up to rounding. Float64 makes that rounding ~1e-15, so the default
    # tolerances hold on any CPU and thread count.
    theirs = _double(_reference(method))
    ours = _build(method, backend).double()
    _copy_into(ours, theirs)
    x, y = _batch(dtype=torch.float64)

    logits_ref, wg_ref, ag_ref = _step(theirs, x, y)
    logits, wg, ag = _step(ours, x, y)

    torch.testing.assert_close(logits, logits_ref)
    assert wg.keys() == wg_ref.keys()
    for name in wg_ref:
        torch.testing.assert_close(wg[name], wg_ref[name], msg=name)
    assert len(ag) == len(ag_ref) == len(METHODS[method][2])
    for a, b in zip(ag, ag_ref, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b)
    # BatchNorm running statistics followed the same path.
    ref_bufs = dict(theirs.named_buffers())
    for name, buf in ours.named_buffers():
        torch.testing.assert_close(buf, ref_bufs[name], msg=name)

    g_ref, g = theirs.genotype(), ours.genotype()
    assert [tuple(e) for e in g.normal] == list(g_ref.normal)
    assert [tuple(e) for e in g.reduce] == list(g_ref.reduce)
    assert list(g.normal_concat) == list(g_ref.normal_concat) == [2, 3, 4, 5]
    assert list(g.reduce_concat) == list(g_ref.reduce_concat)


@pytest.mark.parametrize("method", list(METHODS))
def test_genotype_matches_original_for_random_arch(method):
    # Genotype only (no forward): several random architectures on one pair of networks.
    theirs = _reference(method, layers=SMALL_LAYERS)
    ours = _build(method, layers=SMALL_LAYERS)
    torch.manual_seed(7)
    for scale in (1.0, 3.0, 1e-3):  # 1e-3: the original initialisation's scale
        with torch.no_grad():
            for a in theirs.arch_parameters():
                a.copy_(scale * torch.randn_like(a))
        _copy_into(ours, theirs)
        g_ref, g = theirs.genotype(), ours.genotype()
        assert [tuple(e) for e in g.normal] == list(g_ref.normal), scale
        assert [tuple(e) for e in g.reduce] == list(g_ref.reduce), scale
        assert "none" not in {op for op, _ in g.normal + g.reduce}


@pytest.mark.parametrize("method", list(METHODS))
def test_same_seed_same_initialisation(method):
    # Not part of the layout promise, but what makes a fastdarts run reproduce an original run:
    # modules are created (and α/β drawn) in the original's order, so one seed gives the same
    # initial weights and architecture tensors.
    C, cls, _ = METHODS[method]
    torch.manual_seed(11)
    theirs = cls(C, 10, SMALL_LAYERS, nn.CrossEntropyLoss())
    torch.manual_seed(11)
    ours = _build(method, layers=SMALL_LAYERS)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    for a, b in zip(ours.arch_parameters(), theirs.arch_parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach())


# ---------------------------------------------------------------------------------------------
# recompute=True


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", list(METHODS))
def test_recompute_supernet_matches(method, backend):
    # float64: recompute adds the gradients reaching a cell input in another order (rounding only).
    theirs = _double(_reference(method, layers=SMALL_LAYERS))
    plain = _build(method, backend, layers=SMALL_LAYERS).double()
    rec = _build(method, backend, layers=SMALL_LAYERS, recompute=True).double()
    _copy_into(plain, theirs)
    _copy_into(rec, theirs)
    x, y = _batch(dtype=torch.float64)

    logits0, wg0, ag0 = _step(plain, x, y)
    logits1, wg1, ag1 = _step(rec, x, y)

    torch.testing.assert_close(logits1, logits0)
    for name in wg0:
        torch.testing.assert_close(wg1[name], wg0[name], msg=name)
    for a, b in zip(ag1, ag0, strict=True):
        torch.testing.assert_close(a, b)
    bufs0 = dict(plain.named_buffers())
    for name, buf in rec.named_buffers():
        # Updated exactly once: the recomputation in backward must not touch them.
        torch.testing.assert_close(buf, bufs0[name], rtol=0, atol=0, msg=name)
        if name.endswith("num_batches_tracked"):
            assert int(buf) == 1, name


# ---------------------------------------------------------------------------------------------
# Moving the module moves the architecture tensors


@pytest.mark.parametrize("method", list(METHODS))
def test_double_and_to_move_arch_tensors_in_place(method):
    net = _build(method, layers=SMALL_LAYERS)
    before = [id(a) for a in net.arch_parameters()]
    values = [a.detach().clone() for a in net.arch_parameters()]
    opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)

    assert net.double() is net
    arch = net.arch_parameters()
    assert [id(a) for a in arch] == before
    for a, v in zip(arch, values, strict=True):
        assert a.dtype == torch.float64 and a.is_leaf and a.requires_grad
        torch.testing.assert_close(a, v.double())
    assert all(p.dtype == torch.float64 for p in net.parameters())

    # The module still trains in float64, and an optimizer made before the move still steps.
    x, y = _batch()
    nn.functional.cross_entropy(net(x.double()), y).backward()
    assert all(a.grad is not None and a.grad.dtype == torch.float64 for a in arch)
    opt.step()
    assert not torch.equal(arch[0].detach(), values[0].double())

    net.to(torch.float32)
    assert [id(a) for a in net.arch_parameters()] == before
    assert all(a.dtype == torch.float32 for a in net.arch_parameters())
    net.to("cpu", dtype=torch.float64)
    assert all(a.dtype == torch.float64 for a in net.arch_parameters())
    net.float()
    assert all(a.dtype == torch.float32 for a in net.arch_parameters())


# ---------------------------------------------------------------------------------------------
# Errors


def test_unknown_space_raises_with_name():
    with pytest.raises(ValueError, match="no_such_space"):
        fastdarts.build_supernet(space="no_such_space", method="darts", C=4, layers=2)


def test_unknown_method_raises_with_name():
    with pytest.raises(ValueError, match="no_such_method"):
        fastdarts.build_supernet(space="darts", method="no_such_method", C=4, layers=2)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="no_such_backend"):
        fastdarts.build_supernet(space="darts", method="darts", C=4, layers=2, backend="no_such_backend")
