"""PC-DARTS (yuhuixu1993/PC-DARTS ``train_search.py``): partial channels and edge normalisation."""

from __future__ import annotations

from typing import Any

from fastdarts.gates import PartialChannelMixing
from fastdarts.methods.base import SearchMethod


class PCDarts(SearchMethod):
    """First-order DARTS on a partial-channel supernet with β edge weights.

    1/k of each edge's channels go through the candidates (k = 4 on CIFAR, option ``k``);
    node inputs are weighted by softmax(β) per node. The architecture is frozen for the
    first 15 epochs (``if epoch >= 15``); weights use SGD lr 0.1 → 0 at batch 256
    (``train_search.py:24-26``; lr 0.1 is tuned for that batch).
    """

    name = "pcdarts"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5")
    DEFAULTS = dict(SearchMethod.DEFAULTS, batch_size=256, w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4, arch_warmup=15)

    @classmethod
    def mixing(cls, options: dict[str, Any]):
        return PartialChannelMixing()

    @classmethod
    def supernet_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {"mixing": cls.mixing(options), "partial_k": int(options.get("k", 4))}
