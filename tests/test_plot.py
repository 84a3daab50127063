"""Architecture history, `fastdarts plot`, TensorBoard figures and the end-of-search summary."""

import contextlib
import io
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml

from fastdarts.arch_history import HISTORY_FILE, ArchHistory, arch_views, darts_edge_labels, nb201_edge_labels
from fastdarts.cli import main
from fastdarts.genotype import Genotype, NB201Genotype, save_genotype
from fastdarts.spaces import build_supernet
from fastdarts.summary import COLLAPSE_HINT, cell_table, collapsed, is_parameter_free, parameter_free_count
from fastdarts.viz import cell_dot, dot_available, plot_run, write_cell_diagram

# A real search, as small as the search tests' (C=4, 3 cells, 8x8 digits, a few batches of 16).
TINY = ["C=4", "layers=3", "data.batch_size=16", "data.subset=0.03", "data.arch_subset=0.03", "data.image_size=8"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DARTS_PNGS = {"alpha_normal", "alpha_reduce", "trajectory_normal", "trajectory_reduce", "cell_normal", "cell_reduce",
              "curves"}


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    """(run directory, stdout) of `fastdarts search epochs=1` on the tiny setting."""
    run_dir = tmp_path_factory.mktemp("plot") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["search", "epochs=1", *TINY, f"run_dir={run_dir}"]) == 0
    return str(run_dir), out.getvalue()


# ------------------------------------------------------------------------------------- history


def test_history_holds_softmax_of_the_checkpointed_alphas(search_run):
    run_dir, _ = search_run
    hist = ArchHistory.load(os.path.join(run_dir, HISTORY_FILE))
    assert hist.epochs == [0, 1]  # the initialisation, then after epoch 1
    assert [m["name"] for m in hist.meta] == ["normal", "reduce"]
    assert hist.meta[0]["edge_labels"] == darts_edge_labels(14)
    assert hist.meta[0]["edge_labels"][:3] == ["n0←c_{k-2}", "n0←c_{k-1}", "n1←c_{k-2}"]
    ckpt = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    for kind in ("normal", "reduce"):
        assert hist.values[kind].shape == (2, 14, 8)
        # The same float32 softmax of the same tensor: equal bit for bit.
        assert torch.equal(hist.values[kind][-1], F.softmax(ckpt["arch"][f"alphas_{kind}"].float(), dim=-1))
    assert not torch.equal(hist.values["normal"][0], hist.values["normal"][1])  # the architecture step moved α


def test_history_survives_resume(search_run, tmp_path):
    run_dir = str(tmp_path / "resumed")
    shutil.copytree(search_run[0], run_dir)
    path = os.path.join(run_dir, HISTORY_FILE)
    # A kill between the history write and the checkpoint leaves one entry too many: resume drops it.
    hist = ArchHistory.load(path)
    hist.append(2, hist.views_at(-1))
    hist.save(path)
    assert ArchHistory.resume(path, 1).epochs == [0, 1]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["search", "--resume", run_dir, "epochs=2"]) == 0
    resumed = ArchHistory.load(path)
    assert resumed.epochs == [0, 1, 2]
    assert torch.equal(resumed.values["normal"][:2], ArchHistory.load(os.path.join(search_run[0], HISTORY_FILE))
                       .values["normal"])


def test_tensorboard_has_heatmaps_and_cell_diagrams(search_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(search_run[0], "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"arch/alpha_normal", "arch/alpha_reduce", "arch/cell_normal", "arch/cell_reduce"} <= tags
    assert [e.step for e in acc.Images("arch/alpha_normal")] == [0]  # step of epoch 1's scalars


# ------------------------------------------------------------------------------------- plot


def test_search_cli_writes_plots_and_summary(search_run):
    run_dir, out = search_run
    plots = {os.path.splitext(f)[0] for f in os.listdir(os.path.join(run_dir, "plots"))}
    assert plots == DARTS_PNGS
    assert "derived genotype:" in out and "normal cell" in out and "reduce cell" in out
    assert "parameter-free ops in the normal cell:" in out
    assert f"fastdarts plot {run_dir}" in out and f"fastdarts train {os.path.join(run_dir, 'genotype.json')}" in out
    for name in sorted(DARTS_PNGS):
        assert f"  {name}.png" in out


def test_plot_cli_writes_every_png(search_run, tmp_path, capsys):
    out_dir = tmp_path / "pngs"
    assert main(["plot", search_run[0], "--out", str(out_dir), "--engine", "matplotlib"]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = sorted(os.listdir(out_dir))
    assert {os.path.splitext(f)[0] for f in written} == DARTS_PNGS
    assert sorted(printed) == sorted(f"wrote {out_dir / f}" for f in written)
    assert all(_is_png(out_dir / f) and os.path.getsize(out_dir / f) > 5000 for f in written)


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a fastdarts run directory" in err
    if not dot_available():
        genotype_dir = tmp_path / "g"
        genotype_dir.mkdir()
        save_genotype(DARTS_V2, str(genotype_dir / "genotype.json"))
        (genotype_dir / "search.log").write_text("")
        assert main(["plot", str(genotype_dir), "--engine", "dot"]) == 2
        assert "graphviz" in capsys.readouterr().err


def _fake_run(run_dir, model, method, steps=2):
    """A run directory whose history comes from ``model`` (α nudged between entries), without a search."""
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump({"method": method, "epochs": steps}, f)
    open(os.path.join(run_dir, "search.log"), "w").close()
    hist = ArchHistory.empty()
    g = torch.Generator().manual_seed(0)
    hist.append(0, arch_views(model))
    for e in range(1, steps + 1):
        with torch.no_grad():
            for a in model.arch_parameters():
                a.add_(0.3 * torch.randn(a.shape, generator=g)).clamp_(min=1e-3)
                if method.startswith("gaea"):  # keep GAEA's rows on the simplex
                    a.div_(a.sum(-1, keepdim=True))
        hist.append(e, arch_views(model))
    hist.save(os.path.join(run_dir, HISTORY_FILE))
    save_genotype(model.genotype(), os.path.join(run_dir, "genotype.json"))
    return run_dir


@pytest.mark.parametrize("method,space,expected", [
    ("pcdarts", "darts", DARTS_PNGS - {"curves"} | {"beta_normal", "beta_reduce"}),
    ("gaea_pcdarts", "darts", DARTS_PNGS - {"curves"} | {"beta_normal", "beta_reduce"}),
    ("prdarts", "darts", DARTS_PNGS - {"curves"} | {"gates_normal", "gates_reduce", "gate_trajectory_normal",
                                                  "gate_trajectory_reduce"}),
    ("gdas", "nb201", {"alpha_cell", "trajectory_cell", "cell_nb201"}),
])
def test_plot_writes_method_specific_pngs(tmp_path, method, space, expected):
    torch.manual_seed(0)
    model = build_supernet(space, method, C=4, num_classes=10, layers=1 if space == "nb201" else None,
                           in_channels=3)
    run_dir = _fake_run(str(tmp_path / method), model, method)
    paths = plot_run(run_dir, engine="matplotlib")
    assert {os.path.splitext(os.path.basename(p))[0] for p in paths} == expected
    assert all(_is_png(p) for p in paths)


# ------------------------------------------------------------------------------------- views


def test_prdarts_gate_view_is_the_hard_concrete_open_probability():
    model = build_supernet("darts", "prdarts", C=4, num_classes=10)
    with torch.no_grad():
        model.alphas_normal.zero_()
    views = {v.name: v for v in arch_views(model)}
    assert set(views) == {"normal", "normal/gate", "reduce", "reduce/gate"}
    tau = model.mixing.tau
    # P(z ≠ 0) = σ(A − τ·log(−a/b)) with a = −0.1, b = 1.1; at A = 0, τ = 1: σ(log 11) = 11/12.
    assert tau == 1.0
    expected = torch.full((14, 8), 11 / 12)
    # float32 sigmoid of a float32 argument: within a few float32 ulps of the exact value.
    torch.testing.assert_close(views["normal/gate"].values, expected, rtol=0, atol=4 * 2.0**-24)
    assert torch.equal(views["normal"].values, torch.full((14, 8), 1 / 8))  # softmax of equal logits


def test_pcdarts_beta_view_sums_to_one_per_node():
    torch.manual_seed(1)
    model = build_supernet("darts", "pcdarts", C=4, num_classes=10)
    with torch.no_grad():
        model.betas_normal.normal_()
    beta = next(v for v in arch_views(model) if v.name == "normal/beta")
    assert beta.kind == "edges" and beta.values.shape == (14,)
    start = 0
    for i in range(4):
        # softmax over i + 2 float32 values: the sum is 1 to within (i + 2) rounding errors.
        torch.testing.assert_close(beta.values[start:start + i + 2].sum(), torch.tensor(1.0), rtol=0,
                                   atol=(i + 2) * 2.0**-23)
        start += i + 2


def test_gaea_view_is_alpha_itself_and_nb201_labels():
    model = build_supernet("darts", "gaea", C=4, num_classes=10)
    views = arch_views(model)
    assert torch.equal(views[0].values, model.alphas_normal.detach())
    assert views[0].quantity.startswith("α")
    nb = build_supernet("nb201", "gdas", C=4, num_classes=10, layers=1)
    (view,) = arch_views(nb)
    assert view.name == "cell" and view.edge_labels == nb201_edge_labels() == [
        "n1←n0", "n2←n0", "n2←n1", "n3←n0", "n3←n1", "n3←n2"]
    assert "P(op sampled)" in view.quantity
    counter = nb.mixing.rng.counter
    arch_views(nb)
    assert nb.mixing.rng.counter == counter  # reading the views draws no gates


def test_cell_dot_names_every_op():
    dot = cell_dot(DARTS_V2, "normal", "t")
    assert dot.startswith("digraph cell {") and dot.count("->") == 8 + 4  # 8 op edges, 4 into the output
    assert dot.count("sep_conv_3x3") == 5
    nb = NB201Genotype([[("nor_conv_3x3", 0)], [("skip_connect", 0), ("none", 1)],
                        [("avg_pool_3x3", 0), ("nor_conv_1x1", 1), ("nor_conv_3x3", 2)]])
    assert cell_dot(nb).count("->") == 6 and "dashed" in cell_dot(nb)


@pytest.mark.skipif(not dot_available(), reason="graphviz dot is not installed")
def test_graphviz_diagram(tmp_path):
    path = str(tmp_path / "cell.png")
    assert write_cell_diagram(DARTS_V2, path, "reduce", "t", engine="dot") == "dot"
    assert _is_png(path)


# ------------------------------------------------------------------------------------- summary

DARTS_V2 = Genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5])


def _normal(ops):
    return Genotype(normal=[(op, j % 2) for j, op in enumerate(ops)], normal_concat=[2, 3, 4, 5],
                    reduce=DARTS_V2.reduce, reduce_concat=[2, 3, 4, 5])


def test_parameter_free_ops_come_from_the_op_table():
    free = {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "noise"}
    for op in ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
               "dil_conv_3x3", "dil_conv_5x5", "noise", "nor_conv_1x1", "nor_conv_3x3"):
        assert is_parameter_free(op) == (op in free), op


def test_collapse_hint_from_five_of_eight(tmp_path):
    assert parameter_free_count(DARTS_V2) == (2, 8) and not collapsed(DARTS_V2)  # reduce cell not counted
    four = _normal(["skip_connect", "max_pool_3x3", "avg_pool_3x3", "none"] + ["sep_conv_3x3"] * 4)
    five = _normal(["skip_connect"] * 3 + ["max_pool_3x3", "avg_pool_3x3"] + ["dil_conv_5x5"] * 3)
    assert parameter_free_count(four) == (4, 8) and not collapsed(four)
    assert parameter_free_count(five) == (5, 8) and collapsed(five)
    from fastdarts.summary import search_summary

    assert COLLAPSE_HINT not in search_summary(four, str(tmp_path))
    text = search_summary(five, str(tmp_path), 12.5)
    assert f"hint: {COLLAPSE_HINT}" in text and "5 of 8" in text and "12.50%" in text
    assert "fastdarts search prdarts-cifar10" in COLLAPSE_HINT


def test_cell_table_lists_both_cells():
    table = cell_table(DARTS_V2).splitlines()
    assert table[0].split() == ["node", "normal", "cell", "reduce", "cell"]
    assert table[2].startswith("n0") and "sep_conv_3x3 ← c_{k-2}" in table[2] and "max_pool_3x3 ← c_{k-1}" in table[2]
    assert table[-1].split()[0] == "out" and len(table) == 2 + 4 + 1


# ------------------------------------------------------------------------------------- bench charts


def test_bench_chart_has_one_panel_per_network_size(tmp_path, capsys):
    import json

    from fastdarts.bench import bench_figure

    def step(method, C, layers, backend="auto", space="darts"):
        return dict(name=f"search_step/{method}/{space}", method=method, space=space, backend=backend, C=C,
                    layers=layers, image_size=16, batch=8, step_ms=10.0 * C)

    result = dict(device="cpu-test", torch="9.9", triton=None, commit="abc1234", date="2026-01-01", quick=False,
                  copy_bw_gbps=None, records=[step("darts", 16, 8, "eager"), step("darts", 16, 8), step("darts", 8, 5),
                                              step("gdas", 8, 6), step("darts", 8, 2, space="nb201")])
    fig = bench_figure(result)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 4 and len(set(titles)) == 4  # C=16/8 cells, C=8/5, C=8/6, NAS-Bench-201
    assert any("C=16, 8 cells" in t for t in titles) and any("nb201" in t for t in titles)
    head = fig._suptitle.get_text()
    assert "cpu-test" in head and "torch 9.9" in head and "commit abc1234" in head
    path = tmp_path / "r.json"
    path.write_text(json.dumps(result))
    assert main(["bench", "--replot", str(path)]) == 0
    assert _is_png(tmp_path / "r.png") and capsys.readouterr().out == f"wrote {tmp_path / 'r.png'}\n"
