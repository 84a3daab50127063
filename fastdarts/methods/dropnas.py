"""DropNAS (wiljohnhong/DropNAS ``search.py``, ``models/search_cnn.py``; ALGORITHMS.md §6)."""

from __future__ import annotations

import torch
import torch.nn as nn

from fastdarts.gates import DropNASMixing
from fastdarts.methods.base import SearchMethod, batch_metrics
from fastdarts.methods.prdarts import SampledGateMethod


class DropNAS(SampledGateMethod):
    """Single-level DARTS with grouped operation dropout.

    One iteration on one training batch (no validation split):

    1. forward with fresh DropNAS masks; ``L = CE``; backward; clip the weight gradient to 3;
       SGD step on w (momentum 0.9, wd 0) and, after the warm-up, Adam on α (3e-4, wd 0);
    2. "partial decay": ``L_dec = 3e-4·Σ‖w‖²`` over weights whose gradient was non-zero (first
       element tested) ``+ 1e-3·Σ α²`` over α entries with ``|grad| > 1e-7``; backward, clip 3,
       a second SGD step and a second Adam step;
    3. the kept ops of every edge with a dropped op are shifted by one constant so they keep
       the probability mass they had at forward time (dropped α unchanged).

    ``drop_rate`` is r (p = r^(1/4) per op); a pair ``[r_P, r_NP]`` sets the groups apart.
    During ``arch_warmup`` epochs r = 0 and α is not updated. Genotype: DARTS rule on raw α.
    Paper setting: 76 epochs, batch 96, 14 cells, C=16, lr 0.0375 → 0.0015.
    """

    name = "dropnas"
    spaces = ("darts",)
    single_level = True
    mixing_cls = DropNASMixing
    DEFAULTS = dict(
        SearchMethod.DEFAULTS,
        epochs=76, batch_size=96, layers=14,  # config.py:47, 56, 59
        w_lr=0.0375, w_lr_min=0.0015, w_momentum=0.9, w_weight_decay=0.0, w_nesterov=False,
        w_grad_clip=3.0, alpha_lr=3e-4, alpha_betas=(0.5, 0.999), alpha_weight_decay=0.0,
        arch_warmup=0, lr_schedule_offset=0,  # torch 1.0.0 (requirement.txt): as DARTS, cos(π·e/T)
        drop_rate=3e-5, w_partial_decay=3e-4, alpha_partial_decay=1e-3, gate_seed=None,
    )

    @classmethod
    def mixing(cls, options):
        # The op groups follow the supernet's candidate list (primitives=, e.g. RobustDARTS' S3 set on
        # the DARTS space); the mixing holds one list, so per-edge lists must all be the same.
        primitives = options.get("primitives")
        if isinstance(primitives, dict):
            lists = {tuple(ops) for edges in primitives.values() for ops in edges}
            if len(lists) != 1:
                raise ValueError("DropNAS groups the ops of one candidate list; these primitives differ "
                                 "between edges (use the same list on every edge)")
            primitives = lists.pop()
        return DropNASMixing(primitives)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        rate = self.hp["drop_rate"]
        rate = rate if isinstance(rate, (int, float)) else tuple(rate)
        self.gates.set_drop_rate(0.0 if self.arch_frozen(epoch) else rate)

    def decay_loss(self) -> torch.Tensor:
        """Partial decay of step 2, from the gradients of step 1 (no host synchronisation)."""
        loss = torch.zeros((), device=self.arch[0].device)
        for p in self.weights:
            if p.grad is not None:
                used = (p.grad.reshape(-1)[0] != 0).to(p.dtype)
                loss = loss + used * self.hp["w_partial_decay"] * p.pow(2).sum()
        for a in self.arch:
            if a.grad is not None:
                kept = (a.grad.abs() > 1e-7).to(a.dtype)
                loss = loss + self.hp["alpha_partial_decay"] * (kept * a.pow(2)).sum()
        return loss

    @torch.no_grad()
    def rescale_kept(self, samples) -> None:
        """Step 3: ``α'_kept += log(r/(1−r) · Σ_dropped e^α / Σ_kept e^α')`` on edges with a dropped op."""
        for kind, s in samples.items():
            alpha = getattr(self.model, f"alphas_{kind}")
            keep, r = s.keep, s.ratio.to(alpha.dtype)
            has_drop = (~keep).any(-1) & (r < 1)
            lse_dropped = alpha.masked_fill(keep, float("-inf")).logsumexp(-1)
            lse_kept = alpha.masked_fill(~keep, float("-inf")).logsumexp(-1)
            k = torch.log(r) - torch.log1p(-r) + lse_dropped - lse_kept
            k = torch.where(has_drop, k, torch.zeros_like(k))
            alpha.add_(k[:, None] * keep)

    def step(self, train_batch, valid_batch, step: int) -> dict[str, torch.Tensor]:
        x, y = train_batch
        train_arch = not self.arch_frozen(self.epoch)
        params = self.weights + (self.arch if train_arch else [])
        self.w_optim.zero_grad(set_to_none=False)
        self.a_optim.zero_grad(set_to_none=False)
        logits = self.forward(x)
        samples = dict(self.gates.last)
        loss = self.criterion(logits, y)
        self.backward(loss, params, y.shape[0])
        # Ops dropped in this forward leave their weights without a gradient. As in the original
        # (PyTorch 1.x zero_grad zeroes instead of freeing), they take a zero gradient, so SGD still
        # applies their momentum. Filling here (not only zeroing) also makes a resumed run, whose
        # gradients start as None, step exactly like an unbroken one.
        for p in self.weights:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.optimizer_step(self.w_optim, self.hp["w_grad_clip"])
        if train_arch:
            self.optimizer_step(self.a_optim)
        if self.scaler is not None:
            # fp16: the scaler unscaled step 1's gradients in place (the masks below read true
            # gradients). A step 1 that overflowed was skipped; its decay step is skipped with it
            # (scaler.step already synchronised with the host, so reading the flag costs nothing more).
            overflow = not bool(torch.stack([torch.isfinite(p.grad).all() for p in params]).all())
            self.end_step()
            if overflow:
                return batch_metrics(loss, logits, y)
        # 2. partial decay: masks from step 1's gradients, then a second step of both optimisers.
        # In a multi-process search L_dec is the same on every rank (a function of the parameters and
        # of step 1's averaged gradients), so its gradients need no averaging.
        # L_dec is an fp32 function of fp32 parameters (no autocast): it is differentiated unscaled.
        dec = self.decay_loss()
        self.w_optim.zero_grad(set_to_none=False)
        self.a_optim.zero_grad(set_to_none=False)
        if dec.requires_grad:
            dec.backward(inputs=[p for p in params if p.grad is not None])  # zero decay -> zero grad
        nn.utils.clip_grad_norm_(self.weights, self.hp["w_grad_clip"])
        self.w_optim.step()
        if train_arch:
            self.a_optim.step()
            self.rescale_kept(samples)
        return batch_metrics(loss, logits, y)
