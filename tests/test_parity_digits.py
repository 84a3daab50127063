"""The packaged digits demo follows quark0/darts' training loop (README "Accuracy parity with quark0/darts")."""

import math

from fastdarts.config import SearchConfig, default_search_config_path, load_config, resolve_search_config, to_dict
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet


class _Pytorch031Cosine:
    """PyTorch 0.3.1 ``_LRScheduler`` + ``CosineAnnealingLR`` (quark0/darts' README pins 0.3.1).

    The constructor's ``step(0)`` is followed by ``last_epoch = -1``, so quark0's
    ``scheduler.step()`` at the start of epoch e sets ``last_epoch = e``.
    """

    def __init__(self, base_lr: float, eta_min: float, T_max: float):
        self.base_lr, self.eta_min, self.T_max = base_lr, eta_min, T_max
        self.last_epoch = -1

    def step(self) -> float:
        self.last_epoch += 1
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2


def test_default_demo_runs_quark0_lr_per_epoch():
    # The packaged default, resolved as `fastdarts search` resolves it, drives the weight optimiser
    # exactly as quark0's loop does on PyTorch 0.3.1 (epoch 0 at the full 0.025).
    cfg = resolve_search_config(load_config(SearchConfig, default_search_config_path()))
    method_cls = get_method(cfg.method)
    hyper = method_cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs}, cfg.space)
    method = method_cls(build_supernet(cfg.space, cfg.method, 4, 10, 3), hyper)
    sched = _Pytorch031Cosine(0.025, 0.001, float(cfg.epochs))  # quark0 train_search.py defaults
    for epoch in range(cfg.epochs):
        method.begin_epoch(epoch)
        # Same float64 operations in the same order as fastdarts' lr_at: equal, not approximately.
        assert method.w_optim.param_groups[0]["lr"] == sched.step()
    assert method.lr_at(0) == 0.025
