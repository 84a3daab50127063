"""GDAS (D-X-Y/AutoDL-Projects ``search_model_gdas*.py``, ``exps/NAS-Bench-201-algos/GDAS.py``; ALGORITHMS.md §8)."""

from __future__ import annotations

from fastdarts.gates import GumbelMixing
from fastdarts.methods.base import SearchMethod
from fastdarts.methods.prdarts import SampledGateMethod


class GDAS(SampledGateMethod):
    """GDAS: one Gumbel-softmax-sampled op per edge, straight-through gradients to every logit.

    Per iteration: weight step (train batch; SGD Nesterov lr 0.025 → 0.001 cosine by epoch,
    momentum 0.9, wd 5e-4, clip 5), then architecture step (val batch; Adam 3e-4, betas
    (0.5, 0.999), wd 1e-3). τ_t = 10 − 9.9·t/(T − 1). Genotype: NAS-Bench-201 arg-max per edge;
    DARTS space the 2 best (op, input) pairs per node from softmax(α).

    Paper setting: 250 epochs; NB201 batch 64, C=16, N=5; DARTS space batch 256, 6 cells.
    """

    name = "gdas"
    spaces = ("darts", "nb201")
    mixing_cls = GumbelMixing
    DEFAULTS = dict(
        SearchMethod.DEFAULTS,
        # configs/search-opts/GDAS-NASNet-CIFAR.config (DARTS space; NB201: batch 64, 5 cells per stage
        # from NB201_DEFAULTS); 6 cells = NASNet-super N=2 (configs/search-archs/GDAS-NASNet-CIFAR.config).
        epochs=250, batch_size=256, layers=6,
        w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=5e-4, w_nesterov=True,
        w_grad_clip=5.0, alpha_lr=3e-4, alpha_betas=(0.5, 0.999), alpha_weight_decay=1e-3,
        lr_schedule_offset=0, step_order="weight_first", tau_max=10.0, tau_min=0.1, gate_seed=None,
    )

    @classmethod
    def mixing(cls, options):
        return GumbelMixing()
