"""Packaged recipes (fastdarts/configs/*.yaml), config resolution order and the search CLI around them.

The expected values are the published search settings as ALGORITHMS.md names them (§2-§8 and the
corrections of §12), written out here independently of the YAML files.
"""

import importlib
import os

import pytest
import torch
import yaml

from fastdarts.cli import main
from fastdarts.config import (
    SearchConfig,
    check_search_config,
    load_config,
    recipe_names,
    recipe_path,
    resolve_search_config,
    to_dict,
)
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet
from fastdarts.spaces.robust import robust_primitives

search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function

NB201_NO_NONE = ["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]

# recipe -> values of the resolved config (ALGORITHMS.md): method, space, network, batch, cells, epochs,
# weight LR (start, end), architecture LR, warm-up, schedule semantics, and method-specific settings.
EXPECTED = {
    "darts-cifar10": dict(method="darts", space="darts", supernet="quark0", batch=64, layers=8, epochs=50, C=16,
                          w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0),
    "darts2-cifar10": dict(method="darts2", space="darts", supernet="quark0", batch=64, layers=8, epochs=50, C=16,
                           w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0),
    "pcdarts-cifar10": dict(method="pcdarts", space="darts", supernet="quark0", batch=256, layers=8, epochs=50,
                            C=16, w_lr=0.1, w_lr_min=0.0, alpha_lr=6e-4, arch_warmup=15, offset=0, clip=5.0,
                            options=dict(k=4)),
    "pcdarts-imagenet": dict(method="pcdarts", space="darts", supernet="quark0", batch=1024, layers=8, epochs=50,
                             C=16, w_lr=0.5, w_lr_min=0.0, alpha_lr=6e-3, arch_warmup=35, offset=0, clip=5.0,
                             options=dict(k=2), stem="imagenet", subset=0.1, arch_subset=0.025),
    "prdarts-cifar10": dict(method="prdarts", space="darts", supernet="nasnet", batch=250, layers=6, epochs=200,
                            C=16, w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0,
                            nesterov=True, wd=5e-4,
                            options=dict(track_running_stats=False, step_order="weight_first", tau_max=1.0,
                                         tau_min=0.1, topk=2, gate_dropout=0.4)),
    "lambda_darts-cifar10": dict(method="lambda_darts", space="s5", supernet="quark0", batch=96, layers=8,
                                 epochs=50, C=16, w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0,
                                 offset=0, clip=5.0, options=dict(lambda_=0.25, epsilon=1e-3, corr_type="corr")),
    "dropnas-cifar10": dict(method="dropnas", space="darts", supernet="quark0", batch=96, layers=14, epochs=76,
                            C=16, w_lr=0.0375, w_lr_min=0.0015, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=3.0,
                            options=dict(drop_rate=3e-5)),
    "gaea_pcdarts-cifar10": dict(method="gaea_pcdarts", space="darts", supernet="quark0", batch=256, layers=8,
                                 epochs=50, C=16, w_lr=0.1, w_lr_min=0.0, alpha_lr=0.1, arch_warmup=0, offset=0,
                                 clip=5.0, options=dict(beta_lr=0.1, single_level=False)),
    "gaea-nb201": dict(method="gaea", space="nb201", supernet="auto", batch=64, layers=5, epochs=25, C=24,
                       w_lr=0.025, w_lr_min=0.001, alpha_lr=0.1, arch_warmup=0, offset=0, clip=5.0,
                       options=dict(scheduler_epochs=50, single_level=True, primitives=NB201_NO_NONE)),
    "gdas-cifar10": dict(method="gdas", space="darts", supernet="nasnet", batch=256, layers=6, epochs=250, C=16,
                         w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0,
                         nesterov=True, wd=5e-4, options=dict(tau_max=10.0, tau_min=0.1,
                                                              step_order="weight_first")),
    "gdas-nb201": dict(method="gdas", space="nb201", supernet="auto", batch=64, layers=5, epochs=250, C=16,
                       w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0,
                       nesterov=True, wd=5e-4, options=dict(tau_max=10.0, tau_min=0.1)),
    "darts-nb201": dict(method="darts", space="nb201", supernet="auto", batch=64, layers=5, epochs=50, C=16,
                        w_lr=0.025, w_lr_min=0.001, alpha_lr=3e-4, arch_warmup=0, offset=0, clip=5.0,
                        nesterov=True, wd=5e-4, options=dict(step_order="weight_first")),
}


def _dry_run(capsys, *args) -> dict:
    assert main(["search", *args, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _check_expected(d: dict, exp: dict) -> None:
    assert (d["method"], d["space"], d["supernet"]) == (exp["method"], exp["space"], exp["supernet"])
    assert (d["data"]["batch_size"], d["layers"], d["epochs"], d["C"]) == \
        (exp["batch"], exp["layers"], exp["epochs"], exp["C"])
    o = d["optim"]
    assert (o["w_lr"], o["w_lr_min"], o["alpha_lr"], o["arch_warmup"], o["lr_schedule_offset"], o["w_grad_clip"]) \
        == (exp["w_lr"], exp["w_lr_min"], exp["alpha_lr"], exp["arch_warmup"], exp["offset"], exp["clip"])
    assert o["w_nesterov"] is exp.get("nesterov", False)
    if "wd" in exp:
        assert o["w_weight_decay"] == exp["wd"]
    for key, value in exp.get("options", {}).items():
        assert d["method_options"][key] == value, key
    assert d["stem"] == exp.get("stem", "cifar")
    assert d["data"]["subset"] == exp.get("subset", 1.0)
    assert d["data"]["arch_subset"] == exp.get("arch_subset")


def test_every_published_setting_has_a_recipe():
    assert set(recipe_names()) == set(EXPECTED) | {"default"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_dry_run_shows_the_published_values(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = _dry_run(capsys, name)
    _check_expected(d, EXPECTED[name])
    assert os.listdir(tmp_path) == []  # a dry run creates no run directory
    with open(recipe_path(name)) as f:
        head = f.readline()
    assert head.startswith("#") and "@" in head  # the file opens naming the repository and commit


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_lines_name_their_source(name):
    """Every value a recipe sets carries a comment with the file (and line) it comes from."""
    with open(recipe_path(name)) as f:
        lines = [ln for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    for ln in lines:
        key, _, rest = ln.partition(":")
        if rest.strip() and key.strip() != "name":  # a value, not a section header or the data name
            assert "#" in rest, f"{name}: {ln.strip()!r} has no source comment"


def test_list_configs_prints_one_name_per_line(capsys):
    assert main(["search", "--list-configs"]) == 0
    assert capsys.readouterr().out.splitlines() == recipe_names()


def test_unknown_recipe_is_one_line_with_the_closest_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "pcdart-cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'pcdart-cifar10'" in err and "'pcdarts-cifar10'" in err
    assert os.listdir(tmp_path) == []


def test_pcdarts_imagenet_refuses_small_images_with_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "pcdarts-imagenet", "data=digits", "data.image_size=32", "run_dir=run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stem=imagenet needs images of at least 64 px" in err and "got 32 px" in err
    assert os.listdir(tmp_path) == []  # refused before any run directory exists


# ---------------------------------------------------------------------------------- resolution order


def test_batch_none_takes_the_method_default():
    """Old behaviour: every method ran with DataConfig's batch 64 and quark0's 8 cells."""
    for method, batch, layers, epochs in (("darts", 64, 8, 50), ("pcdarts", 256, 8, 50), ("gaea_pcdarts", 256, 8, 50),
                                          ("prdarts", 250, 6, 200), ("gdas", 256, 6, 250), ("dropnas", 96, 14, 76)):
        cfg = resolve_search_config(load_config(SearchConfig, None, [f"method={method}"]))
        assert (cfg.data.batch_size, cfg.layers, cfg.epochs) == (batch, layers, epochs), method
    nb = resolve_search_config(load_config(SearchConfig, None, ["method=gdas", "space=nb201"]))
    assert (nb.data.batch_size, nb.layers, nb.epochs) == (64, 5, 250)  # GDAS.config: batch 64 on NAS-Bench-201


def test_builtins_lt_yaml_lt_command_line(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("method: pcdarts\ndata:\n  batch_size: 128\noptim:\n  w_lr: 0.05\n")
    d = _dry_run(capsys, str(path))
    assert d["data"]["batch_size"] == 128 and d["optim"]["w_lr"] == 0.05  # the YAML beats the built-ins
    assert d["epochs"] == 50 and d["optim"]["arch_warmup"] == 15  # the rest are PC-DARTS' built-ins
    d = _dry_run(capsys, str(path), "data.batch_size=32", "optim.arch_warmup=3")
    assert d["data"]["batch_size"] == 32 and d["optim"]["arch_warmup"] == 3  # the command line beats the YAML
    assert d["optim"]["w_lr"] == 0.05
    # Λ-DARTS: its recipe (run_search.sh) differs from the method's argparse defaults; the recipe wins.
    assert get_method("lambda_darts").DEFAULTS["lambda_"] == 0.125
    d = _dry_run(capsys, "lambda_darts-cifar10")
    assert d["method_options"]["lambda_"] == 0.25 and d["data"]["batch_size"] == 96
    d = _dry_run(capsys, "lambda_darts-cifar10", "method_options.lambda_=0.5")
    assert d["method_options"]["lambda_"] == 0.5 and d["method_options"]["epsilon"] == 1e-3


def test_explicit_values_win():
    # A recipe's explicit batch survives a change of method on the command line ...
    cfg = resolve_search_config(load_config(SearchConfig, recipe_path("darts-cifar10"), ["method=pcdarts"]))
    assert cfg.data.batch_size == 64 and cfg.optim.w_lr == 0.025
    # ... and an explicit None on the command line hands the value back to the method.
    cfg = resolve_search_config(load_config(SearchConfig, recipe_path("darts-cifar10"),
                                            ["method=pcdarts", "data.batch_size=None", "optim.w_lr=None"]))
    assert cfg.data.batch_size == 256 and cfg.optim.w_lr == 0.1
    # An explicit value equal to another method's default stays as given.
    cfg = resolve_search_config(load_config(SearchConfig, None, ["method=dropnas", "layers=8", "epochs=3"]))
    assert (cfg.layers, cfg.epochs, cfg.data.batch_size) == (8, 3, 96)


def test_resolution_is_idempotent_and_round_trips(tmp_path, capsys):
    for name in sorted(EXPECTED):
        once = resolve_search_config(load_config(SearchConfig, recipe_path(name)))
        assert to_dict(resolve_search_config(once)) == to_dict(once), name
        dumped = tmp_path / f"{name}.yaml"
        dumped.write_text(yaml.safe_dump(to_dict(once), sort_keys=False))
        again = resolve_search_config(load_config(SearchConfig, str(dumped)))
        assert to_dict(again) == to_dict(once), name


def test_search_runs_with_the_resolved_batch(tmp_path):
    """``fd.search`` itself resolves: a PC-DARTS config without a batch size runs at batch 256."""
    import fastdarts

    cfg = load_config(SearchConfig, None, ["method=pcdarts", "epochs=1", "C=4", "layers=3", "data.image_size=8",
                                           "data.subset=0.2", "data.arch_subset=0.2",  # 287 images: 1 step
                                           "backend=eager", f"run_dir={tmp_path / 'run'}"])
    assert cfg.data.batch_size is None
    result = fastdarts.search(cfg)
    with open(os.path.join(result.run_dir, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["data"]["batch_size"] == 256 and saved["optim"]["w_lr"] == 0.1 and saved["epochs"] == 1


# ---------------------------------------------------------------------------------- networks and GAEA ERM


# Tiny but structure-preserving cell counts: 3N for NASNet-super, quark0's net with both cell types
# (4 cells for Λ-DARTS, which aligns the gradients of at least two normal cells), one cell per stage
# on NAS-Bench-201.
_TINY_LAYERS = {"nasnet": 3, "quark0": 3, "auto": 1}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_builds_its_supernet_and_steps(name):
    cfg = resolve_search_config(load_config(SearchConfig, recipe_path(name), ["C=4"]))
    cfg.layers = 4 if cfg.method == "lambda_darts" else _TINY_LAYERS[cfg.supernet]
    check_search_config(cfg)
    method_cls = get_method(cfg.method)
    hyper_options = {k: v for k, v in cfg.method_options.items() if k in method_cls.DEFAULTS}
    net_options = {k: v for k, v in cfg.method_options.items() if k not in method_cls.DEFAULTS}
    torch.manual_seed(0)
    model = build_supernet(cfg.space, cfg.method, cfg.C, 10, cfg.layers, supernet=cfg.supernet, stem=cfg.stem,
                           backend="eager", **net_options)
    size = 64 if cfg.stem == "imagenet" else 8  # the ImageNet stem divides by 8, its reductions by 4 more
    hyper = method_cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs, "layers": cfg.layers,
                                      "batch_size": cfg.data.batch_size, **hyper_options}, cfg.space)
    method = method_cls(model, hyper)
    method.begin_epoch(cfg.optim.arch_warmup)  # first epoch with architecture updates
    batch = (torch.randn(4, 3, size, size), torch.tensor([0, 1, 2, 3]))
    before = [a.detach().clone() for a in model.arch_parameters()]
    metrics = method.step(batch, (torch.randn(4, 3, size, size), torch.tensor([3, 2, 1, 0])), 0)
    assert torch.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))  # α moved
    if cfg.method_options.get("primitives") == NB201_NO_NONE:
        assert model.arch_parameters()[0].shape[-1] == 4  # `none` excluded
    if cfg.supernet == "nasnet":
        assert type(model).__name__ == "NasnetSupernet"


def test_s5_is_the_darts_space_without_none():
    prims = robust_primitives("s5")
    ops = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
           "dil_conv_5x5")  # Lambda-DARTS sota/cnn/spaces.py:80-89, in that order
    assert prims["normal"] == [ops] * 14 and prims["reduce"] == [ops] * 14
    model = build_supernet("s5", "lambda_darts", 4, 10, 4, backend="eager")
    assert tuple(model.alphas_normal.shape) == (14, 7)
    genotype = model.genotype()
    assert {op for op, _ in list(genotype.normal) + list(genotype.reduce)} <= set(ops)


@pytest.mark.parametrize("single_level", [False, True])
def test_gaea_single_level_draws_alpha_batches_from_all_training_images(tmp_path, monkeypatch, single_level):
    """GAEA ERM (search.single_level): weights and α both sample the full training set."""
    import fastdarts

    seen = {}
    real = search_mod.build_search_data

    def spy(cfg, seed, *, single_level=False, **kwargs):
        data = real(cfg, seed, single_level=single_level, **kwargs)
        seen.update(single_level=single_level, train=data.train.num_samples, valid=data.valid.num_samples)
        return data

    monkeypatch.setattr(search_mod, "build_search_data", spy)
    cfg = load_config(SearchConfig, None, ["method=gaea", "space=nb201", "epochs=1", "C=4", "layers=1",
                                           "data.batch_size=256", "data.image_size=8", "backend=eager",
                                           f"method_options.single_level={str(single_level).lower()}",
                                           f"run_dir={tmp_path / 'run'}"])
    fastdarts.search(cfg)
    assert seen["single_level"] is single_level
    n = 1438  # digits: 1797 images minus the fixed 20 % test split (359)
    if single_level:
        assert seen["train"] == seen["valid"] == n
    else:
        assert seen["train"] + seen["valid"] == n and seen["train"] < n


def test_readme_recipe_table_matches_the_recipes():
    """The README's recipe table (method, batch, cells, epochs) cannot drift from the YAML files."""
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        rows = [ln.split("|")[1:-1] for ln in f if ln.startswith("| `") and "-" in ln.split("|")[1]]
    table = {r[0].strip().strip("`"): [c.strip() for c in r[1:]] for r in rows}
    table = {k: v for k, v in table.items() if k in EXPECTED}
    assert set(table) == set(EXPECTED)
    for name, (method, _space, batch, cells, epochs, _source) in table.items():
        exp = EXPECTED[name]
        assert method.split()[0].strip("`") == exp["method"], name
        assert int(batch) == exp["batch"] and int(cells.split()[0]) == exp["layers"], name
        assert int(epochs.split()[0]) == exp["epochs"], name


def test_dry_run_refuses_a_nasnet_cell_count_that_is_not_3n(tmp_path, capsys, monkeypatch):
    # The digits default has 5 cells (quark0's network); GDAS builds NASNet-super, which needs 3N.
    monkeypatch.chdir(tmp_path)
    assert main(["search", "method=gdas", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layers=5" in err and "3N cells" in err
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert _dry_run(capsys, "method=gdas", "layers=6")["layers"] == 6
