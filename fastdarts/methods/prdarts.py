"""PR-DARTS (salesforce/PR-DARTS ``test_PRDARTS.py``, ``search_model_prdarts_nasnet.py``; ALGORITHMS.md §4).

Also home of :class:`SampledGateMethod`, the small base shared by the sampled-gate methods
(PR-DARTS, GDAS, DropNAS): gate seed, temperature schedule and the mixing's checkpoint state.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fastdarts.functional import device_index
from fastdarts.gates import HardConcreteMixing, SampledMixing, hard_concrete_prob_nonzero
from fastdarts.methods.base import SearchMethod
from fastdarts.spaces.common import node_edge_slices


class SampledGateMethod(SearchMethod):
    """A method whose supernet samples gates each forward (:class:`~fastdarts.gates.SampledMixing`).

    Hyper-parameters: ``gate_seed`` (None: the seed the mixing drew from torch's global
    generator when the supernet was built) and, for tempered samplers, ``tau_max``/``tau_min``
    with ``τ_t = τ_max − (τ_max − τ_min)·t/(T − 1)`` set at the start of each epoch.
    The checkpoint state includes the mixing's (seed, counter, temperature), so a resumed
    search draws the same gates as an unbroken one.
    """

    mixing_cls: type[SampledMixing] = SampledMixing

    def __init__(self, model, hyper):
        super().__init__(model, hyper)
        self.gates = model.mixing
        if not isinstance(self.gates, self.mixing_cls):
            raise ValueError(f"{type(self).__name__} needs a supernet built with {self.mixing_cls.__name__}, "
                             f"got {type(self.gates).__name__} (build it with method={self.name!r})")
        if self.hp.get("gate_seed") is not None:
            self.gates.rng.seed = int(self.hp["gate_seed"])
            self.gates.rng.counter = 0

    def temperature_at(self, epoch: int) -> float:
        hi, lo, T = float(self.hp["tau_max"]), float(self.hp["tau_min"]), int(self.hp["epochs"])
        return hi - (hi - lo) * epoch / max(T - 1, 1)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if hasattr(self.gates, "set_temperature"):
            self.gates.set_temperature(self.temperature_at(epoch))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mixing": self.gates.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gates.load_state_dict(state["mixing"])
        super().load_state_dict(state)


# ------------------------------------------------------------------------------------ regulariser
# Groups of salesforce/PR-DARTS, given there as column indices of D-X-Y's op order
# (none, skip, sep3, sep5, dil3, dil5, avg, max); here by name, so any op order works.
PR_SKIP = ("skip_connect",)
PR_POOL = ("avg_pool_3x3", "max_pool_3x3")
# ⚠ code differs from paper: the code counts `none` in the "non-skip" group with the four convs.
PR_NONSKIP = ("none", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
PR_CONV = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")  # path-depth term


def _columns(primitives: Sequence[str], names: Sequence[str]) -> list[int]:
    return [k for k, p in enumerate(primitives) if p in names]


def chain_edges(steps: int) -> list[int]:
    """Edges of the deepest path s1 → n0 → n1 → ...: node i's edge from the state just before it
    (D-X-Y names 0←1, 1←2, 2←3, 3←4; fastdarts edges 1, 4, 8, 13 for 4 nodes)."""
    return [s.stop - 1 for s in node_edge_slices(steps)]


def hinge(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[x]_θ = x − θ if x > θ else 0``."""
    return torch.clamp(x - threshold, min=0.0)


def group_mean(P: torch.Tensor, m: torch.Tensor, cols: list[int]) -> torch.Tensor:
    """``Σ_{e, o∈G} P·m / Σ_{e, o∈G} m`` (0 when nothing in the group is selected)."""
    if not cols:
        return P.new_zeros(())
    # Indexing with a Python list would copy it to the device each call (a host round trip on CUDA).
    idx = device_index(cols, P.device)
    Pg, mg = P.index_select(1, idx), m.index_select(1, idx)
    return (Pg * mg).sum() / mg.sum().clamp_min(1.0)  # m is 0/1: a non-zero count is >= 1


def path_depth(P: torch.Tensor, m: torch.Tensor, conv_cols: list[int], steps: int) -> torch.Tensor:
    """``Π r_e`` over the chain edges with a selected conv, ``r_e = Σ_conv P·m / Σ_conv m`` (0 if none)."""
    if not conv_cols:
        return P.new_zeros(())
    rows, cols = device_index(chain_edges(steps), P.device), device_index(conv_cols, P.device)
    Pc, mc = P.index_select(0, rows).index_select(1, cols), m.index_select(0, rows).index_select(1, cols)
    den = mc.sum(-1)
    has = den > 0
    r = (Pc * mc).sum(-1) / den.clamp_min(1.0)
    prod = torch.where(has, r, torch.ones_like(r)).prod()
    return torch.where(has.any(), prod, torch.zeros_like(prod))


def prdarts_regularizer(A: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], tau: float,
                        primitives: Sequence[str], steps: int, lambdas=(0.01, 0.005, 0.005),
                        threshold: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``R = λ1·[S]_θ + λ2·([N]_θ + [Pl]_θ) − λ3·Path`` (ALGORITHMS.md §4).

    ``A``/``masks``: per cell type, gate logits ``[E, K]`` and the 0/1 mask ``m`` of the same
    forward. ``P = σ(A − τ·log(−a/b))`` is the probability that a gate is non-zero; S, N, Pl are
    the P·m-means of the skip, non-skip and pooling groups and Path the chain-path product,
    each averaged over the cell types. Returns ``(R, parts)``.
    """
    skip, pool = _columns(primitives, PR_SKIP), _columns(primitives, PR_POOL)
    nonskip, conv = _columns(primitives, PR_NONSKIP), _columns(primitives, PR_CONV)
    S = N = Pl = Path = 0.0
    kinds = list(A)
    for kind in kinds:
        P = hard_concrete_prob_nonzero(A[kind].float(), tau)
        m = masks[kind].detach().float()
        S = S + group_mean(P, m, skip)
        N = N + group_mean(P, m, nonskip)
        Pl = Pl + group_mean(P, m, pool)
        Path = Path + path_depth(P, m, conv, steps)
    n = len(kinds)
    S, N, Pl, Path = S / n, N / n, Pl / n, Path / n
    l1, l2, l3 = lambdas
    R = l1 * hinge(S, threshold) + l2 * (hinge(N, threshold) + hinge(Pl, threshold)) - l3 * Path
    return R, {"S": S, "N": N, "Pl": Pl, "Path": Path}


class PRDarts(SampledGateMethod):
    """PR-DARTS: sparse binary hard-concrete gates with a group and path-depth regulariser.

    Per iteration: weight step on the training batch (SGD Nesterov, lr 0.025 → 0.001 cosine by
    epoch, wd 5e-4, clip 5), then an architecture step on the validation batch (Adam 3e-4,
    betas (0.5, 0.999), wd 1e-3) on ``CE + R`` with the regulariser R of that forward's mask.
    τ falls linearly 1 → 0.1 over the epochs. Each forward draws new gates (k = 2 ops per edge,
    gate dropout 0.4). Genotype: the 2 best (op, input) pairs per node from softmax(A).

    Paper setting: 200 epochs, batch 250, 6 cells (``layers=6``), C=16.
    """

    name = "prdarts"
    spaces = ("darts",)
    mixing_cls = HardConcreteMixing
    DEFAULTS = dict(
        SearchMethod.DEFAULTS,
        # configs/PRDARTS-NASNet-optimizer.config:5, 12; 6 cells = NASNet-super N=2 (PRDARTS-NASNet-archs.config:5)
        epochs=200, batch_size=250, layers=6,
        w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=5e-4, w_nesterov=True,
        w_grad_clip=5.0, alpha_lr=3e-4, alpha_betas=(0.5, 0.999), alpha_weight_decay=1e-3,
        lr_schedule_offset=0,  # D-X-Y-style cosine by epoch index
        step_order="weight_first",  # weight step, then architecture step
        tau_max=1.0, tau_min=0.1, topk=2, gate_dropout=0.4,
        lambda1=0.01, lambda2=0.005, lambda3=0.005, reg_threshold=0.2, gate_seed=None,
    )

    @classmethod
    def mixing(cls, options):
        return HardConcreteMixing()

    def __init__(self, model, hyper):
        super().__init__(model, hyper)
        self.gates.k = int(self.hp["topk"])
        self.gates.dropout = float(self.hp["gate_dropout"])

    def regularizer(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """R of the latest forward (its masks and temperature)."""
        last = self.gates.last
        A = {kind: getattr(self.model, f"alphas_{kind}") for kind in last}
        masks = {kind: s.keep for kind, s in last.items()}
        tau = next(iter(last.values())).tau
        prims = self.model.edge_primitives["normal"][0]
        lambdas = (self.hp["lambda1"], self.hp["lambda2"], self.hp["lambda3"])
        return prdarts_regularizer(A, masks, tau, prims, self.model._steps, lambdas, self.hp["reg_threshold"])

    def arch_loss(self, x, y):
        loss = self.criterion(self.forward(x), y)
        R, _ = self.regularizer()  # outside autocast: fp32
        return loss + R
