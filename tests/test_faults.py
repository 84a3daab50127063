"""Faults a long search must survive: SIGKILL and Ctrl-C mid-epoch (real signals to a real
subprocess), a crash or a full disk while the checkpoint is written, and ``deterministic=true``.

The resumed runs are compared with an uninterrupted one bit for bit (torch.equal): on CPU every
batch depends only on (seed, epoch, index) and the checkpoint holds every RNG and optimiser state,
so nothing is approximate here. The children get the test process's intra-op thread count
(whatever FASTDARTS_TEST_THREADS made it), so both sides split their reductions the same way.
"""

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import fastdarts
from fastdarts.checkpoint import CheckpointWriteError, load_checkpoint, save_checkpoint
from fastdarts.cli import main
from fastdarts.config import SearchConfig, default_search_config_path, load_config

# 2 epochs of 4 weight steps (70 images, batch 16); log_every=1 logs every step, so a test can
# wait for "epoch 2/2 step 1" and then signal the run in the middle of its second epoch.
ARGS = ["C=4", "layers=2", "epochs=2", "data.batch_size=16", "data.image_size=8", "data.subset=0.05",
        "data.arch_subset=0.05", "log_every=1", "deterministic=true"]
MID_EPOCH_2 = "epoch 2/2 step 1 "


def _child_env() -> dict:
    """The environment of a search subprocess: this process's intra-op thread count, read when the child
    starts, so the child splits its reductions as the in-process baseline and resume do."""
    threads = str(torch.get_num_threads())
    return dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def _run(run_dir):
    # The config `fastdarts search ARGS` builds in the children: the packaged default + ARGS.
    return fastdarts.search(load_config(SearchConfig, default_search_config_path(), [*ARGS, f"run_dir={run_dir}"]))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run, recording whether deterministic mode was on inside the steps."""
    method_cls = fastdarts.methods.get_method("darts")
    seen = []
    real_step = method_cls.step

    def step(self, *args):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_step(self, *args)

    run_dir = str(tmp_path_factory.mktemp("baseline") / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(method_cls, "step", step)
        result = _run(run_dir)
    return result, run_dir, seen


def _assert_same_run(dir_a, dir_b):
    """Checkpoints equal bit for bit: weights, buffers, architecture tensors, optimiser states, history."""
    a, b = load_checkpoint(os.path.join(dir_a, "checkpoint.pt")), load_checkpoint(os.path.join(dir_b, "checkpoint.pt"))
    config_a, config_b = ({k: v for k, v in c["config"].items() if k != "run_dir"} for c in (a, b))
    assert config_a == config_b  # else the two runs were never meant to agree
    assert a["epoch"] == b["epoch"] == 1
    for part in ("model", "arch"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for which in ("w_optim", "a_optim"):
        sa, sb = a["method"][which]["state"], b["method"][which]["state"]
        assert sa.keys() == sb.keys() and sa
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (which, i, k)
    assert torch.equal(a["rng"], b["rng"])
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert json.dumps(strip(a["history"])) == json.dumps(strip(b["history"]))
    for name in ("genotype.json", os.path.join("genotypes", "epoch_000.json")):
        with open(os.path.join(dir_a, name)) as fa, open(os.path.join(dir_b, name)) as fb:
            assert json.load(fa) == json.load(fb), name
    with open(os.path.join(dir_b, "metrics.csv")) as f:  # no epoch logged twice by the two processes
        assert [line.split(",")[0] for line in f.read().splitlines()] == ["epoch", "0", "1"]


def _start_and_signal(run_dir, sig, log_path):
    """Start ``fastdarts search`` in a subprocess, send ``sig`` once it has done a step of epoch 2."""
    with open(log_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastdarts", "search", *ARGS, f"run_dir={run_dir}"],
                                stdout=subprocess.DEVNULL, stderr=err, env=_child_env())
    log = os.path.join(run_dir, "search.log")
    deadline = time.time() + 600
    try:
        while True:
            assert proc.poll() is None, f"the search ended (status {proc.returncode}) before it was signalled"
            assert time.time() < deadline, "the search did not reach epoch 2 in time"
            if os.path.isfile(log):
                with open(log) as f:
                    if MID_EPOCH_2 in f.read():
                        break
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_mid_epoch_then_resume_is_bit_identical(baseline, tmp_path, capsys):
    result_a, dir_a, _ = baseline
    run_dir = str(tmp_path / "run")
    rc = _start_and_signal(run_dir, signal.SIGKILL, tmp_path / "stderr.txt")
    assert rc == -signal.SIGKILL
    assert load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["epoch"] == 0  # killed inside epoch 2
    assert main(["search", "--resume", run_dir]) == 0
    assert "epoch 1/2 was done, continuing with epoch 2" in capsys.readouterr().err
    _assert_same_run(dir_a, run_dir)
    assert fastdarts.load_genotype(os.path.join(run_dir, "genotype.json")) == result_a.genotype


def test_ctrl_c_mid_epoch_checkpoints_the_step_and_resumes_exactly(baseline, tmp_path, capsys):
    """Ctrl-C lets the step in progress finish, writes a mid-epoch checkpoint there and says how to
    resume; the resume continues at that step, bit-identical to the unbroken run."""
    _, dir_a, _ = baseline
    run_dir = str(tmp_path / "run")
    rc = _start_and_signal(run_dir, signal.SIGINT, tmp_path / "stderr.txt")
    lines = [line for line in (tmp_path / "stderr.txt").read_text().splitlines() if line.startswith("fastdarts:")]
    assert rc == 130 and len(lines) == 1, lines
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    assert state["epoch"] == 0 and state["position"]["epoch"] == 1
    done = state["position"]["step"]  # signalled after the first step of epoch 2 had been logged
    assert 1 <= done < 5
    assert lines[0] == (f"fastdarts: interrupted: {run_dir}/checkpoint.pt holds the state after step {done} of "
                        f"epoch 2/2; continue with `fastdarts search --resume {run_dir}` (it continues at that step)")
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]
    assert main(["search", "--resume", run_dir]) == 0
    _assert_same_run(dir_a, run_dir)


def _signalled_step(monkeypatch, at_step, times):
    """Make the darts step send itself SIGINT ``times`` times during step ``at_step`` of epoch 1."""
    method_cls = fastdarts.methods.get_method("darts")
    real_step = method_cls.step

    def step(self, train_batch, valid_batch, i):
        out = real_step(self, train_batch, valid_batch, i)
        if i == at_step:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(method_cls, "step", step)


ONE_EPOCH = ["epochs=1", "data.subset=0.012", "data.arch_subset=0.012", "log_every=50"]  # 2 steps (16 + 4)


def test_second_ctrl_c_stops_at_once(tmp_path, monkeypatch):
    _signalled_step(monkeypatch, at_step=0, times=2)
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt, match="before the first epoch ended: no checkpoint was written"):
        fastdarts.search(load_config(SearchConfig, None, [*ARGS, *ONE_EPOCH, f"run_dir={run_dir}"]))
    assert not os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
    assert torch.are_deterministic_algorithms_enabled() is False  # restored on the way out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # and Python's handler is back


def test_ctrl_c_in_the_last_step_stops_at_the_epoch_checkpoint(tmp_path, monkeypatch):
    _signalled_step(monkeypatch, at_step=1, times=1)
    run_dir = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt, match="holds the state after epoch 1/1; .* it only evaluates"):
        fastdarts.search(load_config(SearchConfig, None, [*ARGS, *ONE_EPOCH, f"run_dir={run_dir}"]))
    state = load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))
    assert state["epoch"] == 0 and "position" not in state


# ------------------------------------------------------------------------------------------ checkpoint writes


def _half_then(exc):
    """A torch.save that writes half of the real bytes to the file, then fails with ``exc``."""
    import io

    real = torch.save

    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        raise exc

    return save


def _previous(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, {"epoch": 0, "w": torch.arange(4096.0)})
    return path, (tmp_path / "checkpoint.pt").read_bytes()


def _temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_crash_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path, before = _previous(tmp_path)
    monkeypatch.setattr(torch, "save", _half_then(RuntimeError("simulated crash halfway through torch.save")))
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(4096)})
    assert (tmp_path / "checkpoint.pt").read_bytes() == before and not _temp_files(tmp_path)


def test_process_killed_while_writing_keeps_the_previous_checkpoint(tmp_path):
    """A real SIGKILL halfway through the write: the old file survives, the stale temporary file is
    cleaned up by the next save."""
    script = textwrap.dedent(f"""
        import io, os, signal, torch
        from fastdarts.checkpoint import save_checkpoint
        path = {str(tmp_path / 'checkpoint.pt')!r}
        save_checkpoint(path, {{"epoch": 0, "w": torch.arange(4096.0)}})
        real = torch.save
        def dying_save(obj, f, *a, **k):
            buf = io.BytesIO(); real(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint(path, {{"epoch": 1, "w": torch.zeros(4096)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_child_env(), capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    state = load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["epoch"] == 0 and torch.equal(state["w"], torch.arange(4096.0))
    assert len(_temp_files(tmp_path)) == 1  # the torn write, never renamed into place
    save_checkpoint(str(tmp_path / "checkpoint.pt"), {"epoch": 1})
    assert not _temp_files(tmp_path) and load_checkpoint(str(tmp_path / "checkpoint.pt"))["epoch"] == 1


@pytest.mark.parametrize("code, text", [(errno.ENOSPC, "No space left on device [ENOSPC]"),
                                        (errno.EROFS, "Read-only file system [EROFS]")])
def test_disk_full_or_read_only_reported_in_one_line(tmp_path, monkeypatch, code, text):
    path, before = _previous(tmp_path)
    if code == errno.ENOSPC:  # the disk fills up halfway through the data
        monkeypatch.setattr(torch, "save", _half_then(OSError(code, os.strerror(code))))
    else:  # the directory became read-only: creating the temporary file fails
        real_open = os.open

        def read_only_open(p, *args, **kwargs):
            if str(p).endswith(".tmp"):
                raise OSError(code, os.strerror(code))
            return real_open(p, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(path, {"epoch": 1, "w": torch.zeros(4096)})
    assert info.value.errno == code and isinstance(info.value, OSError)
    assert str(info.value) == f"cannot write checkpoint {path}: {text}; the previous checkpoint is intact"
    assert (tmp_path / "checkpoint.pt").read_bytes() == before and not _temp_files(tmp_path)


def test_disk_full_during_a_search(tmp_path, monkeypatch, capsys):
    """The CLI reports the failed write in one line (exit status 1) and the epoch-1 checkpoint stays."""
    search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function
    calls = []

    def second_save_fails(path, state):
        calls.append(path)
        with pytest.MonkeyPatch.context() as mp:
            if len(calls) == 2:  # the disk fills up while epoch 2's checkpoint is written
                mp.setattr(torch, "save", _half_then(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
            save_checkpoint(path, state)

    monkeypatch.setattr(search_mod, "save_checkpoint", second_save_fails)
    monkeypatch.chdir(tmp_path)
    rc = main(["search", *ARGS, "data.subset=0.012", "data.arch_subset=0.012", "log_every=50", "run_dir=run"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fastdarts:")]
    assert rc == 1
    assert lines == ["fastdarts: error: cannot write checkpoint run/checkpoint.pt: No space left on device [ENOSPC]; "
                     "the previous checkpoint is intact"]
    assert load_checkpoint("run/checkpoint.pt")["epoch"] == 0 and not _temp_files("run")


# ------------------------------------------------------------------------------------------ determinism


def test_deterministic_runs_are_identical_and_the_mode_is_restored(baseline, tmp_path):
    result_a, dir_a, seen = baseline
    assert seen and all(seen)  # every step ran with torch.use_deterministic_algorithms(True)
    assert torch.are_deterministic_algorithms_enabled() is False
    result_b = _run(str(tmp_path / "run"))
    _assert_same_run(dir_a, str(tmp_path / "run"))
    assert result_b.genotype == result_a.genotype and result_b.test_acc == result_a.test_acc


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_deterministic_mode_settings(device, monkeypatch):
    """Strict on CPU; on CUDA warn-only (no deterministic CUDA AdaptiveAvgPool2d backward or NLLLoss
    in PyTorch) with a fixed cuBLAS workspace. Only flags are set: no GPU is needed to check them."""
    from fastdarts.determinism import CUBLAS_WORKSPACE, deterministic_mode

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    with deterministic_mode(True, torch.device(device)):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled() == (device == "cuda")
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (CUBLAS_WORKSPACE if device == "cuda" else None)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    with deterministic_mode(False, torch.device(device)):
        assert torch.are_deterministic_algorithms_enabled() == before[0]
