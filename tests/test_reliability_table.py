"""The README table "What happens when things go wrong", generated from real runs so it cannot drift.

Every row is a case below: it runs (the command line in-process, or the API), and its first
message line must be the README's, character for character. After changing a message, rewrite
the table with::

    python tests/test_reliability_table.py --update

Fault rows inject the fault in-process (SIGINT sent to the process itself from inside a step,
OSError from the checkpoint write); tests/test_faults.py sends the real signals to a real
subprocess and checks the same lines there.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import importlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import fastdarts
from fastdarts.checkpoint import save_checkpoint
from fastdarts.cli import main
from fastdarts.config import SearchConfig

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
# Every search row adds these (a tiny search; none of them changes a message).
TINY = ["C=4", "layers=2", "epochs=2", "data.batch_size=16", "data.image_size=8", "data.subset=0.012",
        "data.arch_subset=0.012"]


@dataclass(frozen=True)
class Case:
    tried: str  # markdown: what the user did
    run: Callable[[Path], tuple[str, str]]  # (first line the user sees, exit status or "API")
    cpu_only: bool = False  # the row describes a machine without CUDA


# ---------------------------------------------------------------------------------------------- runners


def _cli(ws: Path, *argv: str, line_with: str | None = None) -> tuple[str, str]:
    """Run ``fastdarts ARGV`` in ``ws``: the first ``fastdarts: `` line of stderr (or the first log
    line containing ``line_with``, without its time stamp) and the exit status."""
    err = io.StringIO()
    with contextlib.chdir(ws), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    lines = err.getvalue().splitlines()
    if line_with is None:
        found = [line for line in lines if line.startswith("fastdarts: ")]
    else:
        found = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines if line_with in line]
    assert found, f"no message in: {err.getvalue()[-2000:]}"
    return found[0], str(rc)


def _api(ws: Path, call: Callable[[], object]) -> tuple[str, str]:
    with contextlib.chdir(ws):
        try:
            call()
        except (TypeError, ValueError) as e:
            return f"{type(e).__name__}: {e}", "API"
    raise AssertionError("the call was accepted")


def search(*args: str, **kw):
    return lambda ws: _cli(ws, "search", *TINY, *args, **kw)


def train(*args: str):
    return lambda ws: _cli(ws, "train", *args, "C=4", "layers=2", "epochs=1", "run_dir=run")


def with_file(name: str, content: str | bytes | None, then):
    """Write ``name`` in the case directory (a folder when ``content`` is None), then run ``then``."""
    def run(ws: Path):
        path = ws / name
        if content is None:
            path.mkdir(parents=True)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return then(ws)
    return run


def with_setup(setup: Callable[[Path], None], then):
    def run(ws: Path):
        setup(ws)
        return then(ws)
    return run


def _images(ws: Path, corrupt: bool = True, empty_class: bool = False) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (ws / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((10, 10, 3), 40 * i, dtype=np.uint8)).save(ws / "imgs" / c / f"{i}.png")
    if corrupt:
        (ws / "imgs" / "b" / "2.png").write_bytes(b"not a PNG")
    if empty_class:
        (ws / "imgs" / "c").mkdir()


# The 6-image folder of _images, whole, 2 per batch, one epoch.
IMAGES = ("data=./imgs", "data.batch_size=2", "data.subset=1", "data.arch_subset=1", "epochs=1")


def _subsets_naming_a_missing_image(ws: Path) -> None:
    """imgs/ and a run/subsets.json drawn from it whose weight split names an image imgs/ lacks."""
    from fastdarts.data import DataConfig, build_search_data
    from fastdarts.subsets import save_subsets

    _images(ws, corrupt=False)
    (ws / "run").mkdir()
    path = str(ws / "run" / "subsets.json")
    cfg = DataConfig(name=str(ws / "imgs"), batch_size=2, subset=1, arch_subset=1)
    record = build_search_data(cfg, SearchConfig().seed, subsets_file=path).subsets
    save_subsets(path, dict(record, weights=["a/gone.png", *record["weights"][1:]]))


def _cifar_without_batch_3(ws: Path) -> None:
    (ws / "cifar").mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(ws / "cifar" / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, f)


GENOTYPE = {"space": "darts", "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]] * 4, "normal_concat": [2, 3, 4, 5],
            "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1]] * 4, "reduce_concat": [2, 3, 4, 5]}


def genotype(change: Callable[[dict], None]):
    d = json.loads(json.dumps(GENOTYPE))
    change(d)
    return json.dumps(d)


def _set(d, key, value):
    d[key] = value


def _ctrl_c(ws: Path, times: int) -> tuple[str, str]:
    """A real 2-epoch search that gets SIGINT ``times`` times during the first step of epoch 2."""
    method_cls = fastdarts.methods.get_method("darts")
    real_step = method_cls.step

    def step(self, *args):
        out = real_step(self, *args)
        if self.epoch == 1:
            for _ in range(times):
                signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(method_cls, "step", step)
        return _cli(ws, "search", *TINY, "run_dir=run")


@functools.lru_cache(maxsize=None)
def _interrupted_run() -> tuple[Path, str, str]:
    """A real 2-epoch search stopped at once by a second Ctrl-C in epoch 2: its folder (run/ holds
    config.yaml and the checkpoint of epoch 1, as after a kill) and what the user saw."""
    ws = Path(tempfile.mkdtemp(prefix="fastdarts-table-"))
    atexit.register(shutil.rmtree, ws, True)
    line, rc = _ctrl_c(ws, times=2)
    return ws, line, rc


def with_run(then, checkpoint: Callable[[Path], None] | None = None):
    """Copy the interrupted run into the case directory as run/, optionally alter its checkpoint, then run."""
    def run(ws: Path):
        shutil.copytree(_interrupted_run()[0] / "run", ws / "run")
        if checkpoint is not None:
            checkpoint(ws / "run" / "checkpoint.pt")
        return then(ws)
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _failing_checkpoint_write(code: int):
    """--resume the interrupted run with the next checkpoint write failing with OSError(code)."""
    search_mod = importlib.import_module("fastdarts.search")

    def run(ws: Path):
        def save(path, state):
            def fail(*args, **kwargs):
                raise OSError(code, os.strerror(code))

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(torch, "save", fail)
                save_checkpoint(path, state)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(search_mod, "save_checkpoint", save)
            return _cli(ws, "search", "--resume", "run")
    return with_run(run)


def _nan_loss(ws: Path):
    method_cls = fastdarts.methods.get_method("darts")
    real_step = method_cls.step

    def step(self, *args):
        metrics = real_step(self, *args)
        metrics["loss"] = metrics["loss"] * float("nan")
        return metrics

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(method_cls, "step", step)
        return _cli(ws, "search", "--resume", "run")


def _no_triton_interpreter(ws: Path):
    from fastdarts import functional

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRITON_INTERPRET", raising=False)
        functional._triton_usable.cache_clear()
        functional.resolve_backend.cache_clear()
        try:
            return search("backend=triton")(ws)
        finally:
            functional._triton_usable.cache_clear()
            functional.resolve_backend.cache_clear()


def _tensor(call):
    return lambda ws: _api(ws, call)


X, W = torch.zeros(2, 4, 5, 5), torch.full((8,), 0.125)


def _op():
    return fastdarts.MixedOp(4, 1, backend="eager")


# ---------------------------------------------------------------------------------------------- the cases

CASES = [
    # config values and keys
    Case("`fastdarts search epochs=0`", search("epochs=0")),
    Case("`fastdarts search epochs=-1`", search("epochs=-1")),
    Case("`fastdarts search epochs=2.5`", search("epochs=2.5")),
    Case("`fastdarts search layers=0`", search("layers=0")),
    Case("`fastdarts search C=0`", search("C=0")),
    Case("`fastdarts search data.batch_size=0`", search("data.batch_size=0")),
    Case("`fastdarts search data.image_size=0`", search("data.image_size=0")),
    Case("`fastdarts search data.num_workers=-1`", search("data.num_workers=-1")),
    Case("`fastdarts search method_options.steps=0` (nodes per cell)", search("method_options.steps=0")),
    Case("`fastdarts search method_options.k=3` (a PC-DARTS option given to DARTS)", search("method_options.k=3")),
    Case("`fastdarts search data.train_portion=1`", search("data.train_portion=1")),
    Case("`fastdarts search data.subset=0`", search("data.subset=0")),
    Case("`fastdarts search epoch=3` (unknown key)", search("epoch=3")),
    Case("`fastdarts search method=pcdart`", search("method=pcdart")),
    Case("`fastdarts search space=nb210`", search("space=nb210")),
    Case("`fastdarts search backend=tritonn`", search("backend=tritonn")),
    Case("`fastdarts search darts-cifar` (unknown recipe)", lambda ws: _cli(ws, "search", "darts-cifar")),
    Case("`fastdarts search recompute=maybe`", search("recompute=maybe")),
    Case("`fd.search(SearchConfig(epochs=\"3\"))` (wrong type in the API)",
         _tensor(lambda: fastdarts.search(SearchConfig(epochs="3")))),
    Case("`fastdarts search missing.yaml`", lambda ws: _cli(ws, "search", "missing.yaml")),
    Case("`fastdarts search cfg.yaml` where cfg.yaml is a folder",
         with_file("cfg.yaml", None, lambda ws: _cli(ws, "search", "cfg.yaml"))),
    Case("`fastdarts search bad.yaml` holding `method: [darts`",
         with_file("bad.yaml", "method: [darts\n", lambda ws: _cli(ws, "search", "bad.yaml"))),
    Case("`fastdarts search list.yaml` holding a YAML list",
         with_file("list.yaml", "- darts\n", lambda ws: _cli(ws, "search", "list.yaml"))),
    Case("`fastdarts search evil.yaml` holding `!!python/object/apply:os.system [...]`",
         with_file("evil.yaml", "method: !!python/object/apply:os.system ['touch pwned']\n",
                   lambda ws: _cli(ws, "search", "evil.yaml"))),
    # devices and backends
    Case("`fastdarts search backend=cuda` on a machine without CUDA", search("backend=cuda"), cpu_only=True),
    Case("`fastdarts search device=cuda` on a machine without CUDA", search("device=cuda"), cpu_only=True),
    Case("`fastdarts search backend=triton` without a GPU or `TRITON_INTERPRET=1`", _no_triton_interpreter,
         cpu_only=True),
    Case("`fastdarts search amp=fp16` on a machine without CUDA", search("amp=fp16"), cpu_only=True),
    Case("`fastdarts search checkpoint_every=0`", search("checkpoint_every=0")),
    Case("`fastdarts search channels_last=true` on a machine without CUDA", search("channels_last=true"),
         cpu_only=True),
    Case("`fastdarts search stem=imagenet data.image_size=32` (the ImageNet stem needs 64 px or more)",
         search("stem=imagenet", "data.image_size=32")),
    Case("`fastdarts search data=./imgs run_dir=run` where `run/subsets.json` lists an image `imgs/` lacks",
         with_setup(_subsets_naming_a_missing_image, search(*IMAGES, "run_dir=run"))),
    # data
    Case("`fastdarts search data=./nowhere`", search("data=./nowhere")),
    Case("`fastdarts search data=./empty` (an empty folder)", with_file("empty", None, search("data=./empty"))),
    Case("`fastdarts search data=./imgs` with a class folder `c/` holding no image",
         with_setup(lambda ws: _images(ws, corrupt=False, empty_class=True), search("data=./imgs"))),
    Case("`fastdarts search data=./imgs` where `imgs/b/2.png` is not an image",
         with_setup(_images, search(*IMAGES, "run_dir=run"))),
    Case("the same with `data.skip_corrupt=true` (a log line; the run goes on)",
         with_setup(_images, search(*IMAGES, "run_dir=run", "data.skip_corrupt=true",
                                    line_with="skipping unreadable image"))),
    Case("`fastdarts search data=./cifar` where `data_batch_3` is missing",
         with_setup(_cifar_without_batch_3, search("data=./cifar"))),
    # genotypes
    Case("`fastdarts train g.json` where g.json is not JSON",
         with_file("g.json", "Genotype(normal=[('sep_conv_3x3', 0)])", train("g.json"))),
    Case("`fastdarts train g.json` without `reduce_concat`",
         with_file("g.json", genotype(lambda d: d.pop("reduce_concat")), train("g.json"))),
    Case("`fastdarts train g.json` with op `sep_conv_3x4`",
         with_file("g.json", genotype(lambda d: d["normal"].__setitem__(0, ["sep_conv_3x4", 0])), train("g.json"))),
    Case("`fastdarts train g.json` naming node 7 of a 4-node cell",
         with_file("g.json", genotype(lambda d: d["normal"].__setitem__(7, ["sep_conv_3x3", 7])), train("g.json"))),
    Case("`fastdarts train g.json` with `normal_concat: [2, 3, 4, 6]`",
         with_file("g.json", genotype(lambda d: _set(d, "normal_concat", [2, 3, 4, 6])), train("g.json"))),
    Case("`fastdarts train nb.json` with a 5-edge NAS-Bench-201 string",
         with_file("nb.json", json.dumps({"space": "nb201", "arch": "|nor_conv_3x3~0|+|none~0|skip_connect~1|+"
                                                                     "|none~0|none~1|"}), train("nb.json"))),
    # checkpoints, resume and run directories
    Case("`fastdarts search --resume run` with checkpoint.pt cut in half",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run"), checkpoint=_truncate)),
    Case("`fastdarts search --resume run` where checkpoint.pt is a text file",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run"), checkpoint=lambda p: p.write_text("{}"))),
    Case("`fastdarts search --resume run C=8` (a checkpoint of C=4)",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run", "C=8"))),
    Case("`fastdarts search --resume run method=pcdarts` (a DARTS checkpoint)",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run", "method=pcdarts"))),
    Case("`fastdarts search --resume run space=s2` (a DARTS-space checkpoint)",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run", "space=s2"))),
    Case("`fastdarts search --resume run` where run/ holds no checkpoint",
         with_file("run", None, lambda ws: _cli(ws, "search", "--resume", "run"))),
    Case("`fastdarts search run_dir=run` where run/ holds a checkpoint", with_run(search("run_dir=run"))),
    Case("`fastdarts search run_dir=link` where link is a symlink to elsewhere/",
         with_setup(lambda ws: ((ws / "elsewhere").mkdir(), (ws / "link").symlink_to("elsewhere")),
                    search("run_dir=link"))),
    Case("`fastdarts search run_dir=notes.txt` (a file)", with_file("notes.txt", "x", search("run_dir=notes.txt"))),
    # tensors given to the public ops
    Case("`fd.mixed_sum(xs, w)` with w of shape [8, 1]",
         _tensor(lambda: fastdarts.mixed_sum([X] * 8, W.view(8, 1)))),
    Case("`fd.mixed_sum(xs, w)` with 7 candidates and 8 weights", _tensor(lambda: fastdarts.mixed_sum([X] * 7, W))),
    Case("`fd.mixed_sum(xs, w)` with an int64 candidate",
         _tensor(lambda: fastdarts.mixed_sum([X] * 7 + [X.long()], W))),
    Case("`MixedOp(4, 1)(x, w)` with x of shape [4, 5, 5]", _tensor(lambda: _op()(X[0], W))),
    Case("`MixedOp(4, 1)(x, w)` with 3 channels", _tensor(lambda: _op()(X[:, :3], W))),
    Case("`MixedOp(4, 1)(x, w)` with 7 weights", _tensor(lambda: _op()(X, W[:7]))),
    Case("`MixedOp(4, 1)(x, w)` with weights on another device", _tensor(lambda: _op()(X, W.to("meta")))),
    Case("`MixedOp(4, 1)(x, w)` with a float64 x", _tensor(lambda: _op()(X.double(), W))),
    # faults during a run
    Case("Ctrl-C (SIGINT) in the middle of epoch 2", lambda ws: _ctrl_c(ws, times=1)),
    Case("Ctrl-C twice in the middle of epoch 2", lambda ws: _interrupted_run()[1:]),
    Case("`kill -9` in the middle of epoch 2 (or a crash while checkpoint.pt is written), then "
         "`fastdarts search --resume run`",
         with_run(lambda ws: _cli(ws, "search", "--resume", "run", line_with="resumed from"))),
    Case("disk full (ENOSPC) while checkpoint.pt is written", _failing_checkpoint_write(errno.ENOSPC)),
    Case("run directory turned read-only (EROFS) while checkpoint.pt is written",
         _failing_checkpoint_write(errno.EROFS)),
    Case("NaN loss in epoch 2 (`on_nonfinite=stop`, the default)", with_run(_nan_loss)),
]


# ---------------------------------------------------------------------------------------------- the table


def _cell(text: str) -> str:
    """Inline code in a table cell: `|` escaped, double backticks when the text holds one."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def row(case: Case, message: str, status: str) -> str:
    return f"| {case.tried.replace('|', chr(92) + '|')} | {_cell(message)} | {status} |"


HEADER = ["| What was tried | What the user sees (first line) | Exit |", "|---|---|---|"]


def readme_rows() -> list[str]:
    text = README.read_text()
    assert START in text and END in text, f"README.md lacks the {START} ... {END} block"
    block = text.split(START, 1)[1].split(END, 1)[0]
    return [line for line in block.strip().splitlines() if line.startswith("|")][len(HEADER):]


def _tried(line: str) -> str:
    return re.split(r"(?<!\\)\|", line)[1].strip()


def run_case(case: Case, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return row(case, *case.run(folder))


def _ids():
    return [re.sub(r"\W+", "_", c.tried.strip("`"))[:60] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=_ids())
def test_readme_row_matches_what_the_user_sees(case, tmp_path):
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("the row describes a machine without CUDA")
    expected = run_case(case, tmp_path)
    rows = {_tried(r): r for r in readme_rows()}
    assert rows.get(_tried(expected)) == expected, (
        "README.md's reliability table is out of date; run `python tests/test_reliability_table.py --update`")


def test_readme_table_has_one_row_per_case():
    assert [_tried(r) for r in readme_rows()] == [c.tried.replace("|", "\\|") for c in CASES]


def update_readme() -> None:
    """Run every case and rewrite the table between the README markers."""
    base = Path(tempfile.mkdtemp(prefix="fastdarts-table-"))
    old = {_tried(r): r for r in readme_rows()}
    lines = []
    for i, case in enumerate(CASES):
        if case.cpu_only and torch.cuda.is_available():
            lines.append(old[case.tried])  # keep the CPU-machine row as it is
        else:
            lines.append(run_case(case, base / str(i)))
        print(lines[-1], file=sys.__stdout__)
    shutil.rmtree(base, ignore_errors=True)
    text = README.read_text()
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    README.write_text(head + START + "\n" + "\n".join(HEADER + lines) + "\n" + END + tail)


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_reliability_table.py --update")
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # as tests/conftest.py
    update_readme()
