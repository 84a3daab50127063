"""Tests for fastdarts.data: embedded digits, CIFAR python folders, ImageFolder, determinism."""

import os
import pickle

import numpy as np
import pytest
import torch

from fastdarts.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataConfig,
    EpochLoader,
    build_search_data,
    build_train_data,
    load_cifar_batch,
)
from fastdarts.data.transforms import _random_crop as random_crop


@pytest.fixture(scope="module")
def digits():
    return build_search_data(DataConfig(batch_size=32), seed=0)


def _rows(t: torch.Tensor) -> set:
    return {r.numpy().tobytes() for r in t.reshape(t.shape[0], -1)}


def _same_batches(a: EpochLoader, b: EpochLoader, epoch: int) -> bool:
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    pa, pb = list(a), list(b)
    if len(pa) != len(pb):
        return False
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(pa, pb, strict=True))


# ----------------------------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_normalisation(digits):
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 3, 16)
    x, y = next(iter(digits.train))
    assert x.shape == (32, 3, 16, 16) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # gray replicated
    xs = torch.cat([b[0] for b in digits.test])
    ys = torch.cat([b[1] for b in digits.test])
    assert abs(float(xs.mean())) < 0.1 and abs(float(xs.std()) - 1.0) < 0.1
    assert sorted(ys.unique().tolist()) == list(range(10))
    assert len(digits.train) == -(-digits.train.num_samples // 32)  # keeps the partial batch (quark0)
    assert len(digits.test) == -(-digits.test.num_samples // 32)  # keeps the partial batch
    assert sum(b[0].shape[0] for b in digits.test) == digits.test.num_samples


def test_digits_image_size_option():
    d = build_search_data(DataConfig(batch_size=8, image_size=8, augment=False), seed=0)
    assert d.image_size == 8 and next(iter(d.train))[0].shape == (8, 3, 8, 8)


def test_digits_held_out_split_fixed_and_disjoint(digits):
    other = build_search_data(DataConfig(batch_size=32, train_portion=0.7), seed=123)
    assert torch.equal(digits.test.source.images, other.test.source.images)
    assert torch.equal(digits.test.labels, other.test.labels)
    n_test = digits.test.num_samples
    assert 340 <= n_test <= 380  # stratified 20 % of 1797
    tr, va = digits.train.indices, digits.valid.indices
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert tr.numel() + va.numel() == 1797 - n_test
    assert len(_rows(digits.train.source.images) & _rows(digits.test.source.images)) == 0
    # the weight/architecture split is stratified per class
    counts_tr = torch.bincount(digits.train.labels, minlength=10)
    counts_va = torch.bincount(digits.valid.labels, minlength=10)
    assert (counts_tr - counts_va).abs().max() <= 1


def test_same_seed_epoch_same_batches_different_epoch_differs():
    cfg = DataConfig(batch_size=200, cutout=4)
    a, b = build_search_data(cfg, seed=7), build_search_data(cfg, seed=7)
    assert _same_batches(a.train, b.train, 3) and _same_batches(a.valid, b.valid, 3)
    a.train.set_epoch(3)
    first3 = next(iter(a.train))
    a.train.set_epoch(4)
    first4 = next(iter(a.train))
    assert not torch.equal(first3[1], first4[1])
    # order comes from the epoch alone: resuming mid-epoch reproduces the same batches
    full = list(a.train.iterate(3))
    tail = list(a.train.iterate(3, start=1))
    assert len(full) == 4 and len(tail) == 3  # 719 images: 3 x 200 + the partial batch of 119
    assert all(torch.equal(f[0], t[0]) for f, t in zip(full[1:], tail, strict=True))
    assert torch.equal(a.train.batch(3, 2)[0], full[2][0])
    # another seed gives another order; the test loader is never shuffled
    c = build_search_data(cfg, seed=8)
    assert not _same_batches(a.train, c.train, 3)
    assert _same_batches(a.test, c.test, 5)


def test_random_batch_reproducible(digits):
    v = digits.valid
    x1, y1 = v.random_batch(2, 10)
    x2, y2 = v.random_batch(2, 10)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape[0] == 32
    assert not torch.equal(v.random_batch(2, 11)[0], x1)
    assert not torch.equal(v.random_batch(3, 10)[0], x1)
    v.set_epoch(2)
    assert torch.equal(v.sample(10)[0], x1)
    run = list(v.random_batches(2, start=9, count=3))
    assert len(run) == 3 and torch.equal(run[1][0], x1)


def test_partial_batch_when_split_smaller_than_batch():
    d = build_search_data(DataConfig(batch_size=1000), seed=0)
    assert d.train.num_samples < 1000 and len(d.train) == 1
    assert next(iter(d.train))[0].shape[0] == d.train.num_samples
    assert d.valid.random_batch(0, 0)[0].shape[0] == d.valid.num_samples


def test_every_epoch_sees_every_image_once_last_partial_batch_kept():
    # quark0/darts train_search.py and train.py use DataLoader(drop_last=False): an epoch of the
    # weight split is ceil(n / batch) steps and visits each of its n images exactly once.
    search = build_search_data(DataConfig(batch_size=64, augment=False), seed=2)
    retrain = build_train_data(DataConfig(batch_size=64, augment=False), seed=2)
    for loader in (search.train, search.valid, retrain.train):
        n = loader.num_samples
        assert n % 64 != 0  # the digits splits (719, 719, 1438 images) end on a partial batch
        loader.set_epoch(1)
        batches = list(loader)
        assert len(loader) == len(batches) == -(-n // 64)
        assert [y.numel() for _, y in batches] == [64] * (n // 64) + [n % 64]
        order = torch.cat([idx for idx, *_ in loader._specs(1)])
        assert torch.equal(torch.sort(order).values, torch.sort(loader.indices).values)


def test_random_crop_matches_naive():
    x = torch.rand(5, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    oy, ox = torch.randint(0, 5, (5,), generator=g), torch.randint(0, 5, (5,), generator=g)
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    ref = torch.stack([xp[b, :, oy[b]:oy[b] + 8, ox[b]:ox[b] + 8] for b in range(5)])
    assert torch.equal(out, ref)


def test_single_level_uses_all_training_images(digits):
    d = build_search_data(DataConfig(batch_size=32), seed=0, single_level=True)
    n = digits.train.num_samples + digits.valid.num_samples
    assert d.train.num_samples == d.valid.num_samples == n
    assert torch.equal(d.train.indices, d.valid.indices)
    d.train.set_epoch(0)
    d.valid.set_epoch(0)
    assert not torch.equal(next(iter(d.train))[1], next(iter(d.valid))[1])  # independent streams


def test_subset_per_class(digits):
    d = build_search_data(DataConfig(batch_size=8, subset=0.1, arch_subset=0.05), seed=0)
    all_labels = torch.cat([digits.train.labels, digits.valid.labels])
    counts = torch.bincount(all_labels, minlength=10)
    assert torch.equal(torch.bincount(d.train.labels, minlength=10),
                       torch.tensor([round(0.1 * int(c)) for c in counts]))
    assert torch.equal(torch.bincount(d.valid.labels, minlength=10),
                       torch.tensor([round(0.05 * int(c)) for c in counts]))
    # drawn from inside the (same-seed) weight / architecture splits
    assert set(d.train.indices.tolist()) <= set(digits.train.indices.tolist())
    assert set(d.valid.indices.tolist()) <= set(digits.valid.indices.tolist())
    with pytest.raises(ValueError, match="subset"):
        build_search_data(DataConfig(subset=0.6, train_portion=0.5), seed=0)


def test_build_train_data(digits):
    d = build_train_data(DataConfig(batch_size=32), seed=0)
    assert d.train.num_samples == digits.train.num_samples + digits.valid.num_samples
    assert d.valid is d.test and torch.equal(d.test.labels, digits.test.labels)
    assert d.train.augment and not d.test.augment and not d.test.shuffle


# ----------------------------------------------------------------------------------------------- CIFAR


def _write_cifar10(folder, n_per_batch=6, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    cfg = DataConfig(name="cifar10", root=str(tmp_path), batch_size=4, train_portion=0.5)
    d = build_search_data(cfg, seed=0)
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 3, 32)
    assert d.classes == tuple(f"c{i}" for i in range(10))
    assert torch.equal(d.train.indices, torch.arange(15)) and torch.equal(d.valid.indices, torch.arange(15, 30))
    assert d.test.num_samples == 5 and len(d.test) == 2 and len(d.train) == 4  # 15 = 3 x 4 + 3
    x, y = next(iter(d.train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # test batches are exactly the normalised pixels, in file order
    raw = load_cifar_batch(str(folder / "test_batch"))
    xt, yt = next(iter(d.test))
    img = torch.from_numpy(raw["data"][:4].reshape(4, 3, 32, 32)).float() / 255
    ref = (img - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(xt, ref, atol=1e-6) and yt.tolist() == raw["labels"][:4]
    # the folder itself given as name (path detection), and as root
    d2 = build_search_data(DataConfig(name=str(folder), batch_size=4), seed=0)
    d3 = build_search_data(DataConfig(name="cifar10", root=str(folder), batch_size=4), seed=0)
    assert _same_batches(d.train, d2.train, 1) and _same_batches(d.train, d3.train, 1)
    small = build_search_data(DataConfig(name="cifar10", root=str(folder), batch_size=4, image_size=16), seed=0)
    assert next(iter(small.valid))[0].shape == (4, 3, 16, 16)


def test_cifar100_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 20), ("test", 6)):
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist(),
                 b"coarse_labels": rng.integers(0, 20, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)  # Python 3 protocol 2 stores bytes via _codecs.encode
    d = build_search_data(DataConfig(name=str(tmp_path), batch_size=5), seed=0)
    assert d.num_classes == 100 and d.train.num_samples == 10 and d.test.num_samples == 6


def test_malicious_cifar_pickle_rejected(tmp_path):
    folder = tmp_path / "c10"
    _write_cifar10(folder)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": _Evil(marker), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        build_search_data(DataConfig(name="cifar10", root=str(folder)), seed=0)
    assert not marker.exists()


def test_cifar_missing_files(tmp_path):
    folder = tmp_path / "c10"
    _write_cifar10(folder)
    os.remove(folder / "data_batch_4")
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        build_search_data(DataConfig(name="cifar10", root=str(folder)), seed=0)


# ----------------------------------------------------------------------------------------------- ImageFolder


def _write_imagefolder(root, classes=("cat", "dog", "emu"), per_class=5, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(18, 30)), int(rng.integers(18, 30))
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(arr).convert("L") if i == 0 else Image.fromarray(arr)  # one grayscale image
            img.save(os.path.join(root, c, f"{i}.png"))


def test_imagefolder_flat(tmp_path):
    _write_imagefolder(tmp_path / "imgs")
    cfg = DataConfig(name=str(tmp_path / "imgs"), batch_size=4, image_size=16, cutout=4)
    d = build_search_data(cfg, seed=0)
    assert (d.num_classes, d.in_channels, d.image_size) == (3, 3, 16)
    assert d.classes == ("cat", "dog", "emu")
    assert d.test.num_samples == 3 and d.train.num_samples == 6 and d.valid.num_samples == 6
    assert sorted(d.test.labels.tolist()) == [0, 1, 2]
    x, y = next(iter(d.train))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = build_search_data(cfg, seed=0)
    assert _same_batches(d.train, again.train, 2) and _same_batches(d.test, again.test, 0)
    assert torch.equal(d.valid.random_batch(1, 4)[0], again.valid.random_batch(1, 4)[0])
    assert len(list(d.valid.random_batches(0, count=2))) == 2
    d.train.set_epoch(0)
    first = next(iter(d.train))[0]
    d.train.set_epoch(1)
    assert not torch.equal(next(iter(d.train))[0], first)


def test_imagefolder_workers_match_serial(tmp_path):
    _write_imagefolder(tmp_path / "imgs")
    serial = build_search_data(DataConfig(name=str(tmp_path / "imgs"), batch_size=3, image_size=16), seed=1)
    workers = build_search_data(DataConfig(name=str(tmp_path / "imgs"), batch_size=3, image_size=16, num_workers=2),
                                seed=1)
    assert _same_batches(serial.train, workers.train, 0)


def test_imagefolder_train_val_layout(tmp_path):
    _write_imagefolder(tmp_path / "train", per_class=4)
    _write_imagefolder(tmp_path / "val", per_class=2, seed=1)
    d = build_search_data(DataConfig(name="imagefolder", root=str(tmp_path), batch_size=2, image_size=12), seed=0)
    assert d.test.num_samples == 6 and d.train.num_samples + d.valid.num_samples == 12
    assert next(iter(d.test))[0].shape == (2, 3, 12, 12)


def test_imagefolder_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        build_search_data(DataConfig(name=str(tmp_path / "empty")), seed=0)
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        build_search_data(DataConfig(name=str(tmp_path / "empty")), seed=0)


# ----------------------------------------------------------------------------------------------- errors


def test_missing_path_and_unknown_name(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="nope"):
        build_search_data(DataConfig(name=missing), seed=0)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 folder .*nope.*data_batch_1..5"):
        build_search_data(DataConfig(name="cifar10", root=missing), seed=0)
    with pytest.raises(FileNotFoundError, match="CIFAR-100 folder"):
        build_search_data(DataConfig(name="cifar100", root=missing), seed=0)
    with pytest.raises(ValueError, match="digits, cifar10, cifar100"):
        build_search_data(DataConfig(name="mnist"), seed=0)
    with pytest.raises(ValueError, match="root"):
        build_search_data(DataConfig(name="cifar10"), seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
