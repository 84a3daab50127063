"""PR-DARTS, GDAS and DropNAS search methods on tiny supernets (C=4, 3 cells / 1 cell per stage, 8x8 images)."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts.gates import hard_concrete_prob_nonzero
from fastdarts.methods import get_method
from fastdarts.methods.dropnas import DropNAS
from fastdarts.methods.gdas import GDAS
from fastdarts.methods.prdarts import PRDarts, chain_edges, prdarts_regularizer
from fastdarts.ops import DARTS_PRIMITIVES


def _batch(seed, n=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def _make(name, space="darts", recompute=False, seed=0, dtype=torch.float32, **hyper):
    torch.manual_seed(seed)
    cls = get_method(name)
    layers = 3 if space == "darts" else 1
    model = fastdarts.build_supernet(space, name, C=4, num_classes=10, layers=layers, recompute=recompute)
    if dtype == torch.float64:
        model.double()
    m = cls(model, cls.resolve_hyper({"epochs": 4, **hyper}, space))
    m.begin_epoch(0)
    return model, m


def _run(model, m, steps=2, dtype=torch.float32):
    for s in range(steps):
        m.step(_batch(s, dtype=dtype), _batch(100 + s, dtype=dtype), s)


# ------------------------------------------------------------------------------------ defaults


def test_paper_defaults():
    hp = PRDarts.resolve_hyper({})
    assert (hp["w_lr"], hp["w_lr_min"], hp["w_weight_decay"], hp["w_nesterov"], hp["lr_schedule_offset"]) == \
        (0.025, 0.001, 5e-4, True, 0)
    assert (hp["alpha_lr"], hp["alpha_betas"], hp["alpha_weight_decay"]) == (3e-4, (0.5, 0.999), 1e-3)
    assert (hp["tau_max"], hp["tau_min"], hp["topk"], hp["gate_dropout"]) == (1.0, 0.1, 2, 0.4)
    assert (hp["lambda1"], hp["lambda2"], hp["lambda3"], hp["reg_threshold"]) == (0.01, 0.005, 0.005, 0.2)
    hp = GDAS.resolve_hyper({})
    assert (hp["w_nesterov"], hp["w_weight_decay"], hp["tau_max"], hp["tau_min"], hp["epochs"]) == \
        (True, 5e-4, 10.0, 0.1, 250)
    hp = DropNAS.resolve_hyper({})
    assert (hp["w_lr"], hp["w_lr_min"], hp["w_weight_decay"], hp["w_grad_clip"], hp["alpha_weight_decay"]) == \
        (0.0375, 0.0015, 0.0, 3.0, 0.0)
    assert hp["drop_rate"] == 3e-5 and DropNAS.single_level


def test_temperature_schedules():
    model, m = _make("gdas", epochs=5)
    m.begin_epoch(0)
    assert model.mixing.tau == 10.0
    m.begin_epoch(4)
    assert model.mixing.tau == pytest.approx(0.1)
    m.begin_epoch(2)
    assert model.mixing.tau == pytest.approx(10 - 9.9 * 2 / 4)
    model, m = _make("prdarts", epochs=3)
    m.begin_epoch(1)
    assert model.mixing.tau == pytest.approx(0.55)


@pytest.mark.parametrize("name,space", [("prdarts", "darts"), ("gdas", "darts"), ("gdas", "nb201")])
def test_weight_step_comes_first(name, space, monkeypatch):
    model, m = _make(name, space)
    assert m.hp["step_order"] == "weight_first"
    order = []
    monkeypatch.setattr(m, "weight_step", lambda *a: order.append("w") or {})
    monkeypatch.setattr(m, "arch_step", lambda *a: order.append("a") or {})
    m.step(_batch(0), _batch(1), 0)
    assert order == ["w", "a"]


# ------------------------------------------------------------------------------------ regulariser


def _logit(p):
    return math.log(p / (1 - p))


def test_prdarts_regulariser_hand_computed():
    tau = 0.5
    # P per column (none, max, avg, skip, sep3, sep5, dil3, dil5); A chosen so σ(A − τ·log(−a/b)) = P.
    pc = [0.05, 0.1, 0.2, 0.9, 0.3, 0.4, 0.5, 0.6]
    A_row = torch.tensor([_logit(p) + tau * math.log(0.1 / 1.1) for p in pc])
    A = {k: A_row.repeat(14, 1).requires_grad_(True) for k in ("normal", "reduce")}
    torch.testing.assert_close(hard_concrete_prob_nonzero(A["normal"][0], tau), torch.tensor(pc))
    col = {p: k for k, p in enumerate(DARTS_PRIMITIVES)}

    def mask(rows):
        m = torch.zeros(14, 8)
        for e, ops in rows.items():
            for op in ops:
                m[e, col[op]] = 1
        return m

    rest = {e: ("none", "avg_pool_3x3") for e in range(14)}
    normal = mask({**rest, 0: ("skip_connect", "sep_conv_3x3"), 1: ("sep_conv_5x5", "dil_conv_3x3"),
                   4: ("none", "max_pool_3x3"), 8: ("sep_conv_3x3", "avg_pool_3x3"),
                   13: ("skip_connect", "max_pool_3x3")})
    reduce = mask({e: ("skip_connect", "sep_conv_3x3") for e in range(14)})
    R, parts = prdarts_regularizer(A, {"normal": normal, "reduce": reduce}, tau, DARTS_PRIMITIVES, 4)
    # normal: skip 0.9 (edges 0, 13); pool (2×max 0.1 + 10×avg 0.2)/12 = 0.18333;
    #   non-skip (sep3 .3, sep5 .4, dil3 .5, none .05, sep3 .3, 9×none .05)/14 = 2.0/14;
    #   path: chain edges 1, 4, 8, 13 → edge 1: (.4+.5)/2 = .45, edge 8: .3, edges 4, 13 no conv → .135.
    # reduce: skip 0.9; pool nothing → 0; non-skip 0.3; path 0.3⁴ = 0.0081.
    assert chain_edges(4) == [1, 4, 8, 13]
    S, N, Pl, Path = 0.9, (2.0 / 14 + 0.3) / 2, (2.2 / 12 + 0.0) / 2, (0.135 + 0.0081) / 2
    for key, want in (("S", S), ("N", N), ("Pl", Pl), ("Path", Path)):
        assert parts[key].item() == pytest.approx(want, rel=1e-5), key
    # Hinge θ = 0.2: S and N are above it, Pl below (contributes 0).
    want = 0.01 * (S - 0.2) + 0.005 * ((N - 0.2) + 0.0) - 0.005 * Path
    assert R.item() == pytest.approx(want, rel=1e-5)
    R.backward()
    g = A["reduce"].grad
    assert (g[:, col["skip_connect"]] > 0).all()  # pushes skip probability down
    assert (g[:, col["max_pool_3x3"]] == 0).all()  # unselected: no gradient
    # No conv on the chain edges → Path = 0; nothing selected in a group → its mean is 0.
    only_skip = mask({e: ("skip_connect", "none") for e in range(14)})
    _, parts = prdarts_regularizer(A, {"normal": only_skip, "reduce": only_skip}, tau, DARTS_PRIMITIVES, 4)
    assert parts["Path"].item() == 0 and parts["Pl"].item() == 0


def test_prdarts_arch_loss_adds_the_regulariser_of_the_same_forward(monkeypatch):
    model, m = _make("prdarts")
    x, y = _batch(3)
    seen = {}
    orig = m.regularizer

    def spy():
        R, parts = orig()
        seen["masks"] = {k: s.keep.clone() for k, s in model.mixing.last.items()}
        seen["R"] = R
        return R, parts

    monkeypatch.setattr(m, "regularizer", spy)
    counter = model.mixing.rng.counter
    loss = m.arch_loss(x, y)
    assert model.mixing.rng.counter == counter + 1  # one forward, one draw
    assert torch.isfinite(loss) and seen["R"].requires_grad
    assert all(int(v.sum(1).max()) == 2 for v in seen["masks"].values())


# ------------------------------------------------------------------------------------ runs


CASES = [("prdarts", "darts"), ("gdas", "darts"), ("gdas", "nb201"), ("dropnas", "darts")]


@pytest.mark.parametrize("name,space", CASES)
def test_two_steps_recompute_is_identical(name, space):
    hyper = {"gate_seed": 3, **({"drop_rate": 0.1} if name == "dropnas" else {})}
    results = []
    # float64: recompute sums the gradients reaching a cell's inputs in another order, so the two
    # runs agree only up to rounding; in fp32 that rounding (and how far two steps carry it) depends
    # on the CPU's reduction order. In float64 it stays ~1e-13, far under the default tolerances.
    for recompute in (False, True):
        model, m = _make(name, space, recompute=recompute, dtype=torch.float64, **hyper)
        _run(model, m, dtype=torch.float64)
        results.append((model, m))
    (a, ma), (b, mb) = results
    for p, q in zip(a.arch_parameters(), b.arch_parameters()):
        torch.testing.assert_close(p, q)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=k)
    assert a.genotype() == b.genotype()
    assert ma.state_dict()["mixing"] == mb.state_dict()["mixing"]
    for p, p0 in zip(a.arch_parameters(), _make(name, space, dtype=torch.float64, **hyper)[0].arch_parameters()):
        assert not torch.equal(p, p0)  # the architecture did move


@pytest.mark.parametrize("name", ["prdarts", "gdas", "dropnas"])
def test_seed_reproducibility_and_resume(name):
    hyper = {"drop_rate": 0.1} if name == "dropnas" else {}
    model, m = _make(name, gate_seed=7, **hyper)
    _run(model, m)
    model2, m2 = _make(name, gate_seed=7, **hyper)
    _run(model2, m2)
    assert model.genotype() == model2.genotype()
    for p, q in zip(model.arch_parameters(), model2.arch_parameters()):
        assert torch.equal(p, q)
    # Different gate seed: different gates from the same architecture.
    model3, _ = _make(name, gate_seed=8, **hyper)
    model3.load_arch_state_dict(model.arch_state_dict())
    draws = [mm.cell_weights()["normal"].active for mm in (copy.deepcopy(model), model3)]
    assert draws[0] != draws[1]
    # Resume: the method state (with the gate counter) survives torch.save / weights_only load.
    buf = io.BytesIO()
    torch.save({"method": m.state_dict(), "arch": model.arch_state_dict(), "model": model.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model4, m4 = _make(name, seed=123, **hyper)  # different global seed and gate seed
    model4.load_state_dict(state["model"])
    model4.load_arch_state_dict(state["arch"])
    m4.load_state_dict(state["method"])
    assert model4.cell_weights()["reduce"].active == model.cell_weights()["reduce"].active


def test_gdas_genotype_rules():
    model, _ = _make("gdas")
    prims = model.edge_primitives["normal"][1]  # GDAS searches D-X-Y's NASNet-super: D-X-Y's op order
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.alphas_normal[1, prims.index("sep_conv_3x3")] = 5
        model.alphas_normal[1, prims.index("dil_conv_3x3")] = 4
    g = model.genotype()
    assert g.normal[:2] == [("sep_conv_3x3", 1), ("dil_conv_3x3", 1)]  # both from the same input
    nb, _ = _make("gdas", "nb201")
    assert len(nb.genotype().tostr().split("+")) == 3


def test_dropnas_step_rescales_kept_ops_and_is_single_level():
    model, m = _make("dropnas", drop_rate=0.3, gate_seed=2)
    x, y = _batch(0)
    m.step((x, y), None, 0)  # single level: no validation batch needed
    samples = model.mixing.last
    for kind, s in samples.items():
        alpha = getattr(model, f"alphas_{kind}").detach()
        mass = (F.softmax(alpha, -1) * s.keep).sum(-1)
        dropped = (~s.keep).any(-1)
        assert dropped.any()
        # Both sides add at most 8 fp32 softmax terms (≤ 1 in sum), in possibly different orders:
        # |error| ≤ 8·eps32·1 ≈ 1e-6; rtol=1e-5 leaves 10x margin and is still far below any real bug.
        torch.testing.assert_close(mass[dropped], s.ratio[dropped].to(mass.dtype), rtol=1e-5, atol=1e-6)


def test_dropnas_warmup_keeps_everything_and_freezes_alpha():
    model, m = _make("dropnas", arch_warmup=1)
    a0 = [a.detach().clone() for a in model.arch_parameters()]
    m.step(_batch(0), None, 0)
    assert all(all(len(act) == 8 for act in cw.active) for cw in [model.cell_weights()["normal"]])
    for a, b in zip(a0, model.arch_parameters()):
        assert torch.equal(a, b)
    m.begin_epoch(1)
    assert model.mixing.drop_rate == (3e-5, 3e-5)


def test_dropnas_partial_decay_masks_follow_gradients():
    model, m = _make("dropnas")
    w = m.weights[0]
    w.grad = torch.zeros_like(w)
    for p in m.weights[1:]:
        p.grad = None
    a = m.arch[0]
    a.grad = torch.zeros_like(a)
    a.grad[0, 0] = 1.0
    for b in m.arch[1:]:
        b.grad = None
    assert m.decay_loss().item() == pytest.approx(1e-3 * a[0, 0].item() ** 2)
    w.grad.view(-1)[0] = 1.0
    want = 3e-4 * w.pow(2).sum().item() + 1e-3 * a[0, 0].item() ** 2
    assert m.decay_loss().item() == pytest.approx(want, rel=1e-6)


def test_dropnas_groups_follow_the_supernet_primitives():
    """RobustDARTS' S3 list on the DARTS space: the mixing groups those 3 ops, and a step runs on them."""
    from fastdarts.spaces.robust import robust_primitives

    torch.manual_seed(0)
    s3 = ["none", "skip_connect", "sep_conv_3x3"]
    model = fastdarts.build_supernet("darts", "dropnas", C=4, num_classes=10, layers=3, primitives=s3)
    assert model.mixing.primitives == tuple(s3) and model.mixing._group_ids == (1, 1, 0)
    m = DropNAS(model, DropNAS.resolve_hyper({"epochs": 2, "drop_rate": 0.3, "gate_seed": 1}))
    m.begin_epoch(0)
    m.step(_batch(0), None, 0)
    assert all(s.keep.shape[-1] == 3 for s in model.mixing.last.values())
    same = fastdarts.build_supernet("darts", "dropnas", C=4, num_classes=10, layers=3,
                                    primitives=robust_primitives("s3"))
    assert same.mixing.primitives == tuple(s3)
    with pytest.raises(ValueError, match="same list on every edge"):
        fastdarts.build_supernet("darts", "dropnas", C=4, num_classes=10, layers=3, primitives=robust_primitives("s1"))


def test_wrong_supernet_is_rejected():
    torch.manual_seed(0)
    model = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=3)
    with pytest.raises(ValueError, match="HardConcreteMixing"):
        PRDarts(model, PRDarts.resolve_hyper({}))


@pytest.mark.parametrize("name", ["dropnas", "prdarts"])
def test_resumed_step_equals_unbroken_step(name):
    """Checkpoint after one step, restore into fresh objects: the next step is bit-identical."""
    hyper = {"drop_rate": 0.3} if name == "dropnas" else {}
    model, m = _make(name, gate_seed=4, **hyper)
    m.step(_batch(0), _batch(100), 0)
    buf = io.BytesIO()
    torch.save({"method": m.state_dict(), "arch": model.arch_state_dict(), "model": model.state_dict()}, buf)
    m.step(_batch(1), _batch(101), 1)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    model2, m2 = _make(name, seed=9, **hyper)
    model2.load_state_dict(state["model"])
    model2.load_arch_state_dict(state["arch"])
    m2.load_state_dict(state["method"])
    m2.step(_batch(1), _batch(101), 1)
    for p, q in zip(model.arch_parameters(), model2.arch_parameters()):
        assert torch.equal(p, q)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
