"""The packaged digits demo follows quark0/darts' training loop (README "Accuracy parity with quark0/darts")."""

from reference_lr import cosine_annealing

from fastdarts.config import SearchConfig, default_search_config_path, load_config, resolve_search_config, to_dict
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet


def test_default_demo_runs_quark0_lr_per_epoch():
    # The packaged default, resolved as `fastdarts search` resolves it, drives the weight optimiser
    # exactly as quark0's loop does on PyTorch 0.3.1 (epoch 0 at the full 0.025).
    cfg = resolve_search_config(load_config(SearchConfig, default_search_config_path()))
    method_cls = get_method(cfg.method)
    hyper = method_cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs}, cfg.space)
    method = method_cls(build_supernet(cfg.space, cfg.method, 4, 10, 3), hyper)
    sched = cosine_annealing(0.025, 0.001, float(cfg.epochs))  # quark0 train_search.py defaults
    for epoch in range(cfg.epochs):
        method.begin_epoch(epoch)
        # Same float64 operations in the same order as fastdarts' lr_at: equal, not approximately.
        assert method.w_optim.param_groups[0]["lr"] == sched.step()
    assert method.lr_at(0) == 0.025
