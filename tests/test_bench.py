"""`fastdarts bench`: result files carry the fields the README table and the acceptance checks read."""

import json

import torch

from fastdarts.bench import (
    bench_search,
    markdown_tables,
    run_bench,
    run_pipeline_bench,
    update_readme,
    write_jpeg_folder,
)

KERNEL_FIELDS = {"name", "backend", "dtype", "K", "numel", "ms", "gbps", "pct_of_copy_bw", "speedup_vs_eager"}
SEARCH_FIELDS = {"name", "method", "space", "batch", "step_ms", "peak_bytes", "saved_bytes", "ratio_vs_eager"}


def test_kernel_report_files_and_fields(tmp_path):
    paths = run_bench("kernels", str(tmp_path), quick=True)
    assert {p.rsplit(".", 1)[1] for p in paths} == {"json", "md", "png"}
    result = json.loads(open(paths[0]).read())
    assert {"device", "torch", "triton", "commit", "records"} <= set(result)
    assert result["copy_bw_gbps"] > 0
    for r in result["records"]:
        assert KERNEL_FIELDS <= set(r)
        assert r["ms"] > 0 and r["gbps"] > 0
    assert {r["backend"] for r in result["records"]} >= {"eager"}


def test_search_records_and_readme_block(tmp_path):
    records = bench_search(torch.device("cpu"), quick=True, methods=["darts"])
    timed = [r for r in records if "step_ms" in r]
    assert timed and all(SEARCH_FIELDS <= set(r) for r in timed)
    full = {r["backend"]: r for r in timed if r["method"] == "darts" and r["layers"] == 5 and r["space"] == "darts"
            and r["batch"] == 8}
    assert full["eager"]["ratio_vs_eager"] == 1.0
    assert full["auto+recompute"]["saved_bytes"] < full["eager"]["saved_bytes"]
    result = dict(device="cpu-test", torch="x", triton=None, commit="abc", date="2026-01-01", copy_bw_gbps=None,
                  records=records)
    (tmp_path / "cpu-test.json").write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\noutro\n")
    assert update_readme(str(tmp_path), str(readme))
    text = readme.read_text()
    assert "old" not in text and "auto+recompute" in text and text.endswith("outro\n")
    assert "| darts | darts | eager |" in markdown_tables(result)


def test_pipeline_bench_on_a_tiny_folder(tmp_path):
    paths = run_pipeline_bench(str(tmp_path / "out"), data=str(write_jpeg_folder(str(tmp_path / "jpegs"), 2, 3, 32)),
                               quick=True)
    assert [p.rsplit(".", 1)[1] for p in paths] == ["json", "md"]
    result = json.loads(open(paths[0]).read())
    assert {"device", "torch", "pillow", "commit", "load_avg_before", "load_avg_after", "pipeline"} <= set(result)
    assert "records" not in result  # update_readme's kernel/search tables skip it
    # 6 images, none in val/: the stratified 10 % hold-out keeps at least one per class -> 4 training images
    assert {(r["workers"], r["decode_threads"]) for r in result["pipeline"]} >= {(0, 1), (2, 1)}
    for r in result["pipeline"]:
        assert r["images_per_epoch"] == 4 and r["repeats"] == 1 and r["image_size"] == 224
        assert r["images_per_s"] > 0 and len(r["images_per_s_all"]) == 1
    assert "| 2 | 1 |" in open(paths[1]).read()
