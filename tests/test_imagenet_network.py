"""quark0's NetworkImageNet (``build_network(..., stem="imagenet")``) against a literal port of
``cnn/model.py``, and the ``darts-imagenet-train`` recipe end to end on generated JPEGs."""

import csv
import os

import pytest
import reference_darts as ref
import reference_darts_eval as ref_eval
import torch

from fastdarts.bench import write_jpeg_folder
from fastdarts.cli import main
from fastdarts.data import DataConfig, build_train_data
from fastdarts.genotype import Genotype, save_genotype
from fastdarts.spaces import build_network

# quark0/darts cnn/genotypes.py DARTS_V2, as fastdarts' Genotype
DARTS_V2 = Genotype(**ref.DARTS_V2._asdict())


def _pair(C=8, layers=5, classes=7, auxiliary=True):
    torch.manual_seed(0)
    ours = build_network(DARTS_V2, C, classes, layers, auxiliary=auxiliary, stem="imagenet").double()
    theirs = ref_eval.NetworkImageNet(C, classes, layers, auxiliary, ref.DARTS_V2).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same module names and shapes
    return ours, theirs


@pytest.mark.parametrize("drop_path_prob", [0.0, 0.3])
def test_logits_aux_logits_and_gradients_equal_the_original_at_224_px(drop_path_prob):
    ours, theirs = _pair()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    y = torch.tensor([3, 6])
    results = []
    for net in (ours, theirs):
        net.train()
        net.drop_path_prob = drop_path_prob
        torch.manual_seed(1)  # the same drop-path masks, drawn in the same order
        logits, aux = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
        results.append((logits, aux, torch.autograd.grad(loss, list(net.parameters()))))
    (l1, a1, g1), (l2, a2, g2) = results
    # The one difference is the final pooling: a global mean (ours) and AvgPool2d(7) over the same 7x7
    # map, summed in another order: float64 rounding, about 49 x 2.2e-16 relative.
    torch.testing.assert_close(l1, l2, rtol=1e-13, atol=1e-14)
    assert torch.equal(a1, a2)  # the auxiliary head sits before it: the same operations in the same order
    for p1, p2 in zip(g1, g2, strict=True):
        torch.testing.assert_close(p1, p2, rtol=1e-12, atol=1e-14)


def test_eval_mode_matches_without_auxiliary_logits_and_with_the_same_parameter_names():
    ours, theirs = _pair()
    ours.eval()
    theirs.eval()
    theirs.drop_path_prob = 0.0  # quark0's train_imagenet.py sets it on the model every epoch
    x = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    (l1, a1), (l2, a2) = ours(x), theirs(x)
    assert a1 is None and a2 is None
    torch.testing.assert_close(l1, l2, rtol=1e-13, atol=1e-14)
    # the module tree is quark0's: the same parameters, name for name
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_small_images_run_through_the_adaptive_paths():
    ours, _ = _pair(C=4, layers=3)
    logits, aux = ours.train()(torch.randn(2, 3, 64, 64, dtype=torch.float64))  # 2x2 maps at the head
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_a_nas_bench_201_genotype_has_no_imagenet_network():
    from fastdarts.genotype import NB201Genotype

    g = NB201Genotype([[("nor_conv_3x3", 0)], [("skip_connect", 0), ("nor_conv_3x3", 1)],
                       [("skip_connect", 0), ("none", 1), ("nor_conv_3x3", 2)]])
    with pytest.raises(ValueError, match="NAS-Bench-201"):
        build_network(g, 16, 10, stem="imagenet")


def test_color_jitter_is_for_folders_and_checked():
    with pytest.raises(ValueError, match="ImageFolder"):
        build_train_data(DataConfig(name="digits", color_jitter=[0.4, 0.4, 0.4, 0.2]), seed=0)
    for bad in ([0.4, 0.4, 0.4], [0.4, 0.4, 0.4, 0.6], [-0.1, 0, 0, 0], ["a", 0, 0, 0]):
        with pytest.raises(ValueError, match="color_jitter"):
            DataConfig(color_jitter=bad)


def test_darts_imagenet_train_runs_end_to_end_with_top5(tmp_path, capsys):
    root = write_jpeg_folder(str(tmp_path / "jpegs"), 6, 6, 80)
    genotype = str(tmp_path / "g.json")
    save_genotype(DARTS_V2, genotype)
    run = tmp_path / "run"
    assert main(["train", genotype, "darts-imagenet-train", f"data={root}", "C=8", "layers=5", "epochs=2",
                 "data.batch_size=8", "data.image_size=64", "data.num_workers=2", f"run_dir={run}"]) == 0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for r in rows:  # top-5 of 6 classes: never below top-1
        assert 0.0 <= float(r["test_acc"]) <= float(r["test_acc5"]) <= 100.0
    cfg = (run / "config.yaml").read_text()
    assert "stem: imagenet" in cfg and "color_jitter:" in cfg
    assert os.path.isfile(run / "model.pt")
