"""NAS-Bench-201 search space (fastdarts.spaces.nb201) and RobustDARTS S1–S4 (fastdarts.spaces.robust)."""

import pytest
import torch
import torch.nn as nn

from fastdarts.genotype import NB201Genotype, load_genotype, save_genotype
from fastdarts.mixed import MixedOp
from fastdarts.ops import NB201_PRIMITIVES, OPS, Noise, ReLUConvBN
from fastdarts.spaces.darts import DartsSupernet
from fastdarts.spaces.nb201 import (
    NB201MixedOp,
    NB201Network,
    NB201SearchCell,
    NB201Supernet,
    ResNetBasicblock,
)
from fastdarts.spaces.robust import robust_primitives

BN = nn.modules.batchnorm._BatchNorm


def _bns(module):
    return [m for m in module.modules() if isinstance(m, BN)]


def _twin(model, **kwargs):
    """A second NB201 supernet with the same weights and α as ``model`` but other options."""
    other = NB201Supernet(model._C, model._num_classes, model._layerN, **kwargs).to(model.alphas.dtype)
    other.load_state_dict(model.state_dict())
    other.load_arch_state_dict(model.arch_state_dict())
    return other


def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    for a in model.arch_parameters():
        a.grad = None
    logits = model(x)
    nn.functional.cross_entropy(logits, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads, model.alphas.grad.clone()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 8, 8, generator=g), torch.tensor([0, 3, 7])


def _model(seed=0, dtype=torch.float32, **kwargs):
    torch.manual_seed(seed)
    m = NB201Supernet(4, 10, 1, **kwargs).to(dtype)
    with torch.no_grad():
        m.alphas.copy_(torch.randn(6, 5))  # non-uniform, so the weights matter
    return m


# ----------------------------------------------------------------------------------------------
# NAS-Bench-201 supernet


def test_nb201_forward_shape_and_arch(batch):
    x, _ = batch
    m = _model()
    assert m(x).shape == (3, 10)
    assert m.alphas.shape == (6, 5)
    archs = m.arch_parameters()
    assert len(archs) == 1 and archs[0] is m.alphas
    assert not any(p is m.alphas for p in m.parameters())
    assert not any("alpha" in k for k in m.state_dict())
    assert m.edge_primitives == {"normal": [NB201_PRIMITIVES] * 6}
    assert m._steps == 3
    # layout: N cells, reduction block, N cells, reduction block, N cells
    kinds = [type(c) for c in m.cells]
    assert kinds == [NB201SearchCell, ResNetBasicblock, NB201SearchCell, ResNetBasicblock, NB201SearchCell]
    assert [c.out_dim for c in m.cells] == [4, 8, 8, 16, 16]
    assert m.classifier.in_features == 16


def test_nb201_cell_edges_and_bn():
    m = NB201Supernet(4, 10, 2)
    cell = m.cells[0]
    assert list(cell.edges.keys()) == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    assert [cell.edge2index[k] for k in cell.edges.keys()] == list(range(6))
    for c in m.cells:
        if not isinstance(c, NB201SearchCell):
            continue
        for edge in c.edges.values():
            assert isinstance(edge, NB201MixedOp) and isinstance(edge, MixedOp)
            # only nor_conv_1x1 and nor_conv_3x3 carry a BN: the pool has none
            assert len(_bns(edge)) == 2
            pool = edge._ops[NB201_PRIMITIVES.index("avg_pool_3x3")]
            assert isinstance(pool, nn.AvgPool2d) and not _bns(pool)
            for bn in _bns(edge):
                assert not bn.affine and bn.track_running_stats
            conv = edge._ops[NB201_PRIMITIVES.index("nor_conv_3x3")]
            assert conv.op[1].bias is not None  # D-X-Y: bias = not affine
    # the quark0 MixedOp, by contrast, follows pools with BN
    assert len(_bns(MixedOp(4, 1, primitives=NB201_PRIMITIVES))) == 3
    # stem / basic blocks / last activation keep affine BN
    assert m.stem[1].affine and m.lastact[0].affine
    assert all(bn.affine for bn in _bns(m.cells[2]))


def test_nb201_track_running_stats_false(batch):
    x, _ = batch
    m = NB201Supernet(4, 10, 1, track_running_stats=False)
    for c in m.cells:
        if isinstance(c, NB201SearchCell):
            for bn in _bns(c):
                assert not bn.track_running_stats and bn.running_mean is None
    assert not any("edges" in k and "running" in k for k in m.state_dict())
    m.eval()
    assert m(x).shape == (3, 10)


def test_nb201_gradients_reach_alphas_and_weights(batch):
    x, y = batch
    m = _model()
    _, grads, agrad = _loss_and_grads(m, x, y)
    assert agrad.shape == (6, 5) and agrad.abs().sum() > 0
    assert grads["stem.0.weight"].abs().sum() > 0
    assert grads["cells.0.edges.3<-2._ops.3.op.1.weight"].abs().sum() > 0
    assert grads["classifier.weight"].abs().sum() > 0


def test_nb201_genotype_derivation_and_json(tmp_path):
    m = NB201Supernet(4, 10, 1)
    # edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2 ; ops none, skip, conv1x1, conv3x3, avgpool
    best = [3, 0, 1, 4, 2, 3]
    with torch.no_grad():
        m.alphas.zero_()
        for e, k in enumerate(best):
            m.alphas[e, k] = 1.0
    g = m.genotype()
    assert isinstance(g, NB201Genotype)
    assert g == NB201Genotype([
        [("nor_conv_3x3", 0)],
        [("none", 0), ("skip_connect", 1)],
        [("avg_pool_3x3", 0), ("nor_conv_1x1", 1), ("nor_conv_3x3", 2)],
    ])
    assert g.tostr() == ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                         "|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|")
    path = str(tmp_path / "g.json")
    save_genotype(g, path)
    g2 = load_genotype(path)
    assert isinstance(g2, NB201Genotype) and g2 == g and g2.tostr() == g.tostr()


def test_nb201_network_from_genotype(batch):
    x, y = batch
    g = NB201Genotype([
        [("nor_conv_3x3", 0)],
        [("none", 0), ("skip_connect", 1)],
        [("avg_pool_3x3", 0), ("nor_conv_1x1", 1), ("nor_conv_3x3", 2)],
    ])
    net = NB201Network(g, 4, 10, 1)
    logits, aux = net(x)
    assert logits.shape == (3, 10) and aux is None
    nn.functional.cross_entropy(logits, y).backward()
    assert net.stem[0].weight.grad is not None
    cell = net.cells[0]
    assert len(cell.layers) == 6
    assert all(bn.affine for bn in _bns(net))
    conv = cell.layers[0]
    assert isinstance(conv, ReLUConvBN) and conv.op[1].bias is None  # affine BN, no conv bias
    assert not _bns(cell.layers[3])  # the pool: no BN
    # the architecture string gives the same network
    net2 = NB201Network(g.tostr(), 4, 10, 1)
    assert net2.genotype == g
    assert list(net2.state_dict()) == list(net.state_dict())


def test_nb201_recompute_matches(batch):
    # float64: recompute adds the gradients reaching a cell input in another order, so only
    # rounding (~1e-15 here, ~1e-7 in fp32 depending on the CPU's reduction order) may differ.
    x, y = batch[0].double(), batch[1]
    ref = _model(dtype=torch.float64)
    rec = _twin(ref, recompute=True)
    assert rec.recompute
    l1, g1, a1 = _loss_and_grads(ref, x, y)
    l2, g2, a2 = _loss_and_grads(rec, x, y)
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(a2, a1)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], msg=k)
    # running statistics were updated by exactly one forward
    for (n1, b1), (n2, b2) in zip(ref.named_buffers(), rec.named_buffers()):
        assert n1 == n2
        torch.testing.assert_close(b2, b1, msg=n1)
    for bn in _bns(rec):
        assert int(bn.num_batches_tracked) == 1


def test_nb201_eager_matches_default_backend(batch):
    # float64 (the C++ kernels take it): the fused sum accumulates in another order than eager,
    # so the two agree up to rounding; in float64 that is far below the default tolerances.
    x, y = batch[0].double(), batch[1]
    ref = _model(backend="eager", dtype=torch.float64)
    fast = _twin(ref)  # backend="auto"
    l1, g1, a1 = _loss_and_grads(ref, x, y)
    l2, g2, a2 = _loss_and_grads(fast, x, y)
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(a2, a1)
    for k in g1:
        torch.testing.assert_close(g2.get(k, torch.zeros_like(g1[k])), g1[k], msg=k)


def test_nb201_cell_rejects_bad_weights():
    cell = NB201SearchCell(4, NB201_PRIMITIVES, "eager")
    with pytest.raises(ValueError):
        cell(torch.randn(1, 4, 4, 4), torch.rand(5, 5))


def test_nb201_build_supernet_and_network(batch):
    spaces = pytest.importorskip("fastdarts.spaces")
    try:
        import fastdarts.methods  # noqa: F401
    except Exception as err:  # pragma: no cover - the methods package is built elsewhere
        pytest.skip(f"fastdarts.methods unavailable: {err}")
    x, _ = batch
    m = spaces.build_supernet("nb201", "darts", C=4, num_classes=10, layers=1)
    assert isinstance(m, NB201Supernet) and m(x).shape == (3, 10)
    net = spaces.build_network(m.genotype(), C=4, num_classes=10, layers=1)
    assert isinstance(net, NB201Network) and net(x)[0].shape == (3, 10)


# ----------------------------------------------------------------------------------------------
# RobustDARTS S1–S4


@pytest.mark.parametrize("space,k", [("s1", 2), ("s2", 2), ("s3", 3), ("s4", 2)])
def test_robust_primitive_shapes(space, k):
    prims = robust_primitives(space)
    assert set(prims) == {"normal", "reduce"}
    for kind in ("normal", "reduce"):
        edges = prims[kind]
        assert len(edges) == 14
        for ops in edges:
            assert isinstance(ops, tuple) and len(ops) == k
            assert all(op in OPS for op in ops)


def test_robust_s1_table_and_uniform_spaces():
    s1 = robust_primitives("s1")
    assert s1["normal"][12] == ("dil_conv_3x3", "dil_conv_5x5")
    assert s1["reduce"][4] == ("skip_connect", "dil_conv_5x5")
    assert s1["normal"][0] == ("skip_connect", "dil_conv_3x3")
    assert s1["normal"][5] == ("max_pool_3x3", "skip_connect")
    assert s1["reduce"][1] == ("max_pool_3x3", "dil_conv_3x3")
    assert s1["reduce"][6] == ("max_pool_3x3", "sep_conv_3x3")
    assert s1["reduce"][0] == ("max_pool_3x3", "avg_pool_3x3")
    assert set(robust_primitives("s2")["reduce"]) == {("skip_connect", "sep_conv_3x3")}
    assert set(robust_primitives("s3")["normal"]) == {("none", "skip_connect", "sep_conv_3x3")}
    assert set(robust_primitives("s4")["normal"]) == {("noise", "sep_conv_3x3")}
    with pytest.raises(ValueError):
        robust_primitives("s6")  # s5 exists: Λ-DARTS' DARTS space without `none` (tests/test_recipes.py)


def test_robust_s3_supernet_genotype_has_no_none():
    torch.manual_seed(0)
    m = DartsSupernet(8, 10, 3, primitives=robust_primitives("s3"))
    assert m.alphas_normal.shape == (14, 3) and m.alphas_reduce.shape == (14, 3)
    out = m(torch.randn(2, 3, 8, 8))
    assert out.shape == (2, 10)
    with torch.no_grad():  # make `none` the favourite everywhere
        for a in m.arch_parameters():
            a.copy_(torch.randn(14, 3))
            a[:, 0] = 10.0
    g = m.genotype()
    for op, _ in g.normal + g.reduce:
        assert op != "none" and op in ("skip_connect", "sep_conv_3x3")


def test_robust_s1_supernet_genotype_uses_edge_lists():
    torch.manual_seed(0)
    prims = robust_primitives("s1")
    m = DartsSupernet(8, 10, 3, primitives=prims)
    assert m.alphas_normal.shape == (14, 2)
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    g = m.genotype()
    starts = [0, 2, 5, 9]
    for kind, gene in (("normal", g.normal), ("reduce", g.reduce)):
        for pos, (op, j) in enumerate(gene):
            assert op in prims[kind][starts[pos // 2] + j]


def test_robust_s4_noise_op():
    op = OPS["noise"](4, 1, False)
    assert isinstance(op, Noise)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    a, b = op(x), op(x)
    assert a.shape == x.shape and not torch.equal(a, b)
    assert not a.requires_grad  # no gradient path to the input
    assert OPS["noise"](4, 2, False)(x).shape == (2, 4, 3, 3)
    # in a mixed edge, the input gradient comes from sep_conv_3x3 alone
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, primitives=robust_primitives("s4")["normal"][0], backend="eager")
    w = torch.tensor([0.3, 0.7])
    g = torch.randn(2, 4, 6, 6)
    (gx_mixed,) = torch.autograd.grad((mixed(x, w) * g).sum(), x)
    (gx_sep,) = torch.autograd.grad((w[1] * mixed._ops[1](x) * g).sum(), x)
    torch.testing.assert_close(gx_mixed, gx_sep)
