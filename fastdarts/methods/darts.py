"""DARTS, first order and second order (quark0/darts ``cnn/architect.py``)."""

from __future__ import annotations

import contextlib

import torch

from fastdarts.methods.base import SearchMethod
from fastdarts.recompute import bn_stats_restored


class Darts(SearchMethod):
    """First-order DARTS: ``g_α = ∇_α L_val(w, α)`` (see :class:`SearchMethod`)."""

    name = "darts"


@contextlib.contextmanager
def weights_set_to(params: list[torch.Tensor], values: list[torch.Tensor]):
    """Temporarily give ``params`` the ``values``; the originals are restored bit for bit.

    quark0 perturbs in place (w + εv, then w − 2εv, then + εv back), which drifts in
    float; restoring saved copies does not.
    """
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


class DartsSecondOrder(SearchMethod):
    """Second-order DARTS (``--unrolled``): the architecture gradient through one virtual SGD step.

    With ξ the current weight LR, μ the momentum and λ the weight decay:
    ``w' = w − ξ(μ·m + ∇_w L_tr(w, α) + λw)``, ``d_α = ∇_α L_val(w', α)``,
    ``v = ∇_w' L_val(w', α)``, ``ε = 0.01/‖v‖``,
    ``g_α = d_α − ξ·(∇_α L_tr(w + εv, α) − ∇_α L_tr(w − εv, α)) / (2ε)``.
    """

    name = "darts2"

    def _momentum(self, p: torch.Tensor) -> torch.Tensor:
        buf = self.w_optim.state.get(p, {}).get("momentum_buffer")
        return torch.zeros_like(p) if buf is None else buf

    def _arch_grad_at(self, values, x, y):
        with weights_set_to(self.weights, values):
            loss = self.criterion(self.forward(x), y)
            return self.gradients(loss, self.arch, y.shape[0])

    def hessian_vector_product(self, v, x, y):
        """``(∇_α L_tr(w + εv) − ∇_α L_tr(w − εv)) / (2ε)`` with ``ε = 0.01/‖v‖``.

        ``v`` is a true (unscaled) gradient, so ε and the perturbed weights are those of fp32; with
        ``amp=fp16`` the two gradients, hence the result, carry the loss scale S like ``d_α``.
        """
        eps = 0.01 / torch.cat([t.reshape(-1) for t in v]).norm()
        w = [p.detach() for p in self.weights]
        g_plus = self._arch_grad_at([p + eps * t for p, t in zip(w, v)], x, y)
        g_minus = self._arch_grad_at([p - eps * t for p, t in zip(w, v)], x, y)
        return [None if gp is None else (gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]

    def unrolled_weights(self, x, y) -> list[torch.Tensor]:
        """``w' = w − ξ(μ·m + ∇_w L_tr(w, α) + λw)`` (plain SGD-with-momentum step, no clipping)."""
        loss = self.criterion(self.forward(x), y)
        grads = self.unscale(self.gradients(loss, self.weights, y.shape[0], allow_unused=False))
        mu, wd, xi = self.hp["w_momentum"], self.hp["w_weight_decay"], self.lr
        return [p.detach() - xi * (mu * self._momentum(p) + g + wd * p.detach())
                for p, g in zip(self.weights, grads)]

    def arch_step(self, train_batch, valid_batch):
        (xt, yt), (xv, yv) = train_batch, valid_batch
        w_prime = self.unrolled_weights(xt, yt)
        # The virtual step runs on a copy in quark0: its BatchNorm statistics are thrown away.
        with weights_set_to(self.weights, w_prime), bn_stats_restored(self.model):
            loss = self.arch_loss(xv, yv)
            grads = self.gradients(loss, self.arch + self.weights, yv.shape[0])
        # fp16: d_α stays scaled (set_arch_grads unscales the final g_α); v is unscaled for ε = 0.01/‖v‖.
        d_alpha, v = grads[: len(self.arch)], self.unscale(grads[len(self.arch):])
        v = [torch.zeros_like(p) if g is None else g for p, g in zip(self.weights, v)]
        implicit = self.hessian_vector_product(v, xt, yt)
        g_alpha = [None if d is None else (d if h is None else d - self.lr * h) for d, h in zip(d_alpha, implicit)]
        self.set_arch_grads(g_alpha)
        self.optimizer_step(self.a_optim)
        return {"arch_loss": loss.detach()}
