"""D-X-Y's NASNet-super supernet (fastdarts.spaces.nasnet) against a literal port (tests/reference_nasnet.py).

Tiny networks (C=4, 6 cells, 16×16 images, batch 4) in float64: with the same weights, architecture
tensors and gates, logits and gradients agree to float64 rounding. Both networks run the same
operations in the same order; the fused backends reassociate sums, which moves results by a few
ulps of float64 (~1e-16 relative) through ~30 layers, far below the 1e-9 tolerance used here.
"""

import pytest
import torch
import torch.nn as nn
from reference_nasnet import DARTS_SPACE, NASNetworkGDAS

import fastdarts
from fastdarts.config import SearchConfig, load_config
from fastdarts.methods import get_method
from fastdarts.spaces import resolve_supernet
from fastdarts.spaces.darts import DartsSupernet
from fastdarts.spaces.nasnet import NASNET_PRIMITIVES, NasnetSupernet

TOL = dict(rtol=1e-9, atol=1e-9)
ARCH_KEYS = {"normal": "arch_normal_parameters", "reduce": "arch_reduce_parameters"}
DXY_TO_DARTS = {"dua_sepc_3x3": "sep_conv_3x3", "dua_sepc_5x5": "sep_conv_5x5",
                "dil_sepc_3x3": "dil_conv_3x3", "dil_sepc_5x5": "dil_conv_5x5"}
# The published settings: GDAS keeps D-X-Y's defaults; PR-DARTS' cells track no running statistics
# and its copy of cell_operations.py has no conv biases.
FLAVOURS = {"gdas": dict(track_running_stats=True, dxy_bias=True),
            "prdarts": dict(track_running_stats=False, dxy_bias=False)}


def _pair(method, backend="eager", seed=0):
    """(fastdarts supernet, reference) in float64 with the same weights; the reference holds a copy of α."""
    torch.manual_seed(seed)
    ours = fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=6, backend=backend).double()
    ref = NASNetworkGDAS(4, 2, 4, 4, 3, 10, DARTS_SPACE, affine=False, **FLAVOURS.get(method, FLAVOURS["gdas"]))
    ref = ref.double()
    state = ours.state_dict()
    state.update({ARCH_KEYS[k]: getattr(ours, f"alphas_{k}").detach() for k in ARCH_KEYS})
    ref.load_state_dict(state, strict=True)
    return ours, ref


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g)


def _compare(ours, ref, loss_ours, loss_ref, arch):
    """Equal gradients for every weight (matched by state_dict name) and for the architecture tensors."""
    ga = torch.autograd.grad(loss_ours, arch, retain_graph=True)
    gb = torch.autograd.grad(loss_ref, arch, retain_graph=True)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)
    ref_params = dict(ref.named_parameters())
    names = [n for n, _ in ours.named_parameters()]
    # Sampled gates leave the unselected ops out of the graph: their gradients are None in both.
    wa = torch.autograd.grad(loss_ours, [p for _, p in ours.named_parameters()], allow_unused=True)
    wb = torch.autograd.grad(loss_ref, [ref_params[n] for n in names], allow_unused=True)
    for n, a, b in zip(names, wa, wb):
        assert (a is None) == (b is None), n
        if a is not None:
            torch.testing.assert_close(a, b, **TOL, msg=n)


# ------------------------------------------------------------------------------------------ layout


def test_published_supernet_per_method():
    assert resolve_supernet("darts", "gdas") == resolve_supernet("darts", "prdarts") == "nasnet"
    for method in ("darts", "pcdarts", "dropnas", "lambda_darts", "gaea"):
        assert resolve_supernet("darts", method) == "quark0"
    assert resolve_supernet("nb201", "gdas") == "nb201"
    assert resolve_supernet("darts", "gdas", "quark0") == "quark0"
    assert resolve_supernet("darts", "darts", "nasnet") == "nasnet"
    torch.manual_seed(0)
    assert isinstance(fastdarts.build_supernet("darts", "gdas", C=4, layers=3, supernet="quark0"), DartsSupernet)
    assert isinstance(fastdarts.build_supernet("darts", "darts", C=4, layers=3), DartsSupernet)
    assert isinstance(fastdarts.build_supernet("darts", "darts", C=4, layers=3, supernet="nasnet"), NasnetSupernet)


def test_config_key_selects_the_supernet():
    assert SearchConfig().supernet == "auto"
    assert load_config(SearchConfig, None, ["method=gdas", "supernet=quark0"]).supernet == "quark0"


def test_six_cells_reductions_at_2_and_4_and_lastact():
    torch.manual_seed(0)
    net = fastdarts.build_supernet("darts", "gdas", C=4, num_classes=10)
    assert len(net.cells) == 6
    assert [c.reduction for c in net.cells] == [False, False, True, False, True, False]
    widths = [c.preprocess1.op[1].out_channels for c in net.cells]
    assert widths == [4, 4, 8, 8, 16, 16]
    # A cell after a reduction preprocesses s0 with D-X-Y's FactorizedReduce, the others with ReLU-Conv1x1-BN.
    assert [hasattr(c.preprocess0, "convs") for c in net.cells] == [False, False, False, True, False, True]
    assert isinstance(net.lastact[0], nn.BatchNorm2d) and isinstance(net.lastact[1], nn.ReLU)
    assert net.lastact[0].num_features == net.classifier.in_features == 64
    assert net.edge_primitives["normal"][0] == NASNET_PRIMITIVES
    assert [DXY_TO_DARTS.get(p, p) for p in DARTS_SPACE] == list(NASNET_PRIMITIVES)
    # lastact is applied: its ReLU makes the pooled features non-negative.
    feats = []
    net.global_pooling.register_forward_hook(lambda m, i, o: feats.append(o))
    net(torch.randn(4, 3, 16, 16))
    assert (feats[0] >= 0).all()
    with pytest.raises(ValueError, match="multiple of 3"):
        fastdarts.build_supernet("darts", "gdas", C=4, layers=5)


def test_pools_have_no_batchnorm():
    torch.manual_seed(0)
    net = fastdarts.build_supernet("darts", "gdas", C=4, layers=3)
    for cell in net.cells:
        for edge in cell._ops:
            for k in (NASNET_PRIMITIVES.index("avg_pool_3x3"), NASNET_PRIMITIVES.index("max_pool_3x3")):
                assert isinstance(edge._ops[k], (nn.AvgPool2d, nn.MaxPool2d))
    avg = net.cells[0]._ops[0]._ops[NASNET_PRIMITIVES.index("avg_pool_3x3")]
    assert avg.count_include_pad is False


@pytest.mark.parametrize("method", ["prdarts", "gdas"])
def test_cell_batchnorm_running_stats(method):
    torch.manual_seed(0)
    net = fastdarts.build_supernet("darts", method, C=4, layers=3)
    cell_bns = [m for m in net.cells.modules() if isinstance(m, nn.BatchNorm2d)]
    assert cell_bns and all(not m.affine for m in cell_bns)
    tracked = method == "gdas"
    assert all(m.track_running_stats == tracked and (m.running_mean is not None) == tracked for m in cell_bns)
    # Stem and lastact BatchNorms are plain nn.BatchNorm2d in both originals: affine, tracked.
    for bn in (net.stem[1], net.lastact[0]):
        assert bn.affine and bn.track_running_stats
    if not tracked:  # nothing about running statistics in the state_dict of the cells
        assert not any("running" in k or "num_batches" in k for k in net.cells.state_dict())


@pytest.mark.parametrize("method", ["prdarts", "gdas"])
def test_state_dict_matches_the_reference_layout(method):
    ours, ref = _pair(method)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    ref_keys = set(ref_state) - set(ARCH_KEYS.values())
    assert set(our_state) == ref_keys
    for k in ref_keys:
        assert ref_state[k].shape == our_state[k].shape, k
    fresh = fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=6).double()
    fresh.load_state_dict({k: ref_state[k] for k in ref_keys}, strict=True)


def test_bad_supernet_choices_are_clear():
    with pytest.raises(ValueError, match="unknown supernet"):
        fastdarts.build_supernet("darts", "gdas", supernet="nas")
    with pytest.raises(ValueError, match="searches the DARTS space"):
        fastdarts.build_supernet("s1", "darts", supernet="nasnet")
    with pytest.raises(ValueError, match="applies to space 'darts'"):
        fastdarts.build_supernet("nb201", "gdas", supernet="nasnet")
    with pytest.raises(ValueError, match="partial channels"):
        fastdarts.build_supernet("darts", "pcdarts", C=4, layers=3, supernet="nasnet")


# ------------------------------------------------------------------------------------------ numerics


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_gdas_forward_and_gradients_match_reference(backend):
    ours, ref = _pair("gdas", backend)
    x, y = _batch()
    # One Gumbel draw per cell type, fed to both networks: only the sampled op of each edge runs,
    # scaled by its straight-through weight h[idx] (no zero-valued scalars for the other ops).
    cws = ours.cell_weights()
    idx = {k: torch.tensor([a[0] for a in cw.active]) for k, cw in cws.items()}
    assert all(len(a) == 1 for cw in cws.values() for a in cw.active)
    logits = ours(x, cell_weights=cws)
    _, ref_logits = ref.forward_gdas(x, cws["normal"].weights, idx["normal"], cws["reduce"].weights, idx["reduce"])
    torch.testing.assert_close(logits, ref_logits, **TOL)
    loss, ref_loss = nn.functional.cross_entropy(logits, y), nn.functional.cross_entropy(ref_logits, y)
    _compare(ours, ref, loss, ref_loss, ours.arch_parameters())
    ref_state = ref.state_dict()
    for k, a in ours.state_dict().items():
        torch.testing.assert_close(a, ref_state[k], **TOL, msg=k)  # running statistics updated alike


@pytest.mark.parametrize("backend", ["eager", "auto"])
def test_prdarts_forward_and_gradients_match_reference(backend):
    ours, ref = _pair("prdarts", backend)
    x, y = _batch(1)
    cws = ours.cell_weights()  # hard-concrete gates, 2 ops per edge
    assert all(len(a) == 2 for cw in cws.values() for a in cw.active)
    logits = ours(x, cell_weights=cws)
    _, ref_logits = ref.forward_prdarts(x, cws["normal"].weights, cws["reduce"].weights)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    loss, ref_loss = nn.functional.cross_entropy(logits, y), nn.functional.cross_entropy(ref_logits, y)
    _compare(ours, ref, loss, ref_loss, ours.arch_parameters())


def test_softmax_forward_matches_reference_darts():
    torch.manual_seed(0)
    ours = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=6, supernet="nasnet",
                                    backend="eager").double()
    ref = NASNetworkGDAS(4, 2, 4, 4, 3, 10, DARTS_SPACE, affine=False, track_running_stats=True).double()
    state = ours.state_dict()
    state.update({ARCH_KEYS[k]: getattr(ours, f"alphas_{k}").detach() for k in ARCH_KEYS})
    ref.load_state_dict(state, strict=True)
    x, y = _batch(2)
    cws = ours.cell_weights()
    logits = ours(x, cell_weights=cws)
    _, ref_logits = ref.forward_darts(x, cws["normal"].weights, cws["reduce"].weights)
    torch.testing.assert_close(logits, ref_logits, **TOL)
    loss, ref_loss = nn.functional.cross_entropy(logits, y), nn.functional.cross_entropy(ref_logits, y)
    _compare(ours, ref, loss, ref_loss, ours.arch_parameters())


@pytest.mark.parametrize("method", ["prdarts", "gdas"])
def test_genotype_matches_reference_in_darts_names(method):
    ours, ref = _pair(method, seed=3)
    with torch.no_grad():
        for kind, key in ARCH_KEYS.items():
            a = torch.randn(14, 8, dtype=torch.float64)
            getattr(ours, f"alphas_{kind}").copy_(a)
            getattr(ref, key).copy_(a)
    want = ref.genotype()
    got = ours.genotype()
    for kind in ("normal", "reduce"):
        flat = [(DXY_TO_DARTS.get(op, op), j) for node in want[kind] for op, j, _ in node]
        assert getattr(got, kind) == flat
        assert getattr(got, f"{kind}_concat") == want[f"{kind}_concat"]
    net = fastdarts.build_network(got, C=4, num_classes=10, layers=3)  # `fastdarts train` builds it
    assert net(torch.randn(2, 3, 16, 16))[0].shape == (2, 10)


# ------------------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["prdarts", "gdas"])
def test_method_runs_two_steps_on_the_nasnet_supernet(method):
    torch.manual_seed(0)
    model = fastdarts.build_supernet("darts", method, C=4, num_classes=10)
    assert isinstance(model, NasnetSupernet)
    cls = get_method(method)
    m = cls(model, cls.resolve_hyper({"epochs": 2, "gate_seed": 5}))
    m.begin_epoch(0)
    arch0 = [a.detach().clone() for a in model.arch_parameters()]
    w0 = [p.detach().clone() for p in model.parameters()]
    g = torch.Generator().manual_seed(0)
    for s in range(2):
        batches = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in "tv"]
        metrics = m.step(batches[0], batches[1], s)
        assert torch.isfinite(metrics["loss"]) and torch.isfinite(metrics["arch_loss"])
    assert all(not torch.equal(a, b) for a, b in zip(arch0, model.arch_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(w0, model.parameters()))
    assert len(model.genotype().normal) == 8
