"""Λ-DARTS (dr-faustus/Lambda-DARTS ``sota/cnn/model_search.py``, ``train_search.py``; NAS-Bench-201:
``NAS-Bench201/lib/models/cell_searchs/search_model_darts_v1.py``, ``exps/algos/DARTS-V1.py``).

The architecture step is first-order DARTS, unchanged. The weight step adds a term that makes
the gradients the cells send to their (shared) mixing weights agree:

* every regularised cell ℓ (each normal cell of the DARTS space, each search cell of
  NAS-Bench-201) mixes with its own copy ``W_ℓ = softmax(α)``; reduce cells keep the shared,
  unperturbed weights;
* one forward/backward of ``L_tr`` gives ``∇_w L_tr`` and ``g_ℓ = ∂L_tr/∂W_ℓ``;
* ``d_ℓ = ∂Λ/∂g_ℓ`` for ``Λ_cos = c·Σ_{i<j} cos(g_i, g_j)`` (``corr``) or
  ``Λ_sgn = c·Σ_{i<j} ⟨g_i, g_j⟩/⟨|g_i|, |g_j|⟩`` (``signcorr``), ``c = 1/(L(L−1)/2)``;
* ``ε = ε0/‖concat_ℓ d_ℓ‖``, ``Δ_ℓ = ε·d_ℓ``; two more forward/backward passes on the same
  batch give ``G+ = ∇_w L_tr(W_ℓ − Δ_ℓ)`` and ``G− = ∇_w L_tr(W_ℓ + Δ_ℓ)``;
* ``grad_w = ∇_w L_tr + λ_t·(G+ − G−)/(2ε)`` ≈ ``∇_w (L_tr − λ_t·Λ)``, ``λ_t = λ·epoch/(epochs − 1)``;
  then gradient clipping and the SGD step.

Each finite-difference pass differentiates w.r.t. the weights only (``torch.autograd.grad``)
and frees its graph, so the peak memory is that of one first-order DARTS weight step.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn

from fastdarts.methods.base import SearchMethod, batch_metrics

CORR_TYPES = ("corr", "signcorr")


# ---------------------------------------------------------------------------------------- the Λ terms


def _stack(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    if len({tuple(g.shape) for g in grads}) > 1:
        raise ValueError(f"per-cell gradients must share one shape, got {[tuple(g.shape) for g in grads]}")
    return torch.stack([g.reshape(-1) for g in grads])


def _pair_coefficient(L: int) -> float:
    """``c = 1/(L(L−1)/2)``: Λ is the mean over the cell pairs."""
    return 2.0 / (L * (L - 1))


def alignment_value(grads: Sequence[torch.Tensor], corr_type: str = "corr") -> torch.Tensor:
    """``Λ_cos = c·Σ_{i<j} cos(g_i, g_j)`` or ``Λ_sgn = c·Σ_{i<j} ⟨g_i, g_j⟩/⟨|g_i|, |g_j|⟩``.

    Differentiable (used by the tests against autograd). Pairs involving an all-zero
    gradient contribute 0. Fewer than two cells give 0 (an empty sum).
    """
    _check_corr_type(corr_type)
    L = len(grads)
    if L < 2:
        return grads[0].new_zeros(()) if grads else torch.zeros(())
    G = _stack(grads)
    if corr_type == "corr":
        norms = G.norm(dim=1)
        U = G / torch.where(norms > 0, norms, torch.ones_like(norms))[:, None]
        pair = U @ U.T
    else:
        num, den = G @ G.T, G.abs() @ G.abs().T
        pair = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    return _pair_coefficient(L) * torch.triu(pair, diagonal=1).sum()


@torch.no_grad()
def alignment_directions(grads: Sequence[torch.Tensor], corr_type: str = "corr") -> list[torch.Tensor]:
    """``d_ℓ = ∂Λ/∂g_ℓ`` in closed form, as the sota code computes it (§5 of ALGORITHMS.md).

    ``corr``:     ``d_ℓ = c·(1/‖g_ℓ‖)·(I − u_ℓ u_ℓᵀ)·Σ_j u_j``, ``u_j = g_j/‖g_j‖``.
    ``signcorr``: ``d_ℓ = c·Σ_{j≠ℓ} (1 − ρ_ℓj·sign(g_ℓ)⊙sign(g_j)) ⊙ g_j / ⟨|g_ℓ|, |g_j|⟩``,
    ``ρ_ℓj = ⟨g_ℓ, g_j⟩/⟨|g_ℓ|, |g_j|⟩``.

    The projection ``(I − u uᵀ)s`` is applied as ``s − u(u·s)`` instead of building the
    ``n×n`` matrix (the sota code builds it); the numbers are the same up to rounding.
    Where the sota code would divide by zero (an all-zero ``g_ℓ``, or ``⟨|g_ℓ|, |g_j|⟩ = 0``)
    the affected terms are 0 here. Fewer than two cells give zero directions.
    """
    _check_corr_type(corr_type)
    L = len(grads)
    if L < 2:
        return [torch.zeros_like(g) for g in grads]
    shape = grads[0].shape
    G = _stack(grads)
    c = _pair_coefficient(L)
    if corr_type == "corr":
        norms = G.norm(dim=1, keepdim=True)
        nonzero = norms > 0
        safe = torch.where(nonzero, norms, torch.ones_like(norms))
        U = G / safe
        s = U.sum(0)
        D = (s[None, :] - U * (U @ s)[:, None]) / safe * nonzero.to(G.dtype)
    else:
        absG = G.abs()
        den = absG @ absG.T
        num = G @ G.T
        valid = (den > 0) & ~torch.eye(L, dtype=torch.bool, device=G.device)
        safe = torch.where(valid, den, torch.ones_like(den))
        inv = torch.where(valid, 1.0 / safe, torch.zeros_like(den))
        rho = torch.where(valid, num / safe, torch.zeros_like(den))
        D = inv @ G - torch.sign(G) * ((rho * inv) @ absG)
    return list((c * D).reshape(L, *shape).unbind(0))


def mean_pairwise_cosine(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The sota code's logged ``get_corr``: mean cosine similarity over cell pairs (= ``Λ_cos``)."""
    with torch.no_grad():
        return alignment_value(grads, "corr")


def _check_corr_type(corr_type: str) -> None:
    if corr_type not in CORR_TYPES:
        raise ValueError(f"unknown Λ-DARTS corr_type {corr_type!r}; choose one of {CORR_TYPES}")


# ---------------------------------------------------------------------------------------- the method


def cell_kinds(model: nn.Module) -> list[str]:
    """Type (``"normal"``/``"reduce"``) of every cell that takes per-cell weights, in forward order."""
    from fastdarts.spaces.nb201 import NB201SearchCell, NB201Supernet

    if isinstance(model, NB201Supernet):
        return ["normal" for c in model.cells if isinstance(c, NB201SearchCell)]
    if not hasattr(model, "cells"):
        raise TypeError(f"Λ-DARTS needs a supernet with per-cell weights, got {type(model).__name__}")
    return ["reduce" if c.reduction else "normal" for c in model.cells]


class LambdaDarts(SearchMethod):
    """Λ-DARTS: first-order DARTS whose weight step aligns the cells' mixing-weight gradients.

    Options (``method_options`` / hyper-parameters): ``lambda_`` (λ, default 0.125),
    ``epsilon`` (ε0, default 1e-4), ``corr_type`` (``"corr"``, the cosine term, default; or
    ``"signcorr"``). Defaults are the sota/cnn argparse values; the repository's
    ``run_search.sh`` runs λ = 0.25, ε0 = 1e-3 (and batch 96). On NAS-Bench-201 the defaults
    are the repository's NAS-Bench-201 script (λ = 0.25, ε0 = 1e-4, arch lr 1e-4, 100 epochs,
    SGD wd 3e-4 without Nesterov).

    ⚠ code vs paper (paper body not checked, ALGORITHMS.md §11.2; no difference confirmed): this is the
    sota code — only normal cells are regularised (``pert_reduce`` is all zeros, its
    computation commented out), λ ramps linearly from 0, ε = ε0/‖d‖ with unnormalised
    perturbations of the probabilities W_ℓ (not of α).

    A network with fewer than two regularised cells (e.g. a 3-cell DARTS supernet, whose only
    normal cell is cell 0) has an empty Λ: the method warns and runs plain first-order DARTS.
    """

    name = "lambda_darts"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5", "nb201")
    DEFAULTS: dict[str, Any] = dict(
        SearchMethod.DEFAULTS,
        # sota/cnn/train_search.py calls scheduler.step() *after* each epoch's training, so epoch
        # e runs at the cosine value of e (not e + 1 as quark0, which steps at the epoch start).
        lr_schedule_offset=0,
        # sota/cnn argparse defaults; run_search.sh uses lambda_=0.25, epsilon=1e-3 (batch 96).
        lambda_=0.125, epsilon=1e-4, corr_type="corr",
    )
    # NAS-Bench201/scripts-search/algos/DARTS-V1.sh and configs/nas-benchmark/algos/DARTS.config.
    NB201_DEFAULTS: dict[str, Any] = dict(
        epochs=100, batch_size=64, layers=5, w_weight_decay=3e-4, w_nesterov=False, lr_schedule_offset=0,
        alpha_lr=1e-4, lambda_=0.25, epsilon=1e-4, step_order="weight_first",
    )
    # sota/cnn: `valid_queue = iter(valid_queue)` once per epoch, then next() every step.
    valid_sampling = "iterate"

    def __init__(self, model: nn.Module, hyper: dict[str, Any]):
        super().__init__(model, hyper)
        _check_corr_type(self.hp["corr_type"])
        if not self.hp["epsilon"] > 0:
            raise ValueError(f"Λ-DARTS epsilon (ε0) must be positive, got {self.hp['epsilon']}")
        self.kinds = cell_kinds(model)
        self.num_regularised = sum(k == "normal" for k in self.kinds)
        from fastdarts.spaces.nb201 import NB201Supernet

        if isinstance(model, NB201Supernet):
            # NAS-Bench-201 code (D-X-Y DARTS-V1 loop): the weight step comes first (step_order in
            # NB201_DEFAULTS) and each train sample is paired with a random validation sample.
            self.valid_sampling = "random"
        if self.num_regularised < 2:
            warnings.warn(f"Λ-DARTS: the supernet has {self.num_regularised} regularised (normal) cell(s); "
                          "the alignment term needs at least 2 and is skipped (plain first-order DARTS)",
                          stacklevel=2)

    # ---------------------------------------------------------------- schedule
    @property
    def lambda_t(self) -> float:
        """``λ·epoch/(epochs − 1)`` (0 in the first epoch)."""
        return self.hp["lambda_"] * self.epoch / max(self.hp["epochs"] - 1, 1)

    # ---------------------------------------------------------------- per-cell weights
    def shared_weights(self):
        """This step's (detached) weights of each cell type: ``softmax(α)`` for the weight step."""
        with torch.no_grad():
            return self.model.cell_weights()

    def per_cell_weights(self, shared, regularised: Sequence[torch.Tensor]) -> list:
        """One ``CellWeights`` per cell: the ``regularised`` tensors (in order) for normal cells."""
        it = iter(regularised)
        out = []
        for kind in self.kinds:
            out.append(dataclasses.replace(shared[kind], weights=next(it)) if kind == "normal" else shared[kind])
        return out

    def _weight_grads(self, x, y, shared, cell_w, extra=()):
        logits = self.forward(x, cell_weights=self.per_cell_weights(shared, cell_w))
        loss = self.criterion(logits, y)
        grads = self.gradients(loss, list(self.weights) + list(extra), y.shape[0])
        return loss, logits, grads

    def per_cell_gradients(self, x, y, shared=None):
        """``L_tr``, logits, ``∇_w L_tr`` (None for unused weights) and ``g_ℓ = ∂L_tr/∂W_ℓ`` per normal cell."""
        shared = self.shared_weights() if shared is None else shared
        leaves = [shared["normal"].weights.detach().clone().requires_grad_(True) for _ in range(self.num_regularised)]
        loss, logits, grads = self._weight_grads(x, y, shared, leaves, extra=leaves)
        n = len(self.weights)
        # fp16: ∇_w stays scaled by S (optimizer_step unscales it); g_ℓ is unscaled, so the directions
        # d_ℓ, ε and the perturbations are those of fp32 and (G+ − G−)/(2ε) carries S like ∇_w.
        g_cells = [torch.zeros_like(w) if g is None else g for w, g in zip(leaves, self.unscale(grads[n:]))]
        return loss, logits, list(grads[:n]), g_cells

    def alignment_gradient(self, x, y, g_cells, shared=None) -> list:
        """``(G+ − G−)/(2ε)`` ≈ ``−∇_w Λ``: two forward/backward passes with ``W_ℓ ∓ ε·d_ℓ``."""
        shared = self.shared_weights() if shared is None else shared
        d = alignment_directions(g_cells, self.hp["corr_type"])
        norm = torch.cat([t.reshape(-1) for t in d]).norm()
        # A zero direction (all g_ℓ zero or orthogonal-free) gives Δ = 0 and a zero term, with no host sync.
        eps = self.hp["epsilon"] / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        W = shared["normal"].weights
        _, _, g_plus = self._weight_grads(x, y, shared, [W - eps * t for t in d])
        _, _, g_minus = self._weight_grads(x, y, shared, [W + eps * t for t in d])
        return [None if gp is None else (gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]

    # ---------------------------------------------------------------- one iteration
    def weight_step(self, x: torch.Tensor, y: torch.Tensor):
        self.w_optim.zero_grad(set_to_none=True)
        shared = self.shared_weights()
        loss, logits, grads, g_cells = self.per_cell_gradients(x, y, shared)
        lam = self.lambda_t
        # The sota code also runs the two passes when λ_t = 0 (epoch 0); their only other effect
        # there is two extra BatchNorm running-statistic updates, which never feed the search
        # (all search forwards run in train mode), so they are skipped.
        if lam != 0 and self.num_regularised >= 2:
            reg = self.alignment_gradient(x, y, g_cells, shared)
            grads = [g if g is None else g + lam * r for g, r in zip(grads, reg)]
        for p, g in zip(self.weights, grads):
            p.grad = g
        self.optimizer_step(self.w_optim, self.hp["w_grad_clip"])
        metrics = batch_metrics(loss, logits, y)
        if self.num_regularised >= 2:
            metrics["grad_corr"] = mean_pairwise_cosine(g_cells)
        return metrics
