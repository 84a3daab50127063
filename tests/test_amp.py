"""amp=bf16|fp16: low-precision candidate ops, fp32 architecture tensors, GradScaler plumbing (CPU)."""

import copy
import os

import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts.config import SearchConfig
from fastdarts.data import DataConfig
from fastdarts.gates import Mixing
from fastdarts.methods import get_method
from fastdarts.mixed import MixedOp
from fastdarts.ops import DARTS_PRIMITIVES
from fastdarts.spaces import build_supernet

U_BF16 = 2.0 ** -8  # bf16 unit roundoff: 8 significand bits (7 stored), round to nearest

# bf16 roundings on each candidate's path under CPU autocast: every conv rounds its input and its
# weight to bf16 and its output to bf16 (3 per conv, fp32 accumulation inside); the final BatchNorm of
# a conv op gets a bf16 input and writes a bf16 output (1 more). Pools, skip and none run in fp32 (0).
CONVS = {"none": 0, "max_pool_3x3": 0, "avg_pool_3x3": 0, "skip_connect": 0, "sep_conv_3x3": 4,
         "sep_conv_5x5": 4, "dil_conv_3x3": 2, "dil_conv_5x5": 2}
ROUNDINGS = {p: 3 * n + (1 if n else 0) for p, n in CONVS.items()}


@pytest.mark.parametrize("backend", ["eager", "cpp"])
def test_bf16_arch_gradient_within_rounding_bound(backend):
    """∂L/∂α of one mixed edge under bf16 autocast vs fp32, entry by entry.

    L = ⟨g, Σ_k w_k·op_k(x)⟩ with a fixed fp32 g and w = softmax(α) (fp32, outside autocast), so
    ∂L/∂w_k = ⟨g, op_k(x)⟩. First-order error model: each bf16 rounding perturbs a tensor by at most
    u = 2^-8 relative to its norm and each stage (conv, BatchNorm, ReLU) passes a relative perturbation
    on without amplifying it, so ‖Δop_k‖ ≤ r_k·u·‖op_k‖ with r_k the roundings above, and by
    Cauchy-Schwarz |Δ∂L/∂w_k| ≤ r_k·u·‖g‖·‖op_k‖ =: b_k. The fp32 softmax Jacobian J = diag(w) − wwᵀ
    maps it to |Δ∂L/∂α| ≤ |J|·b (the mixed sum accumulates in fp32: its rounding is O(2^-24), below this).
    """
    torch.manual_seed(0)
    op = MixedOp(4, 1, DARTS_PRIMITIVES, backend=backend)
    x = torch.randn(4, 4, 8, 8)
    g = torch.randn(4, 4, 8, 8)
    alpha = (1e-3 * torch.randn(len(DARTS_PRIMITIVES))).requires_grad_(True)

    def grad(amp):
        a = alpha.detach().clone().requires_grad_(True)
        w = Mixing().all_cell_weights({"normal": (a, None)}, 4)["normal"].weights
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            w_in = Mixing().all_cell_weights({"normal": (a, None)}, 4)["normal"].weights
            assert w_in.dtype == torch.float32  # mixing weights stay fp32 inside autocast
            out = op(x, w_in)
        (da,) = torch.autograd.grad((out.float() * g).sum(), a)
        return w.detach(), da

    w, ref = grad(False)
    _, low = grad(True)
    assert low.dtype == torch.float32
    with torch.no_grad():
        norms = torch.stack([F.relu(x).new_zeros(()) if p == "none" else op._ops[k](x).norm()
                             for k, p in enumerate(DARTS_PRIMITIVES)])
        b = torch.tensor([ROUNDINGS[p] for p in DARTS_PRIMITIVES]) * U_BF16 * g.norm() * norms
        J = torch.diag(w) - torch.outer(w, w)
        bound = J.abs() @ b
    assert torch.all((low - ref).abs() <= bound), ((low - ref).abs() / bound).max()
    assert not torch.equal(low, ref)  # the convs did run in bf16


def test_bf16_search_keeps_fp32_architecture(tmp_path):
    cfg = SearchConfig(method="darts", epochs=1, C=4, layers=3, run_dir=str(tmp_path / "run"), amp="bf16",
                       data=DataConfig(batch_size=8, subset=0.02, arch_subset=0.02, image_size=8))
    result = fastdarts.search(cfg)
    state = torch.load(os.path.join(result.run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["arch"].values())
    assert all(t.dtype == torch.float32 for t in state["model"].values() if t.is_floating_point())
    for s in state["method"]["a_optim"]["state"].values():
        assert all(v.dtype == torch.float32 for k, v in s.items() if k != "step")


def test_fp16_refused_on_cpu(tmp_path):
    cfg = SearchConfig(run_dir=str(tmp_path / "r"), amp="fp16", device="cpu")
    with pytest.raises(ValueError, match="amp=fp16 needs a CUDA device"):
        fastdarts.search(cfg)
    with pytest.raises(ValueError, match="unknown amp"):
        fastdarts.search(SearchConfig(run_dir=str(tmp_path / "r"), amp="bf32"))


# GradScaler plumbing in float64 without autocast: the scale S = 2^10 is a power of two, and
# multiplying by a power of two commutes exactly with every rounded operation (no overflow or
# underflow at these sizes), and every backward is linear in the upstream gradient. So a step on
# S·loss, unscaled by 1/S, gives the same bits as the unscaled step: any missing or doubled unscale
# (S = 1024 off) or a clip applied before unscaling would change them.
CASES = [("darts2", 3, {}), ("lambda_darts", 5, {}), ("dropnas", 3, {}),
         ("pcdarts", 3, {"arch_warmup": 0, "alpha_grad_clip": 1e-3})]


def _method(name, layers, options, model):
    cls = get_method(name)
    hyper = cls.resolve_hyper({"epochs": 3, "layers": layers, "batch_size": 4, **options})
    m = cls(model, hyper)
    m.begin_epoch(1)  # Λ-DARTS: λ_t > 0
    return m


@pytest.mark.parametrize("name,layers,options", CASES)
def test_grad_scaler_steps_equal_unscaled_float64(name, layers, options):
    torch.manual_seed(0)
    model = build_supernet("darts", name, 4, 10, layers).double()
    ref = _method(name, layers, options, model)
    scaled_model = copy.deepcopy(model)
    scaled = _method(name, layers, options, scaled_model)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)
    batches = [(torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4,))) for _ in range(4)]
    for i in range(2):
        ref.step(batches[2 * i], batches[2 * i + 1], i)
        scaled.step(batches[2 * i], batches[2 * i + 1], i)
    for a, b in zip([*model.parameters(), *model.buffers()], [*scaled_model.parameters(), *scaled_model.buffers()]):
        assert torch.equal(a, b)
    assert scaled.scaler.get_scale() == 2.0 ** 12  # grown after each finite iteration (growth_interval=1)


def test_grad_scaler_skips_an_overflowing_step():
    torch.manual_seed(0)
    model = build_supernet("darts", "darts", 4, 10, 3).double()
    m = _method("darts", 3, {}, model)
    m.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    before = [p.detach().clone() for p in [*m.weights, *m.arch]]
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    x[0, 0, 0, 0] = float("inf")  # stands in for an fp16 overflow: non-finite gradients
    batch = (x, torch.randint(0, 10, (4,)))
    m.step(batch, batch, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, [*m.weights, *m.arch]))
    assert m.scaler.get_scale() == 2.0 ** 9  # backed off by the default factor 0.5
