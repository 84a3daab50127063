"""GAEA: geometry-aware exponentiated gradient (liamcli/gaea_release ``cnn/architect/architect_edarts.py``,
``cnn/train_search.py``, ``cnn/train_utils.py``, ``cnn/lr_schedulers.py``, ``configs/cnn/**``).

The architecture variables live on the simplex and are updated by mirror descent with the
negative-entropy mirror map instead of Adam on softmax logits::

    α ← α ⊙ exp(−η·∇_α L_val) ;  α ← clamp(α, 1e-5) ;  α ← α / Σ_row α
    β ← β ⊙ exp(−η_β·∇_β L_val) ;  β ← β / Σ_{incoming edges of the node} β

(:class:`fastdarts.optim.ExponentiatedGradient`). Per iteration: the architecture step on a
validation batch, then the SGD weight step; the weight LR follows GAEA's cosine
``η_min + (η_0 − η_min)·½(1 + cos(π·e/T_s))`` with ``T_s = scheduler_epochs`` (``run.scheduler_epochs``).

* ``gaea`` (:class:`GaeaDarts`, GAEA's ``edarts``): α uniform, used directly as mixing weights,
  edges unweighted; DARTS space (quark0 settings, batch 64) or NAS-Bench-201.
* ``gaea_pcdarts`` (:class:`GaeaPCDarts`, GAEA's ``eedarts``): the PC-DARTS supernet (k = 4) with
  α uniform and edge weights β starting at 1/(inputs of the node); genotype from α·β.

NAS-Bench-201 (``space="nb201"``, ``gaea`` only): 25 epochs with ``T_s = 50`` (the LR only falls to
≈ 0.0138), batch 64, SGD 0.025 → 0.001, wd 3e-4. ⚠ code differs from NAS-Bench-201's protocol:
GAEA's configs use C = 24 there, not the usual 16 — pass ``C=24`` to reproduce GAEA.
GAEA's README runs NAS-Bench-201 with ``exclude_zero`` (4 candidates, no ``none``): pass
``primitives=["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]`` to ``build_supernet``
(in a config: ``method_options: {primitives: [skip_connect, nor_conv_1x1, nor_conv_3x3, avg_pool_3x3]}``,
which ``fastdarts.search`` forwards to the supernet). The ``gaea-nb201`` recipe sets all of this.

Bilevel or ERM (GAEA's ``search.single_level``, hyper-parameter ``single_level``): bilevel (False)
draws the architecture batch from the architecture split; ERM (True, the setting of GAEA's
NAS-Bench-201 results) trains the weights on all training images and draws each architecture
batch from a separately shuffled copy of the same images (``cnn/train_utils.py:231-248`` for
NAS-Bench-201, ``:296-322`` for the DARTS spaces). The step itself is unchanged: an EG step on
that batch, then the weight step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fastdarts.gates import SimplexMixing
from fastdarts.methods.base import SearchMethod
from fastdarts.optim import ExponentiatedGradient
from fastdarts.spaces.common import node_edge_slices


class GaeaDarts(SearchMethod):
    """GAEA DARTS (``edarts``): exponentiated-gradient α on the simplex, first-order bilevel.

    Hyper-parameters: ``alpha_lr`` is the EG step η (0.1), ``alpha_weight_decay`` is GAEA's κ,
    the weight of the entropic pull ``Σ α·log(K·α)`` towards uniform (0 for DARTS/PC-DARTS);
    ``alpha_betas`` is unused. ``scheduler_epochs`` is ``T_s`` of the weight-LR cosine (None:
    the number of epochs; GAEA's config fixes 50, which equals the epochs of its DARTS and
    PC-DARTS runs). ``min_value``: the floor of the α update (1e-5). ``single_level``: ERM
    instead of bilevel (see the module docstring).
    """

    name = "gaea"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5", "nb201")
    DEFAULTS: dict[str, Any] = dict(
        SearchMethod.DEFAULTS,
        # configs/cnn/mode/search_darts.yaml: SGD 0.025 → 0.001, momentum 0.9, wd 3e-4, clip 5.
        alpha_lr=0.1, alpha_weight_decay=0.0, min_value=1e-5,
        # train_search.py steps the scheduler after each epoch's training: epoch e runs at cos(π·e/T_s).
        lr_schedule_offset=0, scheduler_epochs=None,
        single_level=False,  # configs/cnn/config.yaml:35 `search.single_level` (True: ERM)
    )
    # configs/cnn/mode/search_nasbench201.yaml + config.yaml (run.scheduler_epochs: 50, 25 epochs per
    # the paper's NAS-Bench-201 runs): no Nesterov, wd 3e-4 (not D-X-Y's 5e-4/Nesterov).
    NB201_DEFAULTS: dict[str, Any] = dict(
        epochs=25, batch_size=64, layers=5, scheduler_epochs=50, w_weight_decay=3e-4, w_nesterov=False,
        lr_schedule_offset=0,
    )
    # train_search.py: `next(iter(valid_queue))`, a fresh random validation batch per step.
    valid_sampling = "random"

    @classmethod
    def mixing(cls, options: dict[str, Any]):
        return SimplexMixing(uses_betas=False)

    def make_arch_optimizer(self) -> torch.optim.Optimizer:
        return ExponentiatedGradient(self.arch, lr=self.hp["alpha_lr"], min_value=self.hp["min_value"],
                                     kl_weight=self.hp["alpha_weight_decay"], clamp_first=True)

    def lr_at(self, epoch: int) -> float:
        """GAEA's ``CosinePowerAnnealing`` (power 1, one cycle): ``η_min + (η_0 − η_min)·½(1 + cos(π·e/T_s))``.

        Past ``T_s`` the schedule restarts with ``η_0`` halved, as the original does.
        """
        T = self.hp["scheduler_epochs"] or self.hp["epochs"]
        e = epoch + self.hp["lr_schedule_offset"]
        cycle, within = divmod(e, T)
        lo, hi = self.hp["w_lr_min"], self.hp["w_lr"] * 0.5 ** cycle
        return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * within / T))


class GaeaPCDarts(GaeaDarts):
    """GAEA PC-DARTS (``eedarts``): partial channels (k = 4) with α and per-node β both updated by EG.

    ``beta_lr`` is η_β (0.1). β is renormalised within each node's incoming edges and, as in
    ``architect_edarts.py``, never clamped. ⚠ code differs from PC-DARTS: no 15-epoch
    architecture warm-up; α/β are updated from the first iteration. Weights: SGD 0.1 → 0 at
    batch 256 (``configs/cnn/mode/search_pcdarts.yaml:5-7``).

    ⚠ code vs paper (paper not checked; no difference confirmed): β is renormalised per node
    without the 1e-5 floor α gets (``architect_edarts.py`` comments the clamp out).
    """

    name = "gaea_pcdarts"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5")
    DEFAULTS: dict[str, Any] = dict(GaeaDarts.DEFAULTS, batch_size=256, w_lr=0.1, w_lr_min=0.0, beta_lr=0.1,
                                    arch_warmup=0)

    @classmethod
    def mixing(cls, options: dict[str, Any]):
        return SimplexMixing(uses_betas=True)

    @classmethod
    def supernet_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"mixing": cls.mixing(options), "partial_k": int(options.get("k", 4))}

    def make_arch_optimizer(self) -> torch.optim.Optimizer:
        names = self.model.arch_names()
        alphas = [p for n, p in zip(names, self.arch) if not n.startswith("betas")]
        betas = [p for n, p in zip(names, self.arch) if n.startswith("betas")]
        groups = [(s.start, s.stop) for s in node_edge_slices(self.model._steps)]
        return ExponentiatedGradient(
            [{"params": alphas},
             # The entropic term only acts on α (architect_edarts._backward_step); β is only renormalised.
             {"params": betas, "lr": self.hp["beta_lr"], "groups": groups, "min_value": 0.0, "kl_weight": 0.0}],
            lr=self.hp["alpha_lr"], min_value=self.hp["min_value"], kl_weight=self.hp["alpha_weight_decay"],
            clamp_first=True)
