"""The ``pcdarts-imagenet`` recipe: PC-DARTS' large-batch schedule options, the saved subsets, and a tiny
end-to-end search on a generated ImageFolder of JPEGs with a resume.

Expected schedule values are written out from ``train_search_imagenet.py`` (yuhuixu1993/PC-DARTS@b74702f):
the warm-up LR of epochs 0-4 is the *base* LR times (e + 1)/5 (``lr = args.learning_rate``, :150, :157),
then the closed-form cosine at e (``scheduler.step()`` at the epoch start, :152, on the PyTorch 1.0 its
README names for V100s, whose scheduler constructor resets ``last_epoch``: see tests/reference_lr.py).
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts import viz
from fastdarts.cli import main
from fastdarts.config import SearchConfig, load_config, recipe_path, resolve_search_config
from fastdarts.data import DataConfig, build_search_data
from fastdarts.methods.pcdarts import PCDarts
from fastdarts.subsets import SUBSETS_FILE, read_subsets

search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function

# ---------------------------------------------------------------------------------------------- schedule options


def _hyper(**over):
    return PCDarts.resolve_hyper({"epochs": 50, "w_lr": 0.5, **over})


def _method(net=None, **over):
    net = net or fastdarts.build_supernet("darts", "pcdarts", C=4, num_classes=3, layers=3, backend="eager",
                                          k=2, stem="imagenet")
    return PCDarts(net, _hyper(**over))


def _cosine(e, T=50, lr=0.5):
    return lr * (1 + math.cos(math.pi * e / T)) / 2  # eta_min 0, epoch-start step on PyTorch 1.0


def test_warmup_scales_the_base_lr_for_five_epochs_above_batch_256():
    m = _method(batch_size=1024, w_warmup_epochs=5, w_warmup_batch=256)
    for e in range(8):
        m.begin_epoch(e)
        expected = 0.5 * (e + 1) / 5 if e < 5 else _cosine(e)
        assert m.lr == pytest.approx(expected, rel=1e-15, abs=0)  # same operations, up to one rounding
        assert all(g["lr"] == m.lr for g in m.w_optim.param_groups)
    # At batch 256 (not > 256) the original skips the warm-up: the cosine from epoch 0.
    m = _method(batch_size=256, w_warmup_epochs=5, w_warmup_batch=256)
    m.begin_epoch(0)
    assert m.lr == pytest.approx(_cosine(0), rel=1e-15, abs=0)
    # Off by default (CIFAR).
    m = _method(batch_size=1024)
    m.begin_epoch(0)
    assert m.lr == pytest.approx(_cosine(0), rel=1e-15, abs=0)


def test_linear_scaling_unless_w_lr_is_explicit(caplog):
    scaled = PCDarts.resolve_hyper({"batch_size": 256, "lr_scale_batch": 1024, "w_lr_ref": 0.5})
    assert scaled["w_lr"] == 0.5 * 256 / 1024
    explicit = PCDarts.resolve_hyper({"batch_size": 256, "lr_scale_batch": 1024, "w_lr_ref": 0.5, "w_lr": 0.3})
    assert explicit["w_lr"] == 0.3
    default_ref = PCDarts.resolve_hyper({"batch_size": 512, "lr_scale_batch": 256})
    assert default_ref["w_lr"] == PCDarts.DEFAULTS["w_lr"] * 2  # w_lr_ref None: the method's own w_lr
    assert PCDarts.resolve_hyper({"batch_size": 512})["w_lr"] == PCDarts.DEFAULTS["w_lr"]  # no rule: no scaling

    net = fastdarts.build_supernet("darts", "pcdarts", C=4, num_classes=3, layers=3, backend="eager")
    with caplog.at_level(logging.INFO, logger="fastdarts"):
        PCDarts(net, scaled).begin_epoch(0)
        PCDarts(net, explicit).begin_epoch(0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weight LR")]
    assert len(lines) == 2
    assert "w_lr 0.125 from the linear scaling rule: 0.5 at batch 1024" in lines[0]
    assert "w_lr 0.3 set explicitly" in lines[1] and "would give 0.125" in lines[1]

    # Through the recipe: the published 0.5 at 1024, scaled at another batch, explicit wins, stable on re-resolving.
    base = load_config(SearchConfig, recipe_path("pcdarts-imagenet"))
    assert resolve_search_config(base).optim.w_lr == 0.5
    small = resolve_search_config(load_config(SearchConfig, recipe_path("pcdarts-imagenet"), ["data.batch_size=256"]))
    assert small.optim.w_lr == 0.125 and resolve_search_config(small).optim.w_lr == 0.125
    mine = resolve_search_config(load_config(SearchConfig, recipe_path("pcdarts-imagenet"),
                                             ["data.batch_size=256", "optim.w_lr=0.2"]))
    assert mine.optim.w_lr == 0.2


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_architecture_gradient_is_clipped_as_one_norm(clip):
    torch.manual_seed(0)
    net = fastdarts.build_supernet("darts", "pcdarts", C=4, num_classes=3, layers=3, backend="eager",
                                   stem="imagenet").double()
    m = PCDarts(net, _hyper(alpha_grad_clip=clip))
    g = torch.Generator().manual_seed(3)
    xv, yv = torch.randn(2, 3, 64, 64, generator=g, dtype=torch.float64), torch.tensor([0, 2])
    # The unclipped gradient, by hand (train mode; BN uses batch statistics, so the extra forward
    # changes only running statistics, which the gradient does not read).
    net.train()
    raw = torch.autograd.grad(F.cross_entropy(net(xv), yv), net.arch_parameters())
    norm = torch.cat([r.reshape(-1) for r in raw]).norm()
    assert clip is None or norm > clip  # the clip is active in this case
    m.arch_step(None, (xv, yv))
    # torch.nn.utils.clip_grad_norm_: g·min(1, c/(‖g‖ + 1e-6)) with ‖g‖ over α and β together (:204).
    scale = 1.0 if clip is None else min(1.0, clip / (float(norm) + 1e-6))
    for a, r in zip(net.arch_parameters(), raw, strict=True):
        torch.testing.assert_close(a.grad, r * scale)  # float64, same operations up to reduction order


def test_valid_sampling_option_and_bad_values():
    assert _method().valid_sampling == "random"
    assert _method(valid_sampling="iterate").valid_sampling == "iterate"
    for key, value in (("valid_sampling", "sometimes"), ("alpha_grad_clip", 0.0), ("w_warmup_epochs", -1),
                       ("lr_scale_batch", 0), ("w_lr_ref", -0.1), ("w_warmup_batch", 2.5)):
        with pytest.raises(ValueError, match=f"method_options.{key}") as err:
            _hyper(**{key: value})
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------- data


def _jpeg_folder(root, per_class=12, val_per_class=3, size=64, classes=("ant", "bee", "cat"), prefix="img"):
    """An ImageFolder of small JPEGs: train/<class>/ and val/<class>/, a colour per class plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3)) + 60.0
                base[..., c % 3] += 120.0
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"{prefix}_{i:02d}.jpg"), quality=90)
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _jpeg_folder(tmp_path_factory.mktemp("imagenet"))


def _data(root, subsets_file, **over):
    cfg = DataConfig(name=root, batch_size=4, image_size=64, subset=0.5, arch_subset=0.25, **over)
    return build_search_data(cfg, 2, subsets_file=subsets_file)


def test_subsets_are_drawn_saved_and_read_back(folder, tmp_path):
    path = str(tmp_path / SUBSETS_FILE)
    drawn = _data(folder, path)
    assert not drawn.subsets_reused and not os.path.exists(path)  # build_search_data writes nothing
    rec = drawn.subsets
    assert rec["classes"] == ["ant", "bee", "cat"]
    assert (rec["subset"], rec["arch_subset"], rec["seed"]) == (0.5, 0.25, 2)
    # round(0.5·12) = 6 and round(0.25·12) = 3 images per class, from disjoint halves of train/.
    assert len(rec["weights"]) == 18 and len(rec["architecture"]) == 9
    assert not set(rec["weights"]) & set(rec["architecture"])
    for key in ("weights", "architecture"):
        assert sorted({r.split("/")[0] for r in rec[key]}) == ["ant", "bee", "cat"]
    from fastdarts.subsets import save_subsets

    save_subsets(path, rec)
    again = _data(folder, path)
    assert again.subsets_reused and read_subsets(path) == rec
    assert torch.equal(again.train.indices, drawn.train.indices)
    assert torch.equal(again.valid.indices, drawn.valid.indices)


def test_subsets_file_that_does_not_match_is_one_line_naming_it(folder, tmp_path):
    path = str(tmp_path / SUBSETS_FILE)
    rec = _data(folder, path).subsets
    cases = {
        "not among the folder's training images (first: ant/gone.jpg)": dict(rec, weights=["ant/gone.jpg"]),
        "classes differ": dict(rec, classes=["ant", "bee", "dog"]),
        "was drawn with subset=0.3": dict(rec, subset=0.3),
        "is not a fastdarts subsets file (missing architecture)": {k: v for k, v in rec.items()
                                                                     if k != "architecture"},
    }
    for words, bad in cases.items():
        with open(path, "w") as f:
            json.dump(bad, f)
        with pytest.raises(ValueError) as err:
            _data(folder, path)
        msg = str(err.value)
        assert words in msg and path in msg and "\n" not in msg, msg
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        _data(folder, path)


# ---------------------------------------------------------------------------------------------- end to end

# Tiny pcdarts-imagenet: 2 epochs, C=4, 3 cells, batch 4 (18 weight / 9 architecture images: 5 steps, the
# α split cycling), architecture from epoch 1, warm-up forced at this batch (w_warmup_batch=0).
TINY = ["epochs=2", "C=4", "layers=3", "data.batch_size=4", "data.image_size=64", "data.subset=0.5",
        "data.arch_subset=0.25", "optim.arch_warmup=1", "method_options.w_warmup_batch=0", "backend=eager",
        "log_every=1"]


def _lrs(run_dir):
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def _checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)


def test_recipe_end_to_end_with_subsets_reused_on_resume(tmp_path, capsys, monkeypatch):
    # The figures (TensorBoard each epoch, the CLI's PNGs at the end) are tested elsewhere and cost more CPU than
    # these tiny epochs: left out here to keep the test short.
    monkeypatch.setattr(search_mod, "log_arch_figures", lambda *args, **kwargs: None)
    monkeypatch.setattr(viz, "plot_run", lambda *args, **kwargs: [])
    recipe = recipe_path("pcdarts-imagenet")
    root = _jpeg_folder(tmp_path / "data")
    # Uninterrupted, DataLoader workers on.
    full = fastdarts.search(load_config(SearchConfig, recipe, [f"data={root}", *TINY, "data.num_workers=2",
                                                               f"run_dir={tmp_path / 'full'}"]))
    w_lr = 0.5 * 4 / 1024  # linear scaling of 0.5 at batch 1024
    assert _lrs(full.run_dir) == pytest.approx([w_lr * 1 / 5, w_lr * 2 / 5], rel=1e-15, abs=0)
    with open(os.path.join(full.run_dir, "search.log")) as f:
        log = f.read()
    assert "from the linear scaling rule" in log and "drawn from the seed and saved to" in log
    saved = read_subsets(os.path.join(full.run_dir, SUBSETS_FILE))
    assert len(saved["weights"]) == 18 and len(saved["architecture"]) == 9

    # One epoch in-process; then new images appear in every class (sorted first, so every index
    # shifts). The resumed run reads its lists back and ends exactly where the uninterrupted run did.
    part = str(tmp_path / "part")
    fastdarts.search(load_config(SearchConfig, recipe, [f"data={root}", *TINY, "epochs=1", "data.num_workers=0",
                                                        f"run_dir={part}"]))
    assert read_subsets(os.path.join(part, SUBSETS_FILE)) == saved
    _jpeg_folder(root, per_class=4, val_per_class=0, prefix="aaa")
    assert main(["search", "--resume", part, "epochs=2"]) == 0
    with open(os.path.join(part, "search.log")) as f:
        assert "listed in" in f.read()
    assert read_subsets(os.path.join(part, SUBSETS_FILE)) == saved
    a, b = _checkpoint(full.run_dir), _checkpoint(part)
    assert a["epoch"] == b["epoch"] == 1
    for key in ("arch", "model"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)

    # A listed image disappears: the resume stops with one line naming the subsets file, writing nothing.
    os.remove(os.path.join(root, "train", saved["weights"][0]))
    before = {n: os.stat(os.path.join(part, n)).st_mtime_ns for n in os.listdir(part)}
    capsys.readouterr()
    assert main(["search", "--resume", part, "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"subsets file {os.path.join(part, SUBSETS_FILE)} does not match" in err
    assert saved["weights"][0] in err
    assert {n: os.stat(os.path.join(part, n)).st_mtime_ns for n in os.listdir(part)} == before
