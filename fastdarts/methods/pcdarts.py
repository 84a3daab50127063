"""PC-DARTS (yuhuixu1993/PC-DARTS ``train_search.py``, ``train_search_imagenet.py``): partial channels
and edge normalisation, with the ImageNet search's large-batch schedule as options."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from fastdarts.gates import PartialChannelMixing
from fastdarts.methods.base import SearchMethod

log = logging.getLogger("fastdarts")

VALID_SAMPLING = ("random", "iterate")


class PCDarts(SearchMethod):
    """First-order DARTS on a partial-channel supernet with β edge weights.

    1/k of each edge's channels go through the candidates (k = 4 on CIFAR, option ``k``);
    node inputs are weighted by softmax(β) per node. The architecture is frozen for the
    first 15 epochs (``if epoch >= 15``); weights use SGD lr 0.1 → 0 at batch 256
    (``train_search.py:24-26``; lr 0.1 is tuned for that batch).

    Options of the ImageNet search (``train_search_imagenet.py``, the ``pcdarts-imagenet`` recipe; all
    off by default, as on CIFAR):

    * ``w_warmup_epochs`` W, ``w_warmup_batch`` B: when the batch exceeds B, epochs e < W use the
      weight LR ``w_lr·(e + 1)/W`` instead of the cosine value (``:150``, ``:155-158``: the base LR,
      not the annealed one, is scaled; the cosine schedule takes over at epoch W).
    * ``alpha_grad_clip``: clip the norm of the architecture gradient (α and β together) before the
      Adam step (``:204``); None: no clipping (CIFAR).
    * ``lr_scale_batch`` N, ``w_lr_ref`` η: the linear scaling rule. When ``optim.w_lr`` is not set,
      ``w_lr = η·batch/N`` (η defaults to the method's ``w_lr``); an explicit ``optim.w_lr`` is used
      as given. The first epoch logs which one applied.
    * ``valid_sampling``: ``"random"`` (a fresh random architecture batch per step, CIFAR's
      ``next(iter(valid_queue))``) or ``"iterate"`` (one persistent pass over the architecture split,
      restarted when it runs out, ``:191-195``).
    """

    name = "pcdarts"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5")
    DEFAULTS = dict(SearchMethod.DEFAULTS, batch_size=256, w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4, arch_warmup=15,
                    w_warmup_epochs=0, w_warmup_batch=256, alpha_grad_clip=None, lr_scale_batch=None,
                    w_lr_ref=None, valid_sampling="random")

    def __init__(self, model: nn.Module, hyper: dict[str, Any]):
        super().__init__(model, hyper)
        self.valid_sampling = self.hp["valid_sampling"]
        self._lr_rule_logged = self._quiet = False

    @classmethod
    def mixing(cls, options: dict[str, Any]):
        return PartialChannelMixing()

    @classmethod
    def supernet_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"mixing": cls.mixing(options), "partial_k": int(options.get("k", 4))}

    # ---------------------------------------------------------------- hyper-parameters
    @classmethod
    def resolve_hyper(cls, overrides: dict[str, Any], space: str = "darts") -> dict[str, Any]:
        """:meth:`SearchMethod.resolve_hyper`, then the linear scaling rule for a ``w_lr`` left unset."""
        hp = super().resolve_hyper(overrides, space)
        _check_schedule_options(hp)
        if hp["lr_scale_batch"] is not None and overrides.get("w_lr") is None:
            hp["w_lr"] = scaled_lr(hp)
        return hp

    # ---------------------------------------------------------------- schedule
    def warming_up(self, epoch: int) -> bool:
        """Whether ``epoch`` runs with the linear warm-up LR (``epoch < 5 and batch_size > 256``)."""
        return epoch < self.hp["w_warmup_epochs"] and self.hp["batch_size"] > self.hp["w_warmup_batch"]

    def lr_at(self, epoch: int) -> float:
        """The cosine LR of :meth:`SearchMethod.lr_at`, or ``w_lr·(epoch + 1)/W`` while warming up."""
        if self.warming_up(epoch):
            return self.hp["w_lr"] * (epoch + 1) / self.hp["w_warmup_epochs"]
        return super().lr_at(epoch)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        if self._quiet:
            return
        if not self._lr_rule_logged and self.hp["lr_scale_batch"] is not None:
            log.info("weight LR: %s", lr_rule(self.hp))
        self._lr_rule_logged = True
        if self.warming_up(epoch):
            log.info("warm-up epoch %d: weight LR %.6g = w_lr %.6g × %d/%d (batch %d > %d)", epoch, self.lr,
                     self.hp["w_lr"], epoch + 1, self.hp["w_warmup_epochs"], self.hp["batch_size"],
                     self.hp["w_warmup_batch"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._quiet = True  # the finished epoch restored here is not run again: nothing to log for it
        try:
            super().load_state_dict(state)
        finally:
            self._quiet = False

    # ---------------------------------------------------------------- architecture step
    def set_arch_grads(self, grads) -> None:
        super().set_arch_grads(grads)
        if self.hp["alpha_grad_clip"] is not None:
            # One norm over α and β together (clip_grad_norm_(arch_parameters(), 5)); no host sync.
            nn.utils.clip_grad_norm_(self.arch, self.hp["alpha_grad_clip"])


def scaled_lr(hp: dict[str, Any]) -> float:
    """``w_lr_ref·batch_size/lr_scale_batch`` (``w_lr_ref`` None: PC-DARTS' default ``w_lr``)."""
    ref = PCDarts.DEFAULTS["w_lr"] if hp["w_lr_ref"] is None else hp["w_lr_ref"]
    return ref * hp["batch_size"] / hp["lr_scale_batch"]


def lr_rule(hp: dict[str, Any]) -> str:
    """One line saying whether ``w_lr`` is the linear-scaling value or an explicit setting."""
    ref = PCDarts.DEFAULTS["w_lr"] if hp["w_lr_ref"] is None else hp["w_lr_ref"]
    scaled = scaled_lr(hp)
    if hp["w_lr"] == scaled:
        return (f"w_lr {hp['w_lr']:.6g} from the linear scaling rule: {ref:.6g} at batch {hp['lr_scale_batch']} "
                f"× {hp['batch_size']}/{hp['lr_scale_batch']} (set optim.w_lr to choose it yourself)")
    return (f"w_lr {hp['w_lr']:.6g} set explicitly (optim.w_lr); the linear scaling rule would give {scaled:.6g} "
            f"at batch {hp['batch_size']}")


def _check_schedule_options(hp: dict[str, Any]) -> None:
    """One-line ValueErrors for bad warm-up / clipping / scaling / sampling options."""
    for key in ("w_warmup_epochs", "w_warmup_batch"):
        v = hp[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"method_options.{key} must be an integer >= 0, got {v!r}")
    clip = hp["alpha_grad_clip"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
        raise ValueError(f"method_options.alpha_grad_clip must be a number > 0 or null (no clipping), got {clip!r}")
    n = hp["lr_scale_batch"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"method_options.lr_scale_batch must be an integer >= 1 or null (no linear scaling), "
                         f"got {n!r}")
    ref = hp["w_lr_ref"]
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float)) or not ref >= 0):
        raise ValueError(f"method_options.w_lr_ref must be a number >= 0 or null, got {ref!r}")
    if hp["valid_sampling"] not in VALID_SAMPLING:
        raise ValueError(f"method_options.valid_sampling must be one of {VALID_SAMPLING}, "
                         f"got {hp['valid_sampling']!r}")
