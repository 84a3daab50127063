"""ImageFolder DataLoader workers: persistent across epochs, restarted exactly, the default count, bad counts.

The batch sampler runs in the main process and every image is augmented from its own seed, so batches
made by workers must be bit-identical (torch.equal) to the in-process ones.
"""

import importlib
import multiprocessing
import os

import pytest
import torch
import torch.utils.data

from fastdarts.bench import write_jpeg_folder
from fastdarts.config import SearchConfig
from fastdarts.data import DataConfig, build_search_data, build_train_data
from fastdarts.data.config import resolve_num_workers
from fastdarts.validate import check_types, check_values


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # 3 classes x 8 JPEGs of 40 px: 21 training images after the held-out 10 % (batches of 4: 3 + 3).
    return write_jpeg_folder(str(tmp_path_factory.mktemp("jpegs")), 3, 8, 40)


def _data(folder, workers, **kw):
    return build_search_data(DataConfig(name=folder, batch_size=4, image_size=16, num_workers=workers, **kw), seed=3)


def _equal(got, want) -> bool:
    got, want = list(got), list(want)
    return len(got) == len(want) and all(torch.equal(x1, x2) and torch.equal(y1, y2)
                                         for (x1, y1), (x2, y2) in zip(got, want, strict=True))


def _pids(loader) -> list[int]:
    return [w.pid for w in loader._stream.loader._iterator._workers]


def test_workers_match_in_process_across_epochs_restarts_and_random_batches(folder):
    serial, workers = _data(folder, 0), _data(folder, 2)
    try:
        for epoch in (0, 1):
            assert _equal(workers.train.iterate(epoch), serial.train.iterate(epoch))
        # A restart while the previous iterator still has batches in flight (a resume, or the search's
        # next epoch): the new one starts exactly at its batch, the old one may no longer be used.
        old = workers.train.iterate(1)
        next(old)
        assert _equal(workers.train.iterate(1, start=2), serial.train.iterate(1, start=2))
        with pytest.raises(RuntimeError, match="superseded"):
            next(old)
        # Endless random architecture batches, cut off and restarted at a later step.
        endless = workers.valid.random_batches(0, start=0)
        next(endless)
        restarted = workers.valid.random_batches(1, start=5, count=3)
        assert _equal(restarted, serial.valid.random_batches(1, start=5, count=3))
        assert _equal(workers.test, serial.test)
    finally:
        workers.close()


def test_one_dataloader_per_stream_with_persistent_workers_closed_at_the_end(folder, monkeypatch):
    made = []

    class Counting(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Counting)
    data = build_train_data(DataConfig(name=folder, batch_size=4, image_size=16, num_workers=2), seed=0)
    loader = data.train
    try:
        # The workers' base seed does not come from the global RNG, so a run with workers draws from
        # it exactly what one without workers does.
        state = torch.get_rng_state()
        loader.set_epoch(0)
        list(loader)
        assert torch.equal(torch.get_rng_state(), state)
        pids = _pids(loader)
        for epoch in (1, 2):
            loader.set_epoch(epoch)
            list(loader)
        loader.iterate(2, start=1)
        assert len(made) == 1 and _pids(loader) == pids
        assert made[0]["persistent_workers"] and made[0]["prefetch_factor"] == 4 and not made[0]["pin_memory"]
        processes = loader._stream.loader._iterator._workers
    finally:
        data.close()
    assert loader._stream is None and not any(p.is_alive() for p in processes)


def test_default_worker_count(folder, monkeypatch):
    assert DataConfig().num_workers is None
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert resolve_num_workers(None, "imagefolder") == 8 and resolve_num_workers(3, "imagefolder") == 3
    assert resolve_num_workers(None, "digits") == 0 and resolve_num_workers(None, "cifar10") == 0
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    d = _data(folder, None)
    assert d.train.num_workers == d.valid.num_workers == d.test.num_workers == 2
    assert _data(folder, 0).train.num_workers == 0
    # In-memory data batches in this process whatever is set.
    assert build_search_data(DataConfig(batch_size=64, num_workers=4), seed=0).train.num_workers == 0
    cfg = SearchConfig()
    check_types(cfg)
    check_values(cfg)


@pytest.mark.parametrize("value,error", [(-1, ValueError), ("2", TypeError), (1.5, TypeError), (True, TypeError)])
def test_bad_worker_count_is_one_line(value, error):
    with pytest.raises(error, match=r"^DataConfig\.num_workers must be an integer >= 0 or None, got") as e:
        DataConfig(num_workers=value)
    assert "\n" not in str(e.value)


def test_search_logs_the_workers_and_leaves_no_worker_processes(folder, tmp_path, monkeypatch):
    import fastdarts
    from fastdarts.config import load_config

    search_mod = importlib.import_module("fastdarts.search")  # fastdarts.search is the function
    monkeypatch.setattr(search_mod, "log_arch_figures", lambda *args, **kwargs: None)
    before = set(multiprocessing.active_children())
    result = fastdarts.search(load_config(SearchConfig, None, [
        f"data={folder}", "data.batch_size=8", "data.image_size=16", "data.num_workers=2", "epochs=1", "C=2",
        "layers=2", "backend=eager", f"run_dir={tmp_path / 'run'}"]))
    assert set(multiprocessing.active_children()) <= before
    with open(os.path.join(result.run_dir, "search.log")) as f:
        assert "images, 2 loader workers)" in f.read()
