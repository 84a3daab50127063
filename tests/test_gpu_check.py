"""benchmarks/gpu_check.py, the stages of the prepared GPU run, on CPU at tiny sizes (its dry mode).

The GPU run cannot be tested here; these tests keep its code paths from rotting: each stage's
Python entry point runs on CPU tensors (C++ kernels, the Triton interpreter) and the report is
written in the ``fastdarts bench`` schema. ``bash benchmarks/gpu_check.sh --cpu-dry-run`` runs
the whole script the same way (minutes, mostly the Triton interpreter).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_large_and_misaligned_check_runs_every_backend(gc):
    results = gc.check_large_and_misaligned(CPU, 515, chunk=128)
    backends = {r["backend"] for r in results}
    assert "cpp" in backends or "triton" in backends
    assert {r["view"] for r in results} == {"aligned", "misaligned"}
    assert all(r["ok"] for r in results), [r["errors"] for r in results]


def test_kernel_table_records_and_backend_choice(gc):
    records, copy_bw = gc.bench_kernel_table(CPU, [torch.float32], [300], K=gc.AUTO_CHOICE_K, reps=1)
    assert copy_bw > 0
    backends = {r["backend"] for r in records}
    assert "eager" in backends and len(backends) >= 2
    assert {r["mode"] for r in records} == {"fwd", "bwd", "fwd+bwd"}
    for r in records:
        assert set(r) >= {"name", "mode", "backend", "dtype", "K", "numel", "ms", "gbps", "pct_of_copy_bw",
                          "speedup_vs_eager"}
        moved = gc.mixed_sum_mode_bytes(r["K"], r["numel"], 4, r["mode"])
        assert r["gbps"] == pytest.approx(moved / (r["ms"] * 1e-3) / 1e9)
    choice = gc.auto_choice(records)
    fastest = min((r for r in records if r["mode"] == "fwd+bwd" and r["backend"] != "eager"), key=lambda r: r["ms"])
    assert choice["float32"]["backend"] == fastest["backend"]
    # the targets only concern K=8 at >= 16M elements: none here
    assert gc.kernel_targets(records) == []


def test_search_step_and_largest_batch(gc):
    size = gc.search_sizes(dry=True)
    record = gc.search_record("darts", "auto", "auto", CPU, size, reps=1)
    assert record["step_ms"] > 0 and record["host_syncs"] is None  # counted on CUDA only
    budget = 8 * 2**20
    mb = gc.largest_batch("darts", "eager", CPU, budget, size, verify_budget_s=float("inf"))
    assert mb["max_batch"] >= 1 and mb["verified_bytes"] <= budget
    # the step's bytes are affine in the batch: the next batch up would not fit (up to rounding)
    assert mb["fixed_bytes"] + mb["bytes_per_sample"] * (mb["max_batch"] + 1) > budget * 0.999


def test_imagenet_stage_plans_four_variants_and_times_the_step(gc, tmp_path):
    args = type("Args", (), dict(state=str(tmp_path), dry_run=True))()
    assert gc.stage_imagenet(args) == 0
    records = json.loads((tmp_path / "imagenet.json").read_text())["records"]
    plans = [r for r in records if r["name"] == "imagenet_plan/pcdarts/darts"]
    assert [r["backend"] for r in plans] == ["plain", "recompute", "bf16", "recompute+bf16"]
    assert all(r["batch"] == 1024 and r["bytes_per_sample"] > 0 and "largest batch that fits" in r["table"]
               for r in plans)
    # recompute keeps a cell's inputs instead of its activations: fewer bytes per sample
    assert plans[1]["bytes_per_sample"] < plans[0]["bytes_per_sample"]
    steps = [r for r in records if r["name"] == "imagenet_step/pcdarts/darts"]
    assert [r["backend"] for r in steps] == ["recompute+bf16"]  # channels_last: CUDA only
    assert all(r["step_ms"] > 0 and r["images_per_s"] > 0 for r in steps)
    text = gc.gpu_check_markdown(dict(records=records, gpu_check=dict(stages=[], targets=[], owed=[])))
    assert "| plan | 4/2/64 | recompute+bf16 |" in text and "fastdarts plan pcdarts-imagenet" in text


def test_report_merges_the_stages(gc, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    records, copy_bw = gc.bench_kernel_table(CPU, [torch.float32], [200], K=8, reps=1)
    gc._save(str(state), "kernels", dict(records=records, copy_bw_gbps=copy_bw, auto_choice=gc.auto_choice(records)))
    gc._save(str(state), "search", dict(records=[dict(name="search_step/darts/darts", method="darts", space="darts",
                                                      backend="auto", skipped="not run in this test")]))
    (state / "stages.tsv").write_text("env\tok\t1\t0\nbuild\tskipped\t0\t3\nkernels\tok\t2\t0\n")
    args = type("Args", (), dict(state=str(state), out=str(out), dry_run=True))()
    assert gc.stage_report(args) == 0
    (path,) = [p for p in os.listdir(out) if p.endswith(".json")]
    assert path.endswith("-dry-run.json")
    result = json.loads((out / path).read_text())
    assert set(result) >= {"device", "torch", "triton", "fastdarts", "commit", "date", "quick", "threads",
                           "copy_bw_gbps", "records", "gpu_check"}
    assert result["gpu_check"]["owed"] == ["every GPU figure (this is a CPU dry run)"]
    assert [s["status"] for s in result["gpu_check"]["stages"]] == ["ok", "skipped", "ok"]
    text = (out / path.replace(".json", ".md")).read_text()
    assert "| mixed_sum | fwd |" in text and "GPU figures still owed" in text


def test_owed_figures_name_failed_stages_and_missed_targets(gc):
    result = dict(gpu_check=dict(dry_run=False, stages=[dict(stage=s, status="ok") for s in (
        "build", "cuda-tests", "int64-misaligned", "kernels", "search", "imagenet", "search-compile")] +
        [dict(stage="max-batch", status="timeout")], targets=[dict(what="cuda float32 n=16,777,216", met=False)]))
    owed = gc.owed_figures(result)
    assert owed == ["largest batch per memory budget (stage max-batch: timeout)",
                    "target not met: cuda float32 n=16,777,216"]


def test_shell_script_parses_and_refuses_unknown_arguments():
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    bad = subprocess.run(["bash", script, "--gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument '--gpu'" in bad.stderr
