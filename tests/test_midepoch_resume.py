"""checkpoint_every: mid-epoch checkpoints and an exact resume from them (CPU, bit for bit)."""

import importlib
import os

import pytest
import torch

import fastdarts
from fastdarts.config import OptimConfig, SearchConfig
from fastdarts.data import DataConfig

search_mod = importlib.import_module("fastdarts.search")

# Tiny: C=4, 3 cells, 8x8 digits, batch 8, about 5 steps per epoch; 2 epochs.
SUBSET = 0.03


def _cfg(run_dir, method, every=2, **options):
    return SearchConfig(method=method, epochs=2, C=4, layers=3, run_dir=str(run_dir), checkpoint_every=every,
                        data=DataConfig(batch_size=8, subset=SUBSET, arch_subset=SUBSET, image_size=8),
                        optim=OptimConfig(), method_options=options)


def _ckpt(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)


class _Killed(Exception):
    """Stands in for a crash in the middle of an epoch."""


def _assert_identical(a, b, where="state"):
    """Tensors equal bit for bit (torch.equal), containers recursively, other values with ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# pcdarts with valid_sampling=iterate: the architecture split is smaller than the weight split, so the
# persistent architecture iterator wraps within an epoch (its position must be saved). gdas: random
# architecture batches (indexed by step) and sampled gates (the sampler's counter must be saved).
@pytest.mark.parametrize("method,options", [("pcdarts", {"arch_warmup": 0, "valid_sampling": "iterate"}),
                                            ("gdas", {})])
def test_midepoch_resume_is_bit_identical(tmp_path, monkeypatch, method, options):
    full = fastdarts.search(_cfg(tmp_path / "full", method, **options))

    # Interrupted run: the step after the mid-epoch checkpoint at step 2 of epoch 2 raises.
    cfg = _cfg(tmp_path / "cut", method, **options)
    cls = search_mod.get_method(method)
    original = cls.step

    def step_then_die(self, train_batch, valid_batch, step):
        if (self.epoch, step) == (1, 3):
            raise _Killed
        return original(self, train_batch, valid_batch, step)

    with monkeypatch.context() as mp:
        mp.setattr(cls, "step", step_then_die)
        with pytest.raises(_Killed):
            fastdarts.search(cfg)
    mid = _ckpt(cfg.run_dir)
    assert mid["position"]["epoch"] == 1 and mid["position"]["step"] == 2 and mid["epoch"] == 0

    resumed = fastdarts.search(cfg, resume=True)
    a, b = _ckpt(full.run_dir), _ckpt(resumed.run_dir)
    assert "position" not in b  # the last checkpoint is the final epoch end
    for key in ("model", "arch", "method", "rng"):
        _assert_identical(a[key], b[key], key)
    for ha, hb in zip(a["history"], b["history"]):  # metric sums of the partial epoch were restored
        assert {k: v for k, v in ha.items() if k != "seconds"} == {k: v for k, v in hb.items() if k != "seconds"}
    assert resumed.genotype == full.genotype


@pytest.mark.parametrize("bad", [0, -3])
def test_checkpoint_every_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        fastdarts.search(_cfg(tmp_path / "bad", "darts", every=bad))
    assert not (tmp_path / "bad").exists()
