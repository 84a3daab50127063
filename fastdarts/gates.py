"""How an edge turns architecture tensors into mixing weights (softmax, simplex, sampled gates).

A :class:`Mixing` is owned by a supernet. Once per forward and per cell type it maps the
architecture tensors (α: ``[E, K]`` op logits or simplex rows, optionally β: ``[E]`` edge
weights) to a :class:`CellWeights`, shared by every cell of that type.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastdarts.functional import device_index
from fastdarts.spaces.common import node_edge_slices


@dataclass
class CellWeights:
    """Weights used by the cells of one type for one forward.

    ``weights``: ``[E, K]`` float32 op weights. ``edge_weights``: ``[E]`` or None (PC-DARTS β).
    ``active``: per edge, the candidate indices to compute (sampled gates), or None for all.
    ``edge_bias``: ``[E]`` scalars for each edge output, or None. GDAS sets the zero-valued sum
    of the unselected straight-through gates; only the NAS-Bench-201 cell adds it (D-X-Y's
    ``NAS201SearchCell.forward_gdas``), the DARTS-space cells do not (``MixedOp.forward_gdas``).
    """

    weights: torch.Tensor
    edge_weights: torch.Tensor | None = None
    active: list[tuple[int, ...]] | None = None
    edge_bias: torch.Tensor | None = None


def normalize_per_node(beta: torch.Tensor, steps: int, fn) -> torch.Tensor:
    """Apply ``fn`` (softmax or sum-normalisation) to β within each node's incoming edges."""
    return torch.cat([fn(beta[s]) for s in node_edge_slices(steps)], dim=0)


def autocast_off(fn):
    """Run ``all_cell_weights`` with autocast disabled: mixing weights (softmax, gates, β) are computed
    in fp32 from the fp32 architecture tensors even inside a ``torch.autocast`` region (``amp=bf16|fp16``),
    so only the candidate ops run in low precision and the gradients reaching α/β are fp32."""

    @functools.wraps(fn)
    def wrapper(self, archs: dict, steps: int):
        alpha = next(iter(archs.values()))[0]
        with torch.autocast(alpha.device.type, enabled=False):
            return fn(self, archs, steps)

    return wrapper


class Mixing:
    """DARTS: ``weights = softmax(α)`` per edge; α initialised ``1e-3·N(0, 1)``."""

    uses_betas = False

    def init_alpha(self, num_edges: int, num_ops: int) -> torch.Tensor:
        return 1e-3 * torch.randn(num_edges, num_ops)

    def init_beta(self, num_edges: int, steps: int) -> torch.Tensor:
        return 1e-3 * torch.randn(num_edges)

    def cell_weights(self, alpha: torch.Tensor, beta: torch.Tensor | None, steps: int) -> CellWeights:
        return CellWeights(F.softmax(alpha, dim=-1))

    def genotype_weights(self, alpha: torch.Tensor, beta: torch.Tensor | None, steps: int) -> torch.Tensor:
        """Per-edge, per-op scores that the DARTS genotype rule ranks."""
        return self.cell_weights(alpha, beta, steps).weights

    @autocast_off
    def all_cell_weights(self, archs: dict, steps: int) -> dict[str, CellWeights]:
        """Weights of every cell type of one forward: ``archs`` maps kind -> (α, β).

        Supernets call this once per forward; samplers override it to draw all cell types
        together (one counter step, one device→host copy)."""
        return {kind: self.cell_weights(alpha, beta, steps) for kind, (alpha, beta) in archs.items()}

    def state_dict(self) -> dict:
        """Mixing state a checkpoint must keep (samplers: RNG counter, temperature, ...)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PartialChannelMixing(Mixing):
    """PC-DARTS: ``softmax(α)`` per edge and ``softmax(β)`` over each node's incoming edges."""

    uses_betas = True

    def cell_weights(self, alpha, beta, steps):
        return CellWeights(F.softmax(alpha, dim=-1), normalize_per_node(beta, steps, lambda b: F.softmax(b, dim=-1)))

    def genotype_weights(self, alpha, beta, steps):
        cw = self.cell_weights(alpha, beta, steps)
        return cw.weights * cw.edge_weights[:, None]


class SimplexMixing(Mixing):
    """GAEA: α rows live on the simplex and are used directly (no softmax); β sums to 1 per node.

    α starts uniform (1/K); β starts at 1/(number of inputs of the node) (liamcli/gaea_release).
    """

    def __init__(self, uses_betas: bool = False):
        self.uses_betas = uses_betas

    def init_alpha(self, num_edges, num_ops):
        return torch.full((num_edges, num_ops), 1.0 / num_ops)

    def init_beta(self, num_edges, steps):
        return torch.cat([torch.full((s.stop - s.start,), 1.0 / (s.stop - s.start)) for s in node_edge_slices(steps)])

    def cell_weights(self, alpha, beta, steps):
        return CellWeights(alpha, beta if self.uses_betas else None)

    def genotype_weights(self, alpha, beta, steps):
        return alpha * beta[:, None] if self.uses_betas else alpha


# ==============================================================================================
# Sampled gates: PR-DARTS hard-concrete gates, DropNAS grouped masks, GDAS Gumbel one-hot
# ==============================================================================================
#
# Every sampler draws on the device of α from a torch.Generator seeded with
# hash(seed, counter, stream) (or, on CUDA, from Triton's tl.rand with that seed): no host RNG,
# no host synchronisation while sampling. ``counter`` advances once per supernet forward (each
# forward, weight step or architecture step, draws new gates); ``stream`` is the cell type.
# The candidates each edge computes must be known on the host (Python chooses which op modules
# run), so a forward makes exactly one device→host copy: the keep masks of all edges of all cell
# types, concatenated, then one ``.tolist()``.

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int, counter: int, stream: int) -> int:
    """A 63-bit seed that depends on all of ``(seed, counter, stream)`` (splitmix64 chain)."""
    h = _splitmix64(int(seed) & _MASK64)
    h = _splitmix64(h ^ (int(counter) & _MASK64))
    h = _splitmix64(h ^ (int(stream) & _MASK64))
    return h >> 1


class GateRNG:
    """Counter-based, device-side random streams for gate sampling.

    ``generator(device, stream)`` returns a fresh ``torch.Generator`` on ``device`` seeded with
    ``mix_seed(seed, counter, stream)``; ``advance()`` moves to the next forward. The state is two
    integers (``state_dict``), so a resumed search reproduces every gate.

    Args:
        seed: base seed; None draws one from torch's global generator (so ``torch.manual_seed``
            before building the supernet makes the gate stream reproducible).
    """

    def __init__(self, seed: int | None = None):
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = int(seed)
        self.counter = 0

    def stream_seed(self, stream: int) -> int:
        return mix_seed(self.seed, self.counter, stream)

    def generator(self, device, stream: int) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.stream_seed(stream))
        return g

    def triton_seed(self, stream: int) -> int:
        """A 31-bit seed for ``tl.rand`` (the kernels take int32-range seeds)."""
        return self.stream_seed(stream) & 0x7FFFFFFF

    def advance(self) -> None:
        self.counter += 1

    def state_dict(self) -> dict:
        return {"seed": self.seed, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.counter = int(state["seed"]), int(state["counter"])


def _use_triton(sampler: str, device: torch.device) -> bool:
    """Whether to sample with the Triton kernels (``sampler``: "auto" | "torch" | "triton")."""
    if sampler == "torch":
        return False
    from fastdarts.functional import _triton_usable

    usable = _triton_usable(device.type)
    if sampler == "triton":
        if not usable:
            raise ValueError(f"sampler 'triton' is unavailable for {device.type} tensors (needs Triton and a "
                             "CUDA tensor, or TRITON_INTERPRET=1 set before import)")
        return True
    if sampler != "auto":
        raise ValueError(f"unknown sampler {sampler!r}; choose 'auto', 'torch' or 'triton'")
    return usable and device.type == "cuda"


def _uniforms(rng: GateRNG, stream: int, shape, device, use_triton: bool, part: int = 0) -> torch.Tensor:
    """Uniforms in [EPS, 1 − EPS] of ``shape`` from sub-stream ``part`` of ``stream`` (distinct draws per part)."""
    n = 1
    for s in shape:
        n *= int(s)
    if use_triton:
        from fastdarts.kernels.gates import NOISE_UNIFORM, gate_noise_triton

        # Sub-streams are disjoint Philox counter ranges of width 2**24 (a cell type has ~112 gates).
        return gate_noise_triton(n, device, NOISE_UNIFORM, rng.triton_seed(stream), part << 24).view(*shape)
    g = rng.generator(device, 16 * stream + part)
    return torch.rand(*shape, generator=g, device=device).clamp_(UNIFORM_EPS, 1.0 - UNIFORM_EPS)


UNIFORM_EPS = 1e-6  # = fastdarts.kernels.gates.EPS (kept here so the import needs no Triton)


@dataclass
class GateSample:
    """What a sampler drew for one cell type in one forward (kept, detached, for regularisers and updates).

    ``keep``: ``[E, K]`` bool, the candidates each edge computes. ``weights``: ``[E, K]`` the
    straight-through gate values / renormalised weights. Sampler-specific extras: ``z`` (PR-DARTS
    gates), ``tau`` (temperature), ``ratio`` (DropNAS kept probability mass per edge).
    """

    keep: torch.Tensor
    weights: torch.Tensor
    z: torch.Tensor | None = None
    tau: float | None = None
    ratio: torch.Tensor | None = None
    bad: torch.Tensor | None = None  # 0-d bool: the draw must be repeated (non-finite values)


class SampledMixing(Mixing):
    """Base of the samplers: draws all cell types of a forward at once with one host copy.

    Supernets call :meth:`all_cell_weights` (one call per forward, all cell types); a plain
    :meth:`cell_weights` call samples a single cell type (and then costs its own host copy).
    ``last`` holds the :class:`GateSample` of each cell type of the latest forward.

    Args:
        seed: gate seed (None: drawn from torch's global generator).
        sampler: "auto" (Triton on CUDA when available, else torch), "torch" or "triton".
    """

    genotype_rule = "darts"
    max_redraws = 8  # GDAS only: redraws when a sample has non-finite values

    def __init__(self, seed: int | None = None, sampler: str = "auto"):
        self.rng = GateRNG(seed)
        self.sampler = sampler
        self.last: dict[str, GateSample] = {}

    # -- to implement -------------------------------------------------------------------------
    def sample(self, alpha: torch.Tensor, steps: int, stream: int, use_triton: bool) -> GateSample:
        raise NotImplementedError

    def edge_bias(self, sample: GateSample) -> torch.Tensor | None:
        return None

    # -- shared machinery ---------------------------------------------------------------------
    @autocast_off
    def all_cell_weights(self, archs: dict, steps: int) -> dict[str, CellWeights]:
        """Sample every cell type of one forward: ``archs`` maps kind -> (α, β). One host copy."""
        kinds = list(archs)
        for _ in range(self.max_redraws):
            samples = {}
            for stream, kind in enumerate(kinds):
                alpha = archs[kind][0]
                samples[kind] = self.sample(alpha, steps, stream, _use_triton(self.sampler, alpha.device))
            self.rng.advance()
            flat = [s.keep.reshape(-1).to(torch.uint8) for s in samples.values()]
            flat += [s.bad.reshape(1).to(torch.uint8) for s in samples.values() if s.bad is not None]
            host = torch.cat(flat).tolist()  # the one device→host copy of this forward
            n_masks = sum(s.keep.numel() for s in samples.values())
            if not any(host[n_masks:]):
                break
        else:
            raise FloatingPointError(f"{type(self).__name__}: {self.max_redraws} draws in a row had non-finite "
                                     "gates; check the architecture parameters")
        out, pos = {}, 0
        for kind in kinds:
            s = samples[kind]
            E, K = s.keep.shape
            active = []
            for e in range(E):
                row = host[pos + e * K: pos + (e + 1) * K]
                active.append(tuple(k for k in range(K) if row[k]))
            pos += E * K
            out[kind] = CellWeights(s.weights, None, active, self.edge_bias(s))
        # Kept detached: regularisers and updates need the masks only, and a supernet holding
        # graph-attached tensors could not be deep-copied.
        self.last = {kind: GateSample(s.keep, s.weights.detach(), None if s.z is None else s.z.detach(), s.tau,
                                      s.ratio, s.bad) for kind, s in samples.items()}
        return out

    def cell_weights(self, alpha, beta, steps):
        return self.all_cell_weights({"normal": (alpha, beta)}, steps)["normal"]

    def state_dict(self) -> dict:
        return {"rng": self.rng.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.load_state_dict(state["rng"])


# ---------------------------------------------------------------------------- PR-DARTS

HC_LIMIT_A, HC_LIMIT_B = -0.1, 1.1


def hard_concrete_prob_nonzero(A: torch.Tensor, tau: float, a: float = HC_LIMIT_A, b: float = HC_LIMIT_B):
    """``P(z ≠ 0) = σ(A − τ·log(−a/b))`` of the stretched hard-concrete gate (PR-DARTS' regulariser P)."""
    return torch.sigmoid(A - tau * math.log(-a / b))


def hard_concrete_prob_zero(A: torch.Tensor, tau: float, a: float = HC_LIMIT_A, b: float = HC_LIMIT_B):
    """``P(z = 0) = P(s ≤ −a/(b−a))``.

    With ``s = σ((A+L)/τ)`` and L logistic, ``P(s < c) = σ(τ·logit(c) − A)``; here
    ``logit(−a/(b−a)) = log(−a/b)``, so ``P(z = 0) = σ(τ·log(−a/b) − A)``."""
    c = -a / (b - a)
    return torch.sigmoid(tau * math.log(c / (1 - c)) - A)


def hard_concrete_prob_one(A: torch.Tensor, tau: float, a: float = HC_LIMIT_A, b: float = HC_LIMIT_B):
    """``P(z = 1) = P(s ≥ (1−a)/(b−a)) = σ(A − τ·logit((1−a)/(b−a)))``, i.e. ``σ(A − τ·log((1−a)/(b−1)))``."""
    c = (1 - a) / (b - a)
    return torch.sigmoid(A - tau * math.log(c / (1 - c)))


def hard_concrete_from_uniforms(A: torch.Tensor, tau: float, u: torch.Tensor,
                                a: float = HC_LIMIT_A, b: float = HC_LIMIT_B) -> torch.Tensor:
    """Eager reference of the gate transform: ``z = clamp(σ((A + log u − log(1−u))/τ)(b−a)+a, 0, 1)``."""
    s = torch.sigmoid((A + torch.log(u) - torch.log1p(-u)) / tau)
    return torch.clamp(s * (b - a) + a, 0.0, 1.0)


def select_topk_gates(z: torch.Tensor, drop: torch.Tensor, perm: torch.Tensor, k: int) -> torch.Tensor:
    """PR-DARTS hard mask: per row the ``k`` largest of ``z − drop``, ties broken by the column
    permutation ``perm`` (the op first in permuted order wins). Returns ``[E, K]`` float 0/1."""
    zp = (z.detach() - drop)[:, perm]
    # A stable descending sort keeps permuted order among equal values: a device-side,
    # deterministic version of "top-k after a random column shuffle".
    order = torch.sort(zp, dim=1, descending=True, stable=True).indices[:, :k]
    chosen = perm[order]
    return torch.zeros_like(z).scatter_(1, chosen, 1.0)


class TemperedMixing(SampledMixing):
    """A sampler with a temperature τ (annealed per epoch by its method) that ranks ops by softmax(α)."""

    genotype_rule = "topk_pairs"

    def __init__(self, tau: float, seed: int | None = None, sampler: str = "auto"):
        super().__init__(seed, sampler)
        self.set_temperature(tau)

    def set_temperature(self, tau: float) -> None:
        if not tau > 0:
            raise ValueError(f"temperature must be > 0, got {tau}")
        self.tau = float(tau)

    def genotype_weights(self, alpha, beta, steps):
        return F.softmax(alpha, dim=-1)

    def state_dict(self):
        return {**super().state_dict(), "tau": self.tau}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.tau = float(state["tau"])


class HardConcreteMixing(TemperedMixing):
    """PR-DARTS group-structured sparse binary gates (salesforce/PR-DARTS, ALGORITHMS.md §4).

    Per forward and cell type, for every (edge, op): ``u ~ U(0,1)``,
    ``z = clamp(σ((A + log u − log(1−u))/τ)(b−a)+a, 0, 1)`` with ``a = −0.1``, ``b = 1.1``;
    dropout ``d ~ Bernoulli(0.4)``; one random permutation of the op columns (all edges) breaks
    ties; ``m`` = top-``k`` (k = 2) of ``z − d`` per edge; the weights are
    ``h = m − stopgrad(z) + z`` (value m, gradient dz/dA) and only the ``k`` selected ops run.

    Args:
        k: ops kept per edge. dropout: probability of the gate dropout ``d``.
        tau: initial temperature (PR-DARTS anneals it per epoch, :meth:`set_temperature`).
        seed, sampler: see :class:`SampledMixing`.
    """

    def __init__(self, k: int = 2, dropout: float = 0.4, tau: float = 1.0, seed: int | None = None,
                 sampler: str = "auto"):
        super().__init__(tau, seed, sampler)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.dropout = int(k), float(dropout)

    def sample(self, alpha, steps, stream, use_triton):
        E, K = alpha.shape
        if self.k > K:
            raise ValueError(f"cannot keep k={self.k} of {K} candidates per edge")
        dev = alpha.device
        if use_triton:
            from fastdarts.kernels.gates import hard_concrete_triton

            z = hard_concrete_triton(alpha.float(), self.tau, self.rng.triton_seed(stream), 3 << 24)
        else:
            z = hard_concrete_from_uniforms(alpha.float(), self.tau, _uniforms(self.rng, stream, (E, K), dev, False, 0))
        u_drop = _uniforms(self.rng, stream, (E, K), dev, use_triton, 1)
        u_perm = _uniforms(self.rng, stream, (K,), dev, use_triton, 2)
        drop = (u_drop < self.dropout).float()
        # ⚠ code differs from paper/code: with dropout <= 0 salesforce/PR-DARTS takes another branch
        # (resample while all z are 0, shuffle only when >= k gates equal 1); here the same
        # permuted top-k is used, which always keeps exactly k ops.
        m = select_topk_gates(z, drop, torch.argsort(u_perm), self.k)
        h = m - z.detach() + z
        return GateSample(keep=m > 0, weights=h, z=z, tau=self.tau)


# ---------------------------------------------------------------------------- DropNAS

DROPNAS_PARAMETRIC = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


def dropnas_group_ids(primitives) -> tuple[int, ...]:
    """Group id per op, by name: 0 = parameterised (sep/dil convs), 1 = parameter-free (none, pools, skip)."""
    return tuple(0 if p in DROPNAS_PARAMETRIC else 1 for p in primitives)


class DropNASMixing(SampledMixing):
    """DropNAS grouped operation dropout (wiljohnhong/DropNAS, ALGORITHMS.md §6).

    Per forward, cell type and edge, each op is dropped independently with probability
    ``p = r^(1/4)`` of its group (P: sep/dil convs; NP: none, pools, skip — defined by name, so
    fastdarts' op order works); a group whose ops all drop is redrawn, so every edge keeps ≥ 1 op
    of each group. Kept ops mix with ``w_o = exp(α_o) / Σ_kept exp(α_k)``; dropped ops do not run.

    Args:
        primitives: op names of an edge (default the DARTS primitives).
        drop_rate: r for both groups, or ``(r_P, r_NP)``. ``set_drop_rate(0)`` for warm-up epochs.
        seed, sampler: see :class:`SampledMixing`.
    """

    redraw_rounds = 8

    def __init__(self, primitives=None, drop_rate=3e-5, seed: int | None = None, sampler: str = "auto"):
        super().__init__(seed, sampler)
        from fastdarts.ops import DARTS_PRIMITIVES

        self.primitives = tuple(DARTS_PRIMITIVES if primitives is None else primitives)
        self._group_ids = dropnas_group_ids(self.primitives)
        self._present = {0 if p in DROPNAS_PARAMETRIC else 1 for p in self.primitives}
        self.set_drop_rate(drop_rate)

    def set_drop_rate(self, drop_rate) -> None:
        rates = (drop_rate, drop_rate) if isinstance(drop_rate, (int, float)) else tuple(drop_rate)
        if len(rates) != 2 or not all(0.0 <= float(r) < 1.0 for r in rates):
            raise ValueError(f"drop_rate must be r or (r_P, r_NP) with 0 <= r < 1, got {drop_rate}")
        self.drop_rate = tuple(float(r) for r in rates)
        # p = r^(1/4): r is the probability that a whole 4-op group drops.
        self.drop_prob = tuple(r ** 0.25 for r in self.drop_rate)

    def sample(self, alpha, steps, stream, use_triton):
        E, K = alpha.shape
        if K != len(self.primitives):
            raise ValueError(f"DropNASMixing was built for {len(self.primitives)} ops, α has {K} columns")
        dev = alpha.device
        # Made on the device once (device_index caches it): no host→device copy per forward.
        groups = device_index(self._group_ids, dev)
        p = torch.where(groups == 0, self.drop_prob[0], self.drop_prob[1])  # [K], float32
        T = self.redraw_rounds
        keep = _uniforms(self.rng, stream, (T, E, K), dev, use_triton, 0) >= p  # [T, E, K]
        onehot = F.one_hot(groups, 2).to(keep.dtype)  # [K, 2]
        valid = (keep.float() @ onehot.float()) > 0  # [T, E, 2]: round t keeps something in group g
        # ⚠ code differs from paper/code: DropNAS redraws an all-dropped group in a host loop until
        # it keeps an op. Here T rounds are drawn at once on the device and each (edge, group) takes
        # its first valid round: the same conditional distribution unless all T rounds fail
        # (probability r^T, 1e-8 at r = 0.1); then the op with the largest uniform is kept.
        first = torch.argmax(valid.to(torch.uint8), dim=0)  # [E, 2], 0 when none valid
        chosen = torch.gather(keep, 0, first[:, groups].unsqueeze(0)).squeeze(0)  # [E, K]
        u0 = _uniforms(self.rng, stream, (E, K), dev, use_triton, 1)
        for g in range(2):
            in_g = groups == g  # [K]
            if g not in self._present:  # this edge has no op of group g
                continue
            best = F.one_hot(u0.masked_fill(~in_g, -1.0).argmax(-1), K).bool()  # [E, K]
            failed = ~valid[:, :, g].any(0)  # [E]
            chosen = torch.where(failed[:, None] & in_g, best, chosen)
        a = alpha.float()
        w = F.softmax(a.masked_fill(~chosen, float("-inf")), dim=-1)
        with torch.no_grad():
            ea = torch.exp(a - a.max(dim=-1, keepdim=True).values)
            ratio = (ea * chosen).sum(-1) / ea.sum(-1)
        return GateSample(keep=chosen, weights=w, ratio=ratio)

    def genotype_weights(self, alpha, beta, steps):
        return alpha  # DropNAS derives the genotype from raw α

    def state_dict(self):
        return {**super().state_dict(), "drop_rate": list(self.drop_rate)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.set_drop_rate(tuple(state["drop_rate"]))


# ---------------------------------------------------------------------------- GDAS


class GumbelMixing(TemperedMixing):
    """GDAS Gumbel-softmax hard sampling (D-X-Y/AutoDL-Projects, ALGORITHMS.md §8).

    ``logits = (log_softmax(α) + G)/τ``, ``p = softmax(logits)``, ``idx = argmax p``,
    ``h = one_hot(idx) − stopgrad(p) + p``. Only ``op[idx]`` runs and the edge computes
    ``h[idx]·op_idx(x)``. :attr:`CellWeights.edge_bias` carries ``Σ_{o≠idx} h[o]`` (zero in value,
    a gradient path to every logit): the NAS-Bench-201 cell adds it to the edge output, the
    DARTS-space cells do not, as in D-X-Y's two ``forward_gdas`` (``search_cells.py``).
    α is used in its own precision (float64 stays float64), at least float32.

    Args:
        tau: initial temperature (GDAS anneals 10 → 0.1 per epoch, :meth:`set_temperature`).
        seed, sampler: see :class:`SampledMixing`.
    """

    # genotype_rule "topk_pairs" on the DARTS space; the NAS-Bench-201 supernet always takes the arg-max.

    def __init__(self, tau: float = 10.0, seed: int | None = None, sampler: str = "auto"):
        super().__init__(tau, seed, sampler)

    def sample(self, alpha, steps, stream, use_triton):
        E, K = alpha.shape
        dev = alpha.device
        if use_triton:
            from fastdarts.kernels.gates import NOISE_GUMBEL, gate_noise_triton

            G = gate_noise_triton(E * K, dev, NOISE_GUMBEL, self.rng.triton_seed(stream), 0).view(E, K)
        else:
            G = -torch.log(-torch.log(_uniforms(self.rng, stream, (E, K), dev, False, 0)))
        # ⚠ code differs from paper/code: D-X-Y draws G = −log(Exponential(1)) and redraws when G or p
        # has inf/NaN (a host check per forward). Clamped uniforms make G finite by construction; the
        # NaN/inf check of p rides along in the forward's single host copy and triggers a redraw.
        a = alpha.to(torch.promote_types(alpha.dtype, torch.float32))
        p = F.softmax((F.log_softmax(a, dim=-1) + G) / self.tau, dim=-1)
        idx = p.argmax(dim=-1)
        one_hot = F.one_hot(idx, K).to(p.dtype)
        h = one_hot - p.detach() + p
        return GateSample(keep=one_hot > 0, weights=h, tau=self.tau, bad=~torch.isfinite(p).all())

    def edge_bias(self, sample):
        return (sample.weights * (~sample.keep)).sum(-1)
