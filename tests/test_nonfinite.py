"""``on_nonfinite=stop|skip`` through ``fd.search`` with an injected NaN (digits, tiny settings).

``stop`` (default): the non-finite check reads device-side flags once per ``log_every`` steps, so
the run stops within one interval of the bad step, names the tensor, the epoch and the bad step,
and keeps the last good checkpoint. ``skip``: the bad step's updates are undone at once and
counted; the run stops at the first bad step after ``max_skipped`` were skipped.
"""

import copy
import os

import pytest
import torch

import fastdarts
from fastdarts.config import SearchConfig
from fastdarts.data import DataConfig

# 40 training images in batches of 8: 5 steps per epoch.
STEPS_PER_EPOCH = 5


def _cfg(run_dir, epochs=2, **loop):
    return SearchConfig(method="darts", space="darts", epochs=epochs, C=4, layers=3, run_dir=str(run_dir),
                        data=DataConfig(batch_size=8, subset=0.03, arch_subset=0.03, image_size=8), **loop)


def _load_ckpt(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)


def _inject(monkeypatch, bad: dict, what: str = "loss"):
    """Make DARTS' step non-finite at ``bad`` = {epoch: [steps]} after its real updates.

    ``what="loss"`` returns a NaN loss; ``what="arch"`` also writes NaN into α of the normal cell.
    Returns the list of (epoch, step) calls and, per call, a copy of the state at its entry.
    """
    cls = fastdarts.methods.get_method("darts")
    real = cls.step
    calls, entry_states = [], []

    def step(self, train_batch, valid_batch, i):
        calls.append((self.epoch, i))
        entry_states.append(_state(self))
        metrics = real(self, train_batch, valid_batch, i)
        if i in bad.get(self.epoch, ()):
            metrics["loss"] = metrics["loss"] * float("nan")
            if what == "arch":
                with torch.no_grad():
                    self.model.alphas_normal[0, 0] = float("inf")
        return metrics

    monkeypatch.setattr(cls, "step", step)
    return calls, entry_states


def _state(method):
    """Everything a step updates: weights, buffers, architecture tensors, optimiser states."""
    model = method.model
    return copy.deepcopy({"model": model.state_dict(), "arch": model.arch_state_dict(),
                          "w_optim": method.w_optim.state_dict(), "a_optim": method.a_optim.state_dict()})


def _assert_same_state(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["arch"]:
        assert torch.equal(a["arch"][k], b["arch"][k]), k
    for which in ("w_optim", "a_optim"):
        sa, sb = a[which]["state"], b[which]["state"]
        assert sa.keys() == sb.keys(), which
        for i in sa:
            assert sa[i].keys() == sb[i].keys()
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (which, i, k)


@pytest.mark.parametrize("what,name", [("loss", "loss"), ("arch", "architecture tensor alphas_normal")])
def test_stop_names_tensor_epoch_step_within_one_interval(tmp_path, monkeypatch, what, name):
    calls, _ = _inject(monkeypatch, {1: [2]}, what)
    cfg = _cfg(tmp_path / "run", log_every=2)
    with pytest.raises(FloatingPointError, match="checkpoint.pt") as info:
        fastdarts.search(cfg)
    msg = str(info.value)
    assert name in msg and "epoch 1 step 2" in msg and "log_every=2" in msg
    # Bad step 2 of epoch 1; the interval's read comes after step 3: the run stopped there.
    assert calls[-1] == (1, 3)
    assert len(calls) == STEPS_PER_EPOCH + 4
    state = _load_ckpt(cfg.run_dir)
    assert state["epoch"] == 0  # the last good epoch
    assert all(torch.isfinite(v).all() for v in state["arch"].values())
    assert not os.path.exists(os.path.join(cfg.run_dir, "genotypes", "epoch_001.json"))


def test_stop_at_epoch_end_read_and_without_checkpoint(tmp_path, monkeypatch):
    # log_every larger than the epoch: the check rides on the epoch-end read, before any checkpoint.
    calls, _ = _inject(monkeypatch, {0: [1]})
    cfg = _cfg(tmp_path / "run", log_every=50)
    with pytest.raises(FloatingPointError, match="no checkpoint had been written yet") as info:
        fastdarts.search(cfg)
    assert "non-finite loss at epoch 0 step 1" in str(info.value)
    assert len(calls) == STEPS_PER_EPOCH
    assert not os.path.exists(os.path.join(cfg.run_dir, "checkpoint.pt"))


def test_skip_drops_the_bad_steps_updates_and_counts_them(tmp_path, monkeypatch):
    bad = {0: [1, 3], 1: [0]}
    calls, entry = _inject(monkeypatch, bad, "arch")
    cfg = _cfg(tmp_path / "run", on_nonfinite="skip", max_skipped=3)
    result = fastdarts.search(cfg)
    assert len(calls) == 2 * STEPS_PER_EPOCH
    # The state entering the step after a bad one is the state that entered the bad one, bit for bit.
    for k, (epoch, i) in enumerate(calls[:-1]):
        if i in bad.get(epoch, ()):
            _assert_same_state(entry[k], entry[k + 1])
        else:
            assert not torch.equal(entry[k]["arch"]["alphas_normal"], entry[k + 1]["arch"]["alphas_normal"])
    state = _load_ckpt(cfg.run_dir)
    assert state["epoch"] == 1 and state["skipped_steps"] == 3
    assert all(torch.isfinite(v).all() for v in state["arch"].values())
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in result.history)
    with open(os.path.join(cfg.run_dir, "search.log")) as f:
        log = f.read()
    assert "non-finite loss, architecture tensor alphas_normal at epoch 0 step 3: step skipped (2 of at most 3)" in log


def test_skip_stops_after_max_skipped(tmp_path, monkeypatch):
    calls, _ = _inject(monkeypatch, {0: [0], 1: [1, 2]})
    cfg = _cfg(tmp_path / "run", on_nonfinite="skip", max_skipped=2)
    with pytest.raises(FloatingPointError, match="max_skipped=2") as info:
        fastdarts.search(cfg)
    assert "non-finite loss at epoch 1 step 2" in str(info.value) and "3 non-finite steps" in str(info.value)
    assert calls[-1] == (1, 2)  # skip checks every step: it stops at the bad step itself
    state = _load_ckpt(cfg.run_dir)
    assert state["epoch"] == 0 and state["skipped_steps"] == 1


@pytest.mark.parametrize("key,value,needle", [
    ("log_every", 0, "log_every"), ("on_nonfinite", "ignore", "on_nonfinite"), ("max_skipped", -1, "max_skipped"),
])
def test_loop_options_are_checked_before_any_work(tmp_path, key, value, needle):
    cfg = _cfg(tmp_path / "run", **{key: value})
    with pytest.raises(ValueError, match=needle):
        fastdarts.search(cfg)
    assert not os.path.exists(cfg.run_dir)
