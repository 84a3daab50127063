"""The search loop end to end: run directory, resume, NaN handling, config, CLI and other spaces."""

import csv
import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

import fastdarts
from fastdarts.cli import main
from fastdarts.config import OptimConfig, SearchConfig, TrainConfig, load_config
from fastdarts.data import DataConfig

search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function

# Tiny settings: C=4, 3 cells, 8x8 digits, a few batches of 16 per epoch.
SUBSET = 0.03
TINY = ["C=4", "layers=3", "data.batch_size=16", f"data.subset={SUBSET}", f"data.arch_subset={SUBSET}",
        "data.image_size=8"]



def _cfg(run_dir, method="darts", epochs=2, space="darts", layers=3, **optim):
    return SearchConfig(method=method, space=space, epochs=epochs, C=4, layers=layers, run_dir=str(run_dir),
                        data=DataConfig(batch_size=16, subset=SUBSET, arch_subset=SUBSET, image_size=8),
                        optim=OptimConfig(**optim))


def _load_ckpt(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)


class _Killed(Exception):
    """Stands in for a kill right after the first checkpoint reached the disk."""


def _run_killed_after_first_epoch(cfg, monkeypatch):
    real = search_mod.save_checkpoint
    calls = []

    def save_then_die(path, state):
        real(path, state)
        calls.append(state["epoch"])
        raise _Killed

    with monkeypatch.context() as mp:
        mp.setattr(search_mod, "save_checkpoint", save_then_die)
        with pytest.raises(_Killed):
            fastdarts.search(cfg)
    assert calls == [0]


_CFG = {"darts": {}, "pcdarts": {"arch_warmup": 1}}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """Uninterrupted 2-epoch runs, one per method (shared by the end-to-end and resume tests)."""
    out = {}
    for method, optim in _CFG.items():
        run_dir = tmp_path_factory.mktemp(f"{method}_a")
        out[method] = (fastdarts.search(_cfg(run_dir, method, **optim)), str(run_dir))
    return out


# ------------------------------------------------------------------------------------------ end to end


def test_search_end_to_end_run_directory(unbroken):
    result, run_dir = unbroken["darts"]
    assert result.run_dir == run_dir
    for name in ("config.yaml", "search.log", "metrics.csv", "checkpoint.pt", "genotype.json",
                 os.path.join("genotypes", "epoch_000.json"), os.path.join("genotypes", "epoch_001.json")):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    assert not os.path.exists(os.path.join(run_dir, "checkpoint.pt.tmp"))
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["epoch", "lr", "train_loss"] and len(rows) == 3
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    with open(os.path.join(run_dir, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["C"] == 4 and saved["data"]["image_size"] == 8 and saved["epochs"] == 2
    state = _load_ckpt(run_dir)
    assert state["epoch"] == 1 and len(state["history"]) == 2
    assert set(state["arch"]) == {"alphas_normal", "alphas_reduce"}
    assert 0.0 <= result.test_acc <= 100.0
    g = fastdarts.load_genotype(os.path.join(run_dir, "genotype.json"))
    assert g == result.genotype
    assert len(g.normal) == 8 and list(g.normal_concat) == [2, 3, 4, 5]
    assert fastdarts.load_genotype(os.path.join(run_dir, "genotypes", "epoch_001.json")) == g
    with open(os.path.join(run_dir, "search.log")) as f:
        log = f.read()
    assert "held-out accuracy" in log
    # the epoch-0 learning rate follows quark0's schedule as run on PyTorch 0.3.1: cos(0), the start value
    assert float(rows[1][1]) == 0.025


def test_pcdarts_warmup_visible_in_history(unbroken):
    _, run_dir = unbroken["pcdarts"]
    hist = _load_ckpt(run_dir)["history"]
    assert math.isnan(hist[0]["arch_loss"])  # architecture frozen in epoch 0
    assert math.isfinite(hist[1]["arch_loss"])
    assert set(_load_ckpt(run_dir)["arch"]) == {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"}


# ------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("method", ["darts", "pcdarts"])
def test_killed_run_resumes_bit_identically(unbroken, tmp_path, monkeypatch, method):
    result_a, dir_a = unbroken[method]
    cfg = _cfg(tmp_path / "b", method, **_CFG[method])
    _run_killed_after_first_epoch(cfg, monkeypatch)
    assert _load_ckpt(cfg.run_dir)["epoch"] == 0
    result_b = fastdarts.search(cfg, resume=True)
    a, b = _load_ckpt(dir_a), _load_ckpt(cfg.run_dir)
    assert a["epoch"] == b["epoch"] == 1
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["arch"]:
        assert torch.equal(a["arch"][k], b["arch"][k]), k
    # optimiser states continue exactly too
    for which in ("w_optim", "a_optim"):
        sa, sb = a["method"][which]["state"], b["method"][which]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (which, i, k)
    assert result_b.genotype == result_a.genotype
    assert result_b.test_acc == result_a.test_acc
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert json.dumps(strip(a["history"])) == json.dumps(strip(b["history"]))
    with open(os.path.join(cfg.run_dir, "metrics.csv")) as f:
        assert [r[0] for r in csv.reader(f)] == ["epoch", "0", "1"]


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    method_cls = fastdarts.methods.get_method("darts")
    real_step = method_cls.step

    def step(self, train_batch, valid_batch, i):
        metrics = real_step(self, train_batch, valid_batch, i)
        if self.epoch == 1:
            metrics["loss"] = torch.tensor(float("nan"))
        return metrics

    monkeypatch.setattr(method_cls, "step", step)
    cfg = _cfg(tmp_path / "nan", "darts", epochs=2)
    with pytest.raises(FloatingPointError, match="checkpoint.pt") as info:
        fastdarts.search(cfg)
    assert "loss" in str(info.value) and "epoch 1" in str(info.value)
    state = _load_ckpt(cfg.run_dir)
    assert state["epoch"] == 0
    net = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=3)
    net.load_state_dict(state["model"])
    net.load_arch_state_dict(state["arch"])
    assert not os.path.exists(os.path.join(cfg.run_dir, "genotypes", "epoch_001.json"))


def test_existing_checkpoint_and_missing_checkpoint(unbroken, tmp_path):
    _, dir_a = unbroken["darts"]
    before = os.path.getmtime(os.path.join(dir_a, "checkpoint.pt"))
    with pytest.raises(FileExistsError, match="checkpoint"):
        fastdarts.search(_cfg(dir_a))
    assert os.path.getmtime(os.path.join(dir_a, "checkpoint.pt")) == before
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        fastdarts.search(_cfg(tmp_path / "empty"), resume=True)
    cfg = _cfg(tmp_path / "x")
    cfg.run_dir = None
    with pytest.raises(ValueError, match="run_dir"):
        fastdarts.search(cfg, resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "corrupt"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):  # fastdarts.checkpoint.CheckpointError
        search_mod.load_checkpoint(str(run_dir / "checkpoint.pt"))


# ------------------------------------------------------------------------------------------ config


def test_config_overrides_are_typed():
    cfg = load_config(SearchConfig, None, ["method=pcdarts", "data.batch_size=32", "data=digits",
                                           "optim.alpha_lr=1e-3", "epochs=3", "recompute=true",
                                           "optim.alpha_betas=[0.6, 0.99]", "method_options.k=2"])
    assert cfg.method == "pcdarts"
    assert cfg.data.batch_size == 32 and isinstance(cfg.data.batch_size, int)
    assert cfg.data.name == "digits"
    assert cfg.optim.alpha_lr == 1e-3 and isinstance(cfg.optim.alpha_lr, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.recompute is True
    assert cfg.optim.alpha_betas == [0.6, 0.99]
    assert cfg.method_options == {"k": 2}
    assert cfg.optim.w_lr is None  # untouched: the method's default
    assert load_config(SearchConfig, None, ["epochs=none"]).epochs is None
    # the data=<name> shorthand combines with data.<field> overrides in either order
    other = load_config(SearchConfig, None, ["data=digits", "data.batch_size=8"])
    assert other.data.name == "digits" and other.data.batch_size == 8
    with pytest.raises(ValueError, match="conflicts"):
        load_config(SearchConfig, None, ["optim.w_lr=0.1", "optim=3"])


def test_config_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError, match="unknown config key 'epoch'; did you mean 'epochs'"):
        load_config(SearchConfig, None, ["epoch=3"])
    with pytest.raises(ValueError, match="unknown config key 'xyz'") as info:  # no close name: all are listed
        load_config(SearchConfig, None, ["xyz=3"])
    assert "epochs" in str(info.value) and "method" in str(info.value)
    with pytest.raises(ValueError, match="data.batchsize") as info:
        load_config(SearchConfig, None, ["data.batchsize=3"])
    assert "batch_size" in str(info.value)


@pytest.mark.parametrize("override", ["epochs=three", "data.batch_size=1.5", "optim.alpha_lr=fast",
                                      "recompute=maybe", "optim.alpha_betas=3", "nonsense"])
def test_config_bad_values(override):
    with pytest.raises(ValueError):
        load_config(SearchConfig, None, [override])


def test_config_yaml_file(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("method: pcdarts\nepochs: 4\ndata:\n  batch_size: 8\n  image_size: 8\noptim:\n  arch_warmup: 2\n")
    cfg = load_config(SearchConfig, str(path), ["epochs=5"])
    assert cfg.method == "pcdarts" and cfg.epochs == 5  # overrides beat the file
    assert cfg.data.batch_size == 8 and cfg.data.image_size == 8 and cfg.optim.arch_warmup == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(SearchConfig, str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("methd: darts\n")
    with pytest.raises(ValueError, match="methd"):
        load_config(SearchConfig, str(unknown))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(SearchConfig, str(tmp_path / "nowhere.yaml"))
    default = load_config(SearchConfig, search_mod.default_search_config_path())
    assert default.data.name == "digits" and default.method == "darts"
    train = load_config(TrainConfig, None, ["epochs=1", "auxiliary=false"])
    assert train.epochs == 1 and train.auxiliary is False


# ------------------------------------------------------------------------------------------ CLI


def test_cli_search_and_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "cli_search"
    rc = main(["search", "epochs=1", *TINY, f"run_dir={run_dir}"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "genotype:" in out and "run directory:" in out and "held-out accuracy" in out
    assert str(run_dir) in out
    genotype = str(run_dir / "genotype.json")
    rc = main(["train", genotype, "epochs=1", "C=4", "layers=3", "data.batch_size=16", "data.image_size=8",
               "auxiliary=true", f"run_dir={tmp_path / 'cli_train'}"])  # digits-train has no auxiliary head
    out = capsys.readouterr().out
    assert rc == 0
    assert "held-out accuracy" in out and "parameters" in out
    assert TrainConfig().auxiliary  # the auxiliary head ran on 2x2 maps
    state = _load_ckpt(str(tmp_path / "cli_train"))
    assert any(k.startswith("auxiliary_head") for k in state["model"])
    with open(tmp_path / "cli_train" / "metrics.csv") as f:
        assert len(list(csv.reader(f))) == 2


def test_cli_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "method=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'nope'" in err and "darts" in err
    assert main(["search", "bogus_key=1"]) == 2
    assert "bogus_key" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.json"), "epochs=1"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")  # nothing was started
    assert main(["search", "not-an-override"]) == 2  # neither key=value nor a recipe: one line, status 2
    assert "unknown recipe 'not-an-override'" in capsys.readouterr().err


def test_python_m_fastdarts_help():
    proc = subprocess.run([sys.executable, "-m", "fastdarts", "--help"], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    assert "search" in proc.stdout and "train" in proc.stdout


# ------------------------------------------------------------------------------------------ other spaces


def _has(module):
    return os.path.isfile(os.path.join(os.path.dirname(fastdarts.__file__), "spaces", f"{module}.py"))


@pytest.mark.skipif(not _has("robust"), reason="fastdarts/spaces/robust.py (RobustDARTS S1-S4) not present")
@pytest.mark.parametrize("space", ["s2", "s3"])
def test_robust_space_search_runs(tmp_path, space):
    result = fastdarts.search(_cfg(tmp_path / space, space=space, epochs=1))
    allowed = {"s2": {"skip_connect", "sep_conv_3x3"}, "s3": {"skip_connect", "sep_conv_3x3"}}[space]
    ops = {op for op, _ in list(result.genotype.normal) + list(result.genotype.reduce)}
    assert ops <= allowed  # 'none' (S3) never enters a DARTS genotype
    state = _load_ckpt(result.run_dir)
    K = 2 if space == "s2" else 3
    assert tuple(state["arch"]["alphas_normal"].shape) == (14, K)
    assert fastdarts.load_genotype(os.path.join(result.run_dir, "genotype.json")) == result.genotype


@pytest.mark.skipif(not _has("nb201"), reason="fastdarts/spaces/nb201.py (NAS-Bench-201) not present")
def test_nb201_space_search_runs(tmp_path):
    result = fastdarts.search(_cfg(tmp_path / "nb201", space="nb201", layers=1, epochs=1))
    g = result.genotype
    assert isinstance(g, fastdarts.NB201Genotype)
    assert g.tostr().count("~") == 6
    assert fastdarts.load_genotype(os.path.join(result.run_dir, "genotype.json")) == g
    assert 0.0 <= result.test_acc <= 100.0
