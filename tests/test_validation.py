"""Bad input is refused before any work starts: one line naming the problem, exit status 2 on the
command line, the matching exception type in the API, and nothing created or changed on disk."""

import importlib
import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml

import fastdarts
from fastdarts import functional
from fastdarts.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastdarts.cli import main
from fastdarts.config import SearchConfig, TrainConfig, load_config
from fastdarts.data import CorruptImageError, DataConfig, build_search_data, load_cifar_batch
from fastdarts.genotype import load_genotype, validate_genotype
from fastdarts.validate import method_option_names, validate_search_config

# A search small enough to build in a blink: the validation tests never get past the first step.
TINY = ["C=4", "layers=2", "epochs=1", "data.batch_size=8", "data.image_size=8", "data.subset=0.012",
        "data.arch_subset=0.012"]


def _cli(argv, capsys):
    """(exit status, the stderr lines main() printed that start with 'fastdarts: ')."""
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("fastdarts: ")]


def _refused(argv, capsys, *needles):
    """Run the CLI on bad input: status 2, one 'fastdarts: error:' line naming every needle, no run dir."""
    rc, lines = _cli(argv, capsys)
    assert rc == 2, lines
    assert len(lines) == 1 and lines[0].startswith("fastdarts: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not os.path.exists("runs") and not os.path.exists("run"), "a run directory was created"
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


# ------------------------------------------------------------------------------------------ config values


@pytest.mark.parametrize("override", ["epochs=0", "epochs=-1", "layers=0", "C=0", "data.batch_size=0",
                                      "data.image_size=0", "data.num_workers=-1", "method_options.steps=0"])
def test_integer_settings_out_of_range(in_tmp, capsys, override):
    key, value = override.split("=")
    _refused(["search", *TINY, override], capsys, key, "must be an integer >=", f"got {value}")
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        fastdarts.search(load_config(SearchConfig, None, [*TINY, override, "run_dir=run"]))
    assert not os.path.exists("run")


@pytest.mark.parametrize("override", ["epochs=2.5", "C=four", "data.batch_size=1e1x"])
def test_integer_settings_that_are_not_integers(in_tmp, capsys, override):
    key = override.split("=")[0]
    _refused(["search", *TINY, override], capsys, f"config key '{key}'", "as int")


@pytest.mark.parametrize("field, value", [("epochs", "3"), ("C", 4.5), ("recompute", "yes"), ("seed", True)])
def test_api_wrong_value_type_is_a_type_error(in_tmp, field, value):
    cfg = SearchConfig(run_dir="run")
    setattr(cfg, field, value)
    with pytest.raises(TypeError, match=f"config key '{field}' must be"):
        fastdarts.search(cfg)
    assert not os.path.exists("run")


def test_method_option_the_method_does_not_know(in_tmp, capsys):
    _refused(["search", *TINY, "method_options.k=3"], capsys, "method 'darts' has no option 'k'",
             "'k' is an option of gaea_pcdarts, pcdarts")
    # without a better hint, the valid options are listed
    _refused(["search", *TINY, "method_options.xyz=3"], capsys, "method 'darts' has no option 'xyz' (its options: ",
             "steps")
    assert "k" in method_option_names("pcdarts") and "k" not in method_option_names("darts")
    # PC-DARTS knows k; a typo gets the closest name
    cfg = load_config(SearchConfig, None, ["method=pcdarts", "method_options.k=2"])
    validate_search_config(cfg)
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        validate_search_config(load_config(SearchConfig, None, ["method_options.stepz=3"]))


def test_method_option_of_the_wrong_type(in_tmp):
    cfg = load_config(SearchConfig, None, ["method=prdarts", "method_options.topk=two"])
    with pytest.raises(TypeError, match="method_options.topk must be int"):
        validate_search_config(cfg)


@pytest.mark.parametrize("override, interval", [
    ("data.train_portion=1", "(0, 1)"), ("data.train_portion=0", "(0, 1)"), ("data.subset=0", "(0, 1]"),
    ("data.arch_subset=1.5", "(0, 1]"), ("optim.alpha_betas=[0.5, 1.0]", "[0, 1)"),
])
def test_portion_or_fraction_outside_its_interval(in_tmp, capsys, override, interval):
    _refused(["search", *TINY, override], capsys, override.split("=")[0], f"must be in {interval}")


def test_method_fraction_outside_its_interval(in_tmp):
    cfg = load_config(SearchConfig, None, ["method=prdarts", "method_options.gate_dropout=1.0"])
    with pytest.raises(ValueError, match=r"method_options.gate_dropout must be in \[0, 1\)"):
        validate_search_config(cfg)


@pytest.mark.parametrize("override, needles", [
    ("epoch=3", ("unknown config key 'epoch'", "did you mean 'epochs'?")),
    ("data.batchsize=3", ("unknown config key 'data.batchsize'", "did you mean 'batch_size'?")),
    ("method=pcdart", ("unknown method 'pcdart'", "did you mean 'pcdarts'?")),
    ("space=nb210", ("unknown space 'nb210'", "did you mean 'nb201'?")),
    ("backend=tritonn", ("unknown backend 'tritonn'", "did you mean 'triton'?")),
    ("device=tpu", ("unknown device 'tpu'", "cuda:N")),
])
def test_unknown_names_get_the_closest_choice(in_tmp, capsys, override, needles):
    _refused(["search", *TINY, override], capsys, *needles)


def test_unknown_recipe_gets_the_closest_name(in_tmp, capsys):
    _refused(["search", "darts-cifar"], capsys, "recipe 'darts-cifar'", "did you mean 'darts-cifar10'")


def test_method_that_does_not_run_on_the_space(in_tmp, capsys):
    _refused(["search", *TINY, "method=gdas", "space=s1"], capsys, "method 'gdas' does not run on space 's1'")


# ------------------------------------------------------------------------------------------ YAML files


@pytest.mark.parametrize("content, needles", [
    (None, ("config file cfg.yaml not found",)),
    ("dir", ("config file cfg.yaml cannot be read", "directory")),
    (b"\xff\xfe binary", ("config file cfg.yaml cannot be read", "UnicodeDecodeError")),
    ("method: [darts\n", ("config file cfg.yaml is not valid YAML", "line 2, column 1")),
    ("- darts\n- pcdarts\n", ("config file cfg.yaml must hold a mapping, got list",)),
])
def test_yaml_missing_unreadable_wrong_or_not_a_mapping(in_tmp, capsys, content, needles):
    if content == "dir":
        os.mkdir("cfg.yaml")
    elif isinstance(content, bytes):
        (in_tmp / "cfg.yaml").write_bytes(content)
    elif content is not None:
        (in_tmp / "cfg.yaml").write_text(content)
    _refused(["search", "cfg.yaml"], capsys, *needles)
    with pytest.raises(FileNotFoundError if content is None else ValueError):
        load_config(SearchConfig, "cfg.yaml")


# ------------------------------------------------------------------------------------------ devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_backend_or_device_on_a_cpu_machine(in_tmp, capsys):
    _refused(["search", *TINY, "backend=cuda"], capsys, "backend 'cuda' is unavailable for cpu tensors")
    _refused(["search", *TINY, "device=cuda"], capsys, "device 'cuda' requested but CUDA is not available")
    _refused(["search", *TINY, "device=cuda:0"], capsys, "device 'cuda:0' requested")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_triton_without_gpu_or_interpreter(in_tmp, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    functional._triton_usable.cache_clear()
    functional.resolve_backend.cache_clear()
    try:
        _refused(["search", *TINY, "backend=triton"], capsys, "backend 'triton' is unavailable",
                 "TRITON_INTERPRET=1")
    finally:  # the other tests run Triton through the interpreter
        functional._triton_usable.cache_clear()
        functional.resolve_backend.cache_clear()


def test_device_is_checked_before_the_first_step(in_tmp, monkeypatch):
    """The refusal comes from validation, before the data or the supernet are built."""
    search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function

    def no_data(*args, **kwargs):
        raise AssertionError("the data were loaded before the backend was checked")

    monkeypatch.setattr(search_mod, "build_search_data", no_data)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="backend 'cuda' is unavailable"):
        fastdarts.search(load_config(SearchConfig, None, [*TINY, "backend=cuda", "device=cpu", "run_dir=run"]))


# ------------------------------------------------------------------------------------------ data


def _png(path, value):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((10, 10, 3), value, dtype=np.uint8)).save(path)


def _imagefolder(root, corrupt=None):
    """Two classes of three 10x10 PNGs; ``corrupt`` (a relative path) is overwritten with junk."""
    for c in ("a", "b"):
        for i in range(3):
            _png(os.path.join(root, c, f"{i}.png"), 40 * i + (100 if c == "b" else 0))
    if corrupt:
        with open(os.path.join(root, corrupt), "wb") as f:
            f.write(b"this is not a PNG")


def test_data_path_that_does_not_exist(in_tmp, capsys):
    _refused(["search", *TINY, "data=./nowhere"], capsys, "dataset path ./nowhere not found")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_search_data(DataConfig(name="./nowhere"), 0)


def test_empty_data_folder(in_tmp, capsys):
    os.mkdir("empty")
    _refused(["search", *TINY, "data=./empty"], capsys, "ImageFolder ./empty is empty")


def test_class_folders_without_images(in_tmp, capsys):
    _imagefolder("imgs")
    os.mkdir(os.path.join("imgs", "c"))
    (in_tmp / "imgs" / "c" / "notes.txt").write_text("no image here")
    _refused(["search", *TINY, "data=./imgs"], capsys, "class folder(s) c hold no images")


def test_corrupt_image_is_named_and_skipped_only_on_request(in_tmp):
    _imagefolder("imgs", corrupt=os.path.join("a", "1.png"))
    bad = os.path.join(".", "imgs", "a", "1.png")
    seen = {}
    for skip in (False, True):
        data = build_search_data(DataConfig(name="./imgs", batch_size=2, image_size=8, skip_corrupt=skip), 0)
        loaders = (data.train, data.valid, data.test)
        if not skip:
            with pytest.raises(CorruptImageError, match="cannot read image .*1.png") as info:
                for loader in loaders:
                    list(loader.iterate(0))
            assert bad in str(info.value) and "data.skip_corrupt=true" in str(info.value)
        else:
            seen = {name: sum(int(y.numel()) for _, y in loader.iterate(0))
                    for name, loader in zip(("train", "valid", "test"), loaders)}
    # with skip_corrupt every readable image still arrives, the corrupt one is dropped from its batch
    assert sum(seen.values()) == 5


def test_corrupt_image_stops_a_search_with_its_name(in_tmp, capsys):
    _imagefolder("imgs", corrupt=os.path.join("b", "2.png"))
    rc, lines = _cli(["search", "C=4", "layers=2", "epochs=1", "data=./imgs", "data.image_size=8",
                      "data.batch_size=2", "run_dir=run"], capsys)
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("fastdarts: error: cannot read image ./imgs/b/2.png")


def _write_cifar10(folder, skip=()):
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        if name in skip:
            continue
        entry = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)


def test_cifar_folder_with_a_missing_batch(in_tmp, capsys):
    _write_cifar10("cifar", skip=("data_batch_3",))
    _refused(["search", *TINY, "data=./cifar"], capsys, "CIFAR-10 folder ./cifar is incomplete",
             "missing data_batch_3")
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        build_search_data(DataConfig(name="cifar10", root="cifar"), 0)


# ------------------------------------------------------------------------------------------ genotypes

GOOD = {"space": "darts",
        "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0], ["sep_conv_3x3", 1],
                   ["skip_connect", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["skip_connect", 2]],
        "normal_concat": [2, 3, 4, 5],
        "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 0],
                   ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["avg_pool_3x3", 0]],
        "reduce_concat": [2, 3, 4, 5]}


def _genotype_file(path, change):
    d = json.loads(json.dumps(GOOD))
    change(d)
    path.write_text(json.dumps(d))
    return str(path)


def _node7(d):
    d["normal"][7] = ["sep_conv_3x3", 7]


@pytest.mark.parametrize("change, needles", [
    (lambda d: d.pop("reduce_concat"), ("has no 'reduce_concat'",)),
    (lambda d: d["normal"].__setitem__(2, ["sep_conv_3x4", 0]), ("unknown op 'sep_conv_3x4'",
                                                                   "did you mean 'sep_conv_3x3'")),
    (_node7, ("normal[7] = ['sep_conv_3x3', 7] reads state 7", "node 3 of a 4-node cell can only read states 0..4")),
    (lambda d: d.__setitem__("normal_concat", [2, 3, 4, 6]), ("'normal_concat' [2, 3, 4, 6] must list distinct "
                                                              "states in 0..5",)),
    (lambda d: d.__setitem__("reduce_concat", [2, 2, 3]), ("'reduce_concat' [2, 2, 3]",)),
    (lambda d: d.__setitem__("reduce_concat", []), ("'reduce_concat' must be a non-empty list",)),
    (lambda d: d["normal"].pop(), ("'normal' must list 2 (op, input) pairs per node, got 7",)),
])
def test_genotype_file_problems(in_tmp, capsys, change, needles):
    path = _genotype_file(in_tmp / "g.json", change)
    with pytest.raises(ValueError) as info:
        load_genotype(path)
    for needle in needles:
        assert needle in str(info.value)
    _refused(["train", "g.json", "epochs=1", "C=4", "layers=2", "run_dir=run"], capsys, "genotype file g.json",
             needles[0])


def test_genotype_not_json(in_tmp, capsys):
    (in_tmp / "g.json").write_text("Genotype(normal=[('sep_conv_3x3', 0)])")
    _refused(["train", "g.json", "run_dir=run"], capsys, "genotype file g.json is not valid JSON")


@pytest.mark.parametrize("arch, needles", [
    ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|", ("has 6 edges", "got 5 edges shaped [1, 2, 2]")),
    ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|none~2|none~3|", ("got 7 edges",)),
    ("|nor_conv_3x3~0|+|none~0|none~0|+|none~0|none~1|none~2|", ("node 2 must take each of nodes 0..1 once",)),
    ("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|conv_9x9~2|", ("unknown op 'conv_9x9'",)),
])
def test_nb201_string_with_a_wrong_edge_count_or_input(in_tmp, arch, needles):
    (in_tmp / "nb.json").write_text(json.dumps({"space": "nb201", "arch": arch}))
    with pytest.raises(ValueError) as info:
        load_genotype(str(in_tmp / "nb.json"))
    for needle in needles:
        assert needle in str(info.value)


def test_genotype_objects_are_validated_too():
    bad = fastdarts.Genotype(normal=[("sep_conv_3x3", 0)] * 7 + [("sep_conv_3x3", 7)], normal_concat=range(2, 6),
                             reduce=[("max_pool_3x3", 0)] * 8, reduce_concat=range(2, 6))
    with pytest.raises(ValueError, match="reads state 7"):
        validate_genotype(bad)
    with pytest.raises(TypeError, match="expected a Genotype"):
        validate_genotype({"normal": []})
    with pytest.raises(ValueError, match="reads state 7"):  # the network builder checks it too
        fastdarts.build_network(bad, C=4, layers=2)


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real 1-epoch search (its run directory holds config.yaml and checkpoint.pt)."""
    base = tmp_path_factory.mktemp("finished")
    run_dir = str(base / "run")
    fastdarts.search(load_config(SearchConfig, None, [*TINY, f"run_dir={run_dir}"]))
    return run_dir


def test_truncated_or_foreign_checkpoint(in_tmp):
    save_checkpoint("ok.pt", {"epoch": 0, "w": torch.arange(1000.0)})
    data = (in_tmp / "ok.pt").read_bytes()
    (in_tmp / "torn.pt").write_bytes(data[: len(data) // 2])
    (in_tmp / "text.pt").write_text('{"epoch": 0}')
    torch.save([1, 2, 3], str(in_tmp / "list.pt"))
    for name, needle in (("torn.pt", "is truncated, corrupt or not a checkpoint"),
                         ("text.pt", "is truncated, corrupt or not a checkpoint"),
                         ("list.pt", r"is not a fastdarts checkpoint \(it holds a list")):
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(name)
    assert issubclass(CheckpointError, ValueError)


def test_resume_from_a_truncated_checkpoint_changes_nothing(finished_run, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    before = _snapshot(run)
    monkeypatch.chdir(tmp_path)
    rc, lines = _cli(["search", "--resume", "run"], capsys)
    assert rc == 2 and lines == [lines[0]] and "checkpoint run/checkpoint.pt is truncated" in lines[0]
    assert _snapshot(run) == before


@pytest.mark.parametrize("override, needles", [
    ("C=8", ("C=4 (checkpoint) vs 8 (now)",)),
    ("method=pcdarts", ("method='darts' (checkpoint) vs 'pcdarts' (now)",)),
    ("space=s2", ("space='darts' (checkpoint) vs 's2' (now)",)),
    ("seed=7", ("seed=2 (checkpoint) vs 7 (now)",)),
])
def test_resume_with_another_space_method_or_width_lists_the_differences(finished_run, tmp_path, capsys,
                                                                         monkeypatch, override, needles):
    before = _snapshot(finished_run)
    monkeypatch.chdir(tmp_path)
    rc, lines = _cli(["search", "--resume", finished_run, override], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert "comes from another configuration" in lines[0]
    for needle in needles:
        assert needle in lines[0]
    assert _snapshot(finished_run) == before  # nothing written, not even config.yaml


def test_resume_checkpoint_that_does_not_fit_the_network(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = load_checkpoint(str(run / "checkpoint.pt"))
    state["model"]["stem.0.weight"] = torch.zeros(5, 3, 3, 3)
    save_checkpoint(str(run / "checkpoint.pt"), state)
    cfg = load_config(SearchConfig, str(run / "config.yaml"), [f"run_dir={run}"])
    with pytest.raises(CheckpointError, match=r"'model' does not fit this network \(shape .*stem.0.weight"):
        fastdarts.search(cfg, resume=True)


def test_train_checkpoint_given_to_a_search_resume(finished_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    save_checkpoint(str(run / "checkpoint.pt"), {"epoch": 0, "model": {}, "optimizer": {}, "rng": torch.zeros(1),
                                                 "config": {}})
    cfg = load_config(SearchConfig, str(run / "config.yaml"), [f"run_dir={run}"])
    with pytest.raises(CheckpointError, match="is not a fastdarts search checkpoint .missing arch, method, history"):
        fastdarts.search(cfg, resume=True)


def test_resume_on_a_directory_without_a_checkpoint(in_tmp, capsys):
    os.mkdir("run")
    rc, lines = _cli(["search", "--resume", "run"], capsys)
    assert rc == 2 and lines == ["fastdarts: error: cannot resume: run/checkpoint.pt not found (a run writes it "
                                 "at the end of each epoch)"]
    assert os.listdir("run") == []
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        fastdarts.search(load_config(SearchConfig, None, [*TINY, "run_dir=run"]), resume=True)


def test_new_search_into_a_directory_holding_a_checkpoint(finished_run, tmp_path, capsys, monkeypatch):
    before = _snapshot(finished_run)
    monkeypatch.chdir(tmp_path)
    rc, lines = _cli(["search", *TINY, f"run_dir={finished_run}"], capsys)
    assert rc == 2 and "already holds a checkpoint; pass --resume" in lines[0]
    with pytest.raises(FileExistsError):
        fastdarts.search(load_config(SearchConfig, None, [*TINY, f"run_dir={finished_run}"]))
    assert _snapshot(finished_run) == before


def test_run_dir_that_is_a_symlink_or_a_file(in_tmp, capsys):
    os.mkdir("elsewhere")
    os.symlink("elsewhere", "link")
    _refused(["search", *TINY, "run_dir=link"], capsys, "run_dir link is a symbolic link (to elsewhere)")
    (in_tmp / "afile").write_text("x")
    _refused(["search", *TINY, "run_dir=afile"], capsys, "run_dir afile is a file, not a directory")
    assert os.listdir("elsewhere") == [] and (in_tmp / "afile").read_text() == "x"


def test_read_only_run_dir_is_refused_before_the_run(in_tmp, monkeypatch):
    # root may write anywhere, so the answer of access(2) is what is injected here
    validate = importlib.import_module("fastdarts.validate")

    monkeypatch.setattr(validate.os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match="run_dir run is not writable"):
        fastdarts.search(load_config(SearchConfig, None, [*TINY, "run_dir=run"]))


# ------------------------------------------------------------------------------------------ tensors


def test_mixed_sum_tensor_checks():
    x = torch.randn(2, 4, 5, 5)
    w = torch.softmax(torch.randn(3), 0)
    cases = [
        (lambda: fastdarts.mixed_sum([x, x, x], w.view(3, 1)), ValueError, "weights must be a 1-D tensor"),
        (lambda: fastdarts.mixed_sum([x, x], w), ValueError, "got 2 candidate tensors but 3 weights"),
        (lambda: fastdarts.mixed_sum([x, x, x[:1]], w), ValueError, "candidate 2 has shape"),
        (lambda: fastdarts.mixed_sum([x, x, x.double()], w), ValueError, "candidate 2 has dtype torch.float64"),
        (lambda: fastdarts.mixed_sum([x, x, x], w.long()), ValueError, "weights must be floating point"),
        (lambda: fastdarts.mixed_sum([x, x, x.long()], w), ValueError, "candidate 2 has dtype torch.int64"),
        (lambda: fastdarts.mixed_sum([x, x, 3.0], w), TypeError, "candidate 2 is a float, not a tensor"),
        (lambda: fastdarts.mixed_sum([x, x, x], w.to("meta")), ValueError, "weights are on meta"),
        (lambda: fastdarts.mixed_sum([x, x, x.to("meta")], w), ValueError, "candidate 2 is on meta"),
    ]
    for call, exc, needle in cases:
        with pytest.raises(exc, match=needle):
            call()


@pytest.mark.parametrize("make", [
    lambda: fastdarts.MixedOp(4, 1, backend="eager"),
    lambda: fastdarts.GatedMixedOp(4, 1, backend="eager"),
    lambda: fastdarts.PartialMixedOp(8, 1, k=2, backend="eager"),
])
def test_mixed_op_tensor_checks(make):
    op = make()
    C, K = (8 if isinstance(op, fastdarts.PartialMixedOp) else 4), len(op._ops)
    name = type(op).__name__
    x, w = torch.randn(2, C, 5, 5), torch.softmax(torch.randn(K), 0)
    active = [1, 3] if isinstance(op, fastdarts.GatedMixedOp) else None

    def call(x_, w_):
        return op(x_, w_, active) if active else op(x_, w_)

    cases = [
        (x[0], w, f"{name} expects input of shape \\[N, {C}, H, W\\], got \\({C}, 5, 5\\)"),  # rank
        (torch.randn(2, C + 1, 5, 5), w, f"expects input of shape \\[N, {C}, H, W\\], got \\(2, {C + 1}, 5, 5\\)"),
        (x, w[:-1], f"weights must have shape \\[{K}\\], got \\({K - 1},\\)"),  # length
        (x, w.view(1, K), f"weights must have shape \\[{K}\\], got \\(1, {K}\\)"),  # rank
        (x, w.to("meta"), "weights are on meta but the input on cpu"),  # device
        (x.double(), w, "input is torch.float64 but its parameters are torch.float32"),  # dtype
        (x.long(), w, "input must be floating point, got torch.int64"),
        (x, w.long(), "weights must be floating point, got torch.int64"),
    ]
    for x_, w_, needle in cases:
        with pytest.raises(ValueError, match=needle):
            call(x_, w_)
    assert call(x, w).shape == (2, C, 5, 5)  # the checks let a good call through


# ------------------------------------------------------------------------------------------ safe loading


class _RunsCode:
    """Unpickling this calls ``pathlib.Path(marker).touch()``: proof that a loader ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("loader", ["checkpoint", "config", "genotype", "cifar"])
def test_loaders_never_run_code_from_a_file(tmp_path, loader):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil"
    if loader == "checkpoint":
        torch.save({"epoch": 0, "payload": _RunsCode(marker)}, str(path))
        with pytest.raises(CheckpointError, match="weights_only loading refuses"):
            load_checkpoint(str(path))
        unsafe = lambda: torch.load(str(path), weights_only=False)  # noqa: E731
    elif loader == "config":
        path.write_text(f"method: !!python/object/apply:os.system [{f'touch {marker}'!r}]\n")
        with pytest.raises(ValueError, match="is not valid YAML: could not determine a constructor"):
            load_config(SearchConfig, str(path))
        unsafe = lambda: yaml.unsafe_load(path.read_text())  # noqa: E731
    elif loader == "genotype":
        code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
        path.write_text(json.dumps({**GOOD, "normal": code}))
        with pytest.raises(ValueError, match="'normal' must list 2"):
            load_genotype(str(path))
        unsafe = lambda: eval(json.loads(path.read_text())["normal"])  # noqa: E731, S307
    else:
        with open(path, "wb") as f:
            pickle.dump({b"data": _RunsCode(marker), b"labels": [0]}, f)
        with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
            load_cifar_batch(str(path))
        unsafe = lambda: pickle.loads(path.read_bytes())  # noqa: E731, S301
    assert not marker.exists()
    unsafe()  # the payload is real: an unsafe loader runs it
    assert marker.exists()


# ------------------------------------------------------------------------------------------ train config


@pytest.mark.parametrize("override, needle", [("epochs=0", "epochs must be an integer >= 1"),
                                              ("drop_path_prob=1", "drop_path_prob must be in [0, 1)"),
                                              ("grad_clip=0", "grad_clip must be a number > 0"),
                                              ("data.batch_size=0", "data.batch_size must be an integer >= 1")])
def test_train_config_values(in_tmp, capsys, override, needle):
    (in_tmp / "g.json").write_text(json.dumps(GOOD))
    _refused(["train", "g.json", override, "run_dir=run"], capsys, needle)


def test_train_api_wrong_type(in_tmp):
    from fastdarts.train import train

    with pytest.raises(TypeError, match="config key 'epochs' must be int"):
        train(TrainConfig(genotype="g.json", epochs="600", run_dir="run"))
    assert not os.path.exists("run")
