"""`fastdarts train`: retraining recipes, the recipe picked by the data, the run directory, resume."""

import importlib
import os

import pytest
import torch
import yaml
from reference_lr import cosine_annealing, step_lr

from fastdarts.cli import main
from fastdarts.config import TrainConfig, load_config, recipe_names, recipe_path, to_dict
from fastdarts.genotype import Genotype, load_genotype, save_genotype
from fastdarts.spaces import build_network

train_mod = importlib.import_module("fastdarts.train")

DARTS_V2 = Genotype(  # quark0/darts cnn/genotypes.py DARTS_V2
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])
# A tiny retraining on the digits at 8x8 (all 1438 training images, batch 128: 12 steps per epoch).
TINY = ["C=4", "layers=3", "data.batch_size=128", "data.image_size=8"]
RUN_FILES = {"config.yaml", "genotype.json", "train.log", "metrics.csv", "tb", "checkpoint.pt", "model.pt", "plots"}

# Published settings, written out independently of the YAML files (quark0/darts@f276dd3 cnn/train.py and
# cnn/train_imagenet.py argparse defaults, README.md:64 and :68).
CIFAR = dict(epochs=600, C=36, layers=20, batch=96, cutout=16, auxiliary=True, auxiliary_weight=0.4,
             drop_path_prob=0.2, lr=0.025, lr_min=0.0, lr_schedule="cosine", grad_clip=5.0, momentum=0.9,
             weight_decay=3e-4, label_smoothing=0.0, stem="cifar")
IMAGENET = dict(epochs=250, C=48, layers=14, batch=128, auxiliary=True, auxiliary_weight=0.4, drop_path_prob=0.0,
                lr=0.1, lr_schedule="step", lr_gamma=0.97, lr_decay_period=1, grad_clip=5.0, momentum=0.9,
                weight_decay=3e-5, label_smoothing=0.1, stem="imagenet")


@pytest.fixture
def genotype(tmp_path):
    path = str(tmp_path / "darts_v2.json")
    save_genotype(DARTS_V2, path)
    return path


def _dry_run(capsys, *args) -> tuple[dict, str]:
    """(resolved config, first output line: the recipe note, a YAML comment)."""
    assert main(["train", *args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return yaml.safe_load(out), out.splitlines()[0]


def _check(d: dict, expected: dict) -> None:
    for key, value in expected.items():
        got = d["data"]["batch_size"] if key == "batch" else d["data"]["cutout"] if key == "cutout" else d[key]
        assert got == value, (key, got, value)


# ------------------------------------------------------------------------------------- recipes


def test_train_recipes_are_listed_apart_from_search_recipes(capsys):
    assert recipe_names("train") == ["darts-cifar10-train", "darts-imagenet-train", "digits-train"]
    assert not set(recipe_names("train")) & set(recipe_names())
    assert main(["train", "--list-configs"]) == 0
    assert capsys.readouterr().out.splitlines() == recipe_names("train")


def test_digits_data_picks_digits_train(genotype, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d, note = _dry_run(capsys, genotype)
    assert note.startswith("# ") and "recipe digits-train" in note
    expected = to_dict(load_config(TrainConfig, recipe_path("digits-train", "train"), [f"genotype={genotype}"]))
    assert d == expected
    assert d["data"]["name"] == "digits" and d["genotype"] == genotype
    assert not os.path.exists(tmp_path / "runs")  # a dry run starts nothing


def test_cifar_path_picks_the_darts_cifar10_recipe(genotype, capsys, tmp_path):
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (cifar / name).write_bytes(b"")  # the recipe is chosen from the folder's layout; nothing is read
    d, note = _dry_run(capsys, genotype, f"data={cifar}")
    assert "recipe darts-cifar10-train" in note
    _check(d, CIFAR)
    assert d["data"]["name"] == str(cifar)


def test_recipes_hold_the_published_settings(genotype, capsys):
    _check(_dry_run(capsys, genotype, "darts-cifar10-train")[0], CIFAR)
    _check(_dry_run(capsys, genotype, "darts-imagenet-train")[0], IMAGENET)
    # The Python API's defaults are DARTS' CIFAR-10 evaluation (layers None: build_network's 20 cells; the
    # data section keeps DataConfig's defaults, without README.md:64's --cutout).
    api = to_dict(TrainConfig())
    recipe = to_dict(load_config(TrainConfig, recipe_path("darts-cifar10-train", "train")))
    assert api.pop("layers") is None and recipe.pop("layers") == 20
    assert {k: v for k, v in api.items() if k != "data"} == {k: v for k, v in recipe.items() if k != "data"}
    for path in (recipe_path(n, "train") for n in recipe_names("train")):
        with open(path) as f:
            assert f.readline().startswith("#")  # each file opens saying where its values come from


def test_unknown_train_recipe_names_the_closest(genotype, capsys):
    assert main(["train", genotype, "digit-train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown retraining recipe 'digit-train'" in err and "'digits-train'" in err


def test_train_accepts_a_search_run_directory(genotype, capsys, tmp_path):
    run = tmp_path / "search_run"
    run.mkdir()
    save_genotype(DARTS_V2, str(run / "genotype.json"))
    d, _ = _dry_run(capsys, str(run))
    assert d["genotype"] == str(run / "genotype.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "without genotype.json" in err


def test_lr_schedules_follow_quark0_as_run_on_pytorch_031():
    # quark0's train.py / train_imagenet.py call scheduler.step() at each epoch start on PyTorch
    # 0.3.1: epoch e runs at the schedule's value at e (float64, same operations: equal).
    cifar = load_config(TrainConfig, recipe_path("darts-cifar10-train", "train"))
    sched = cosine_annealing(0.025, 0.0, 600.0)
    assert [train_mod.lr_at(cifar, e) for e in range(600)] == [sched.step() for _ in range(600)]
    imagenet = load_config(TrainConfig, recipe_path("darts-imagenet-train", "train"))
    sched = step_lr(0.1, 1, 0.97)
    assert [train_mod.lr_at(imagenet, e) for e in range(250)] == [sched.step() for _ in range(250)]
    digits = load_config(TrainConfig, recipe_path("digits-train", "train"))
    assert train_mod.lr_at(digits, 0) == digits.lr and train_mod.lr_at(digits, digits.epochs - 1) > 0


# ------------------------------------------------------------------------------------- a real run


def test_train_run_directory(genotype, capsys, tmp_path):
    run = tmp_path / "train_run"
    assert main(["train", genotype, "epochs=1", *TINY, f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    assert set(os.listdir(run)) == RUN_FILES
    assert not os.path.exists(run / "search.log")
    assert os.listdir(run / "plots") == ["curves.png"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run / "tb"))
    assert load_genotype(str(run / "genotype.json")) == DARTS_V2
    with open(run / "metrics.csv") as f:
        assert len(f.read().splitlines()) == 2  # header + one epoch
    with open(run / "train.log") as f:
        assert "epoch 1/1" in f.read()
    state = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    net = build_network(DARTS_V2, 4, 10, 3, auxiliary=False)  # digits-train: no auxiliary head
    net.load_state_dict(state)  # strict: model.pt is the network's state_dict


def test_resume_continues_exactly(genotype, tmp_path, monkeypatch, capsys):
    args = [genotype, "epochs=2", *TINY]
    assert main(["train", *args, f"run_dir={tmp_path / 'whole'}"]) == 0
    real = train_mod.save_checkpoint

    def save_then_die(path, state):
        real(path, state)
        raise KeyboardInterrupt  # a Ctrl-C right after epoch 1's checkpoint

    with monkeypatch.context() as mp:
        mp.setattr(train_mod, "save_checkpoint", save_then_die)
        assert main(["train", *args, f"run_dir={tmp_path / 'cut'}"]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "cut" / "model.pt")
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    whole = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert whole.keys() == cut.keys() and all(torch.equal(whole[k], cut[k]) for k in whole)
    with open(tmp_path / "whole" / "metrics.csv") as a, open(tmp_path / "cut" / "metrics.csv") as b:
        # same losses and accuracies epoch by epoch (the seconds column differs)
        assert [r.split(",")[:5] for r in a.read().splitlines()] == [r.split(",")[:5] for r in b.read().splitlines()]
