"""Multi-process search with the gloo backend on CPU, 2 ranks (``python -m torch.distributed.run``).

What is equal and why:

* Between the ranks of one run everything is bit-identical (torch.equal): every rank applies the same
  averaged gradients to the same tensors, and the gates come from one shared seed.
* Against one process on the same global batches, the search loop differs by BatchNorm: in train mode
  each rank normalises with its own slice's batch statistics, which no tolerance can bound, so the
  full searches are not compared with a single process. The step-level test removes that difference
  (float64, BatchNorm in eval mode: each sample's loss then depends on that sample alone) and compares
  every method with a tolerance derived below.
* A killed and resumed 2-rank run equals an uninterrupted one bit for bit: the batches depend only on
  (seed, epoch, index), the checkpoint holds every state, and the children keep the thread count.
"""

import os
import signal
import subprocess
import sys
import time

import ddp_worker
import numpy as np
import pytest
import torch

import fastdarts
from fastdarts.checkpoint import load_checkpoint
from fastdarts.cli import main
from fastdarts.data import DataConfig, build_search_data
from fastdarts.distributed import sync_batchnorm

HERE = os.path.dirname(os.path.abspath(__file__))
# 2 epochs of 5 global batches of 16 (70 weight images: the last batch has 6, 3 per rank); a mid-epoch
# checkpoint every 2 steps, so the killed run resumes inside an epoch.
ARGS = ["C=4", "layers=2", "epochs=2", "data.batch_size=16", "data.image_size=8", "data.subset=0.05",
        "data.arch_subset=0.05", "log_every=1", "checkpoint_every=2"]
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
CHILD_ENV = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), MKL_NUM_THREADS=str(torch.get_num_threads()),
                 PYTHONPATH=os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH")) if p))
for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    CHILD_ENV.pop(key, None)


def _launch(args, log_path, **kwargs):
    with open(log_path, "w") as log:
        return subprocess.Popen([*LAUNCH, *args], stdout=log, stderr=subprocess.STDOUT, env=CHILD_ENV, cwd=HERE,
                                **kwargs)


def _finish(proc, log_path, timeout=300):
    rc = proc.wait(timeout=timeout)
    with open(log_path) as f:
        assert rc == 0, f.read()[-3000:]


# ---------------------------------------------------------------------------------------------- in-process


def test_sync_batchnorm_conversion_keeps_the_supernet():
    model = fastdarts.build_supernet("darts", "darts", C=4, num_classes=10, layers=2, backend="eager")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    arch = [a.clone() for a in model.arch_parameters()]
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sync_batchnorm(model) is model and n_bn > 0
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == n_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), arch))


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / "run")
    assert main(["search", *ARGS, "sync_bn=true", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sync_bn=true needs CUDA" in err
    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any process group is joined
    assert main(["search", *ARGS, f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.batch_size=16" in err and "3 ranks" in err
    assert not os.path.exists(run_dir)


def _jpegs(root, per_class=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, c, f"{i}.jpg"))
    return str(root)


@pytest.mark.parametrize("source", ["digits", "folder"])
def test_shards_are_slices_of_the_single_process_batch(source, tmp_path):
    name = "digits" if source == "digits" else _jpegs(tmp_path / "img")
    cfg = DataConfig(name=name, batch_size=4 if source == "folder" else 64, image_size=8, augment=True)
    whole = build_search_data(cfg, seed=3)
    shards = [build_search_data(cfg, seed=3) for _ in range(2)]
    for r, data in enumerate(shards):
        for loader in (data.train, data.valid):
            loader.shard(r, 2)
    for split in ("train", "valid"):
        full = getattr(whole, split)
        parts = [getattr(d, split) for d in shards]
        assert full.smallest_batch >= 2
        for i in range(len(full)):  # the last batch is partial: rows split 3/2, 2/1, ... as tensor_split
            x, y = full.batch(1, i)
            got = [p.batch(1, i) for p in parts]
            assert [g[1].numel() for g in got] == [t.numel() for t in torch.tensor_split(y, 2)]
            assert torch.equal(torch.cat([g[0] for g in got]), x) and torch.equal(torch.cat([g[1] for g in got]), y)
        x, y = full.random_batch(1, 5)
        got = [p.random_batch(1, 5) for p in parts]
        assert torch.equal(torch.cat([g[0] for g in got]), x) and torch.equal(torch.cat([g[1] for g in got]), y)
    with pytest.raises(ValueError, match="fewer than the 100 ranks"):
        whole.train.shard(0, 100)


# ---------------------------------------------------------------------------------------------- steps, 2 ranks


def test_every_method_on_two_ranks_matches_one_process(tmp_path):
    """One float64 search iteration after another on 2 ranks vs one process on the whole batches.

    Tolerance. With BatchNorm in eval mode the two computations differ only in the order of the
    float64 sums over the batch (per rank, then across ranks, weighted by the slice sizes): each
    gradient entry differs by at most about n·u·Σ|terms| with u = 2⁻⁵³ and n ≤ 512 summed terms of
    magnitude ≲ 1, i.e. ≲ 6e-14. An SGD step passes that on times lr ≤ 0.1 (Λ-DARTS' and second-order
    DARTS' finite differences divide by 2ε but difference two such gradients, keeping the same order
    after the factor ξ·λ they carry). Adam's first steps map g to lr·g/(|g| + ε), whose slope is at most
    lr/ε = 3e-4/1e-8 = 3e4: over 2 steps at most 2·3e4·6e-14 ≈ 4e-9. Hence atol 5e-9. A wrong
    reduction moves an architecture entry by about one Adam step (lr = 3e-4), far above it; the
    un-averaged run below checks that the comparison sees such an error.
    """
    log = tmp_path / "steps.log"
    _finish(_launch(["ddp_worker.py", "steps", str(tmp_path)], log), log)
    ranks = [torch.load(tmp_path / f"steps{r}.pt", weights_only=False) for r in range(2)]
    for name, layers in ddp_worker.METHODS:
        a, b = ranks[0][name], ranks[1][name]
        for x, y in zip(a["arch"] + a["weights"], b["arch"] + b["weights"]):
            assert torch.equal(x, y), name
        assert a["genotype"] == b["genotype"], name
        for ga, gb in zip(a["gates"], b["gates"]):  # sampled gates: the same draws on both ranks
            assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga), name
        one = ddp_worker.run_steps(name, layers)
        for x, y in zip(a["arch"] + a["weights"], one["arch"] + one["weights"]):
            torch.testing.assert_close(x, y, rtol=0, atol=5e-9, msg=lambda m, name=name: f"{name}: {m}")
        for ga, go in zip(a["gates"], one["gates"]):
            assert all(torch.equal(ga[k], go[k]) for k in ga), name
        if name in ("darts", "darts2"):  # one rank alone, without the averaging, is clearly off
            alone = ddp_worker.run_steps(name, layers, rank=0, world=2)
            assert max((x - y).abs().max() for x, y in zip(alone["arch"], one["arch"])) > 1e-6


# ---------------------------------------------------------------------------------------------- searches, 2 ranks


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """An uninterrupted 2-rank search through fastdarts.search (the torchrun environment set)."""
    out = tmp_path_factory.mktemp("ddp")
    run_dir = str(out / "run")
    log = out / "launch.log"
    start = time.time()
    _finish(_launch(["ddp_worker.py", "search", str(out), *ARGS, f"run_dir={run_dir}"], log), log)
    return out, run_dir, time.time() - start


def test_two_ranks_end_with_the_same_architecture(two_rank_run):
    out, run_dir, _ = two_rank_run
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert len(r0["arch"]) == 2 and all(t.device.type == "cpu" for t in r0["arch"])
    assert all(torch.equal(a, b) for a, b in zip(r0["arch"], r1["arch"]))
    assert r0["genotype"] == r1["genotype"]
    assert fastdarts.load_genotype(os.path.join(run_dir, "genotype.json")).to_dict() == r0["genotype"]
    ckpt = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    assert all(torch.equal(ckpt["arch"][n], a) for n, a in zip(("alphas_normal", "alphas_reduce"), r0["arch"]))
    with open(os.path.join(run_dir, "metrics.csv")) as f:  # written once, by rank 0
        assert [line.split(",")[0] for line in f.read().splitlines()] == ["epoch", "0", "1"]
    with open(os.path.join(run_dir, "search.log")) as f:
        assert "2 ranks: global batch 16, 8 per rank" in f.read()


def _same_checkpoint(dir_a, dir_b):
    a, b = (load_checkpoint(os.path.join(d, "checkpoint.pt")) for d in (dir_a, dir_b))
    assert {k: v for k, v in a["config"].items() if k != "run_dir"} == {k: v for k, v in b["config"].items()
                                                                       if k != "run_dir"}
    assert a["epoch"] == b["epoch"] == 1 and "position" not in b
    for part in ("model", "arch"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    for which in ("w_optim", "a_optim"):
        sa, sb = a["method"][which]["state"], b["method"][which]["state"]
        assert sa.keys() == sb.keys() and sa
        for i in sa:
            assert all(torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for k in sa[i]), which
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _kill_all(proc) -> None:
    """SIGKILL the launcher's ranks (torchrun starts each in its own session) and the launcher, as a lost
    machine would."""
    ranks = _children(proc.pid)
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(timeout=60)
    for pid in ranks:  # reaped by nobody here: wait until they are gone
        while os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1][:3]:
            time.sleep(0.01)


def test_killed_two_rank_run_resumes_bit_identically(two_rank_run, tmp_path):
    _, dir_a, _ = two_rank_run
    run_dir = str(tmp_path / "run")
    log = tmp_path / "killed.log"
    proc = _launch(["-m", "fastdarts", "search", *ARGS, f"run_dir={run_dir}"], log)
    search_log = os.path.join(run_dir, "search.log")
    deadline = time.time() + 300
    try:
        while True:
            assert proc.poll() is None, "the search ended before it was killed"
            assert time.time() < deadline, "the search did not reach epoch 2 in time"
            if os.path.isfile(search_log):
                with open(search_log) as f:
                    if "epoch 2/2 step 3 " in f.read():  # after the mid-epoch checkpoint at step 2
                        break
            time.sleep(0.02)
        _kill_all(proc)
    finally:
        if proc.poll() is None:
            _kill_all(proc)
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1  # killed inside epoch 2
    log = tmp_path / "resumed.log"
    _finish(_launch(["-m", "fastdarts", "search", "--resume", run_dir], log), log)
    with open(search_log) as f:
        assert "continuing epoch 2/2 at step" in f.read()
    _same_checkpoint(dir_a, run_dir)
    with open(os.path.join(run_dir, "genotype.json")) as fa, open(os.path.join(dir_a, "genotype.json")) as fb:
        assert fa.read() == fb.read()
