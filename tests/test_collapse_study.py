"""examples/collapse_study.py end to end at minimal size: one method, one seed, one space."""

import importlib.util
import json
import os
import sys

import pytest

STUDY = os.path.join(os.path.dirname(__file__), "..", "examples", "collapse_study.py")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("collapse_study", STUDY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["collapse_study"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_one_run_writes_table_json_and_plot(study, tmp_path):
    args = ["--spaces", "s3", "--methods", "darts", "--seeds", "0", "--search-epochs", "1", "--train-epochs", "1",
            "--C", "2", "--layers", "3", "--train-C", "4", "--train-layers", "3", "--train-image-size", "8",
            "--out", str(tmp_path), "--name", "study"]
    study.main(args)
    with open(tmp_path / "study.json") as f:
        result = json.load(f)
    assert result["runs_planned"] == result["runs_done"] == 1
    (row,) = result["rows"]
    assert (row["space"], row["method"], row["seed"], row["searched_space"]) == ("s3", "darts", 0, "s3")
    assert row["recipe"] == "darts-cifar10" and row["ops"] == 8 and 0 <= row["param_free"] <= 8
    assert {op for op, _ in row["normal"]} <= {"skip_connect", "sep_conv_3x3"}  # S3 derivation drops `none`
    assert 0.0 <= row["derived_acc"] <= 100.0
    (summary,) = result["summary"]
    assert summary["seeds"] == [0] and summary["param_free"] == [row["param_free"]]
    st = result["settings"]
    assert st["sizes"]["train_epochs"] == 1 and st["train_recipe"] == "digits-train"
    assert st["train_recipe_epochs"] == 20  # the recipe's value, reported next to the cut
    assert "cut from 20 to 1 epochs" in (tmp_path / "study.md").read_text()
    assert (tmp_path / "study.png").stat().st_size > 0
    table = (tmp_path / "study.md").read_text()
    (tmp_path / "study.md").unlink()
    study.main(["--redraw", str(tmp_path / "study.json")])  # the table and plot again, from the JSON alone
    assert (tmp_path / "study.md").read_text() == table
    study.main(args + ["--resume"])  # every run is in the JSON already: nothing reruns
    assert json.loads((tmp_path / "study.json").read_text())["rows"] == result["rows"]
    with pytest.raises(ValueError, match="other settings"):
        study.main([*args[:-4], "--search-epochs", "2", "--out", str(tmp_path), "--name", "study", "--resume"])


def test_methods_outside_their_spaces_search_the_same_cells(study, tmp_path):
    """PR-DARTS and DropNAS list only the DARTS space: they get the S2 list as primitives, on their recipe's network."""
    sizes = study.Sizes()
    pr = study.search_config("prdarts", "s2", 0, sizes, str(tmp_path / "a"))
    assert (pr.space, pr.supernet, pr.layers) == ("darts", "nasnet", sizes.nasnet_layers)
    assert pr.method_options["primitives"] == ["skip_connect", "sep_conv_3x3"]
    assert pr.optim.w_nesterov is True and pr.method_options["lambda1"] == 0.01  # from prdarts-cifar10
    drop = study.search_config("dropnas", "s3", 0, sizes, str(tmp_path / "b"))
    assert (drop.space, drop.supernet) == ("darts", "quark0")
    lam = study.search_config("lambda_darts", "s3", 0, sizes, str(tmp_path / "c"))
    assert lam.space == "s3" and "primitives" not in lam.method_options
    gaea = study.search_config("gaea", "s2", 0, sizes, str(tmp_path / "d"))
    assert study.search_recipe("gaea") is None and gaea.method == "gaea"
