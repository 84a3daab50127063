"""Datasets and deterministic epoch loaders for search and retraining.

Three sources are supported, none of which downloads anything:

* ``"digits"``: scikit-learn's embedded 8x8 hand-written digits (1797 real images, 10 classes),
  scaled to [0, 1], upsampled bilinearly to ``image_size`` (default 16) and replicated to 3 channels.
* ``"cifar10"`` / ``"cifar100"``: a local folder in the standard *python* pickle batch format. The
  pickles are read with a restricted unpickler that only rebuilds numpy arrays.
* an ImageFolder directory (one sub-directory per class, optionally under ``train/`` and ``val/``),
  decoded lazily with PIL inside a :class:`torch.utils.data.Dataset`.

Determinism. Every random choice a loader makes (shuffle order, crop offsets, flips, cutout, the
random architecture batches) comes from a :class:`torch.Generator` (or, inside ImageFolder workers,
a :class:`random.Random`) seeded from ``(seed, stream, epoch, batch or step index)``. An epoch's
batches therefore depend only on the run seed and the epoch number, so a search resumed from a
checkpoint at an epoch boundary sees bit-identical data without saving any loader state; batch
``i`` of an epoch can be regenerated alone (``EpochLoader.iterate(epoch, start=i)``), so a mid-epoch
resume is exact as well.

Splits.

* digits: the test split is a stratified 20 % chosen with the fixed seed :data:`SPLIT_SEED` (the
  same 359 images for every run); the remaining 80 % are split per class (stratified) with the *run*
  seed into ``train_portion`` for the weights and the rest for the architecture.
* CIFAR: ``test_batch`` / ``test`` is the test split; the 50k training images are split by index,
  the first ``floor(train_portion * 50000)`` for the weights and the rest for the architecture
  (as quark0/darts ``train_search.py``).
* ImageFolder: ``val/`` is the test split when present, otherwise a stratified 10 % held out with
  :data:`SPLIT_SEED`; the rest is split per class (stratified) with the run seed.

``subset`` / ``arch_subset`` are fractions of *all* non-test training images of each class (so
``subset=0.1, arch_subset=0.025`` reproduces the PC-DARTS ImageNet sampling), drawn with the run
seed from inside the weight / architecture split respectively; they may not exceed the split's own
fraction (``train_portion`` / ``1 - train_portion``).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import random
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DataConfig",
    "SearchData",
    "EpochLoader",
    "build_search_data",
    "build_train_data",
    "load_cifar_batch",
    "DATASET_NAMES",
    "SPLIT_SEED",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder")
# Seed of the fixed held-out splits (digits test 20 %, ImageFolder 10 % when there is no val/).
SPLIT_SEED = 20240607

CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)  # quark0/darts utils.py
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Stream ids (which loader) and purpose tags (which random decision); mixed into every seed.
_STREAM_TRAIN, _STREAM_VALID, _STREAM_TEST = 1, 2, 3
_TAG_SHUFFLE, _TAG_AUGMENT, _TAG_RANDOM, _TAG_RANDOM_AUG, _TAG_SPLIT, _TAG_SUBSET = 11, 12, 13, 14, 15, 16

_DEFAULT_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "imagefolder": 64}


# ----------------------------------------------------------------------------------------------
# configuration and result types
# ----------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """What to load and how to batch it (see the module docstring for the split rules)."""

    name: str = "digits"  # "digits", "cifar10", "cifar100", "imagefolder" or a path to a directory
    root: str | None = None  # CIFAR python folder (or its parent) / ImageFolder root
    batch_size: int | None = 64  # None: the search method's default (fastdarts.config.resolve_search_config)
    train_portion: float = 0.5  # fraction of non-test training images for the weights
    image_size: int | None = None  # digits 16, CIFAR 32, ImageFolder 64 when None
    augment: bool = True  # random crop (pad = size // 8) + h-flip (not digits); ImageFolder: RRC + flip
    cutout: int = 0  # cutout length in pixels (0 = off); training/architecture batches only
    subset: float = 1.0  # per-class fraction of all training images kept for the weight split
    arch_subset: float | None = None  # per-class fraction for the architecture split; None = all of it
    num_workers: int = 0  # DataLoader workers (ImageFolder only; in-memory sets batch in-process)
    skip_corrupt: bool = False  # ImageFolder: drop unreadable images from their batch (logged) instead of stopping

    def __post_init__(self):
        if isinstance(self.name, os.PathLike):
            self.name = os.fspath(self.name)
        if isinstance(self.root, os.PathLike):
            self.root = os.fspath(self.root)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataConfig.name must be a non-empty string, got {self.name!r}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"DataConfig.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < float(self.train_portion) <= 1.0:
            raise ValueError(f"DataConfig.train_portion must be in (0, 1], got {self.train_portion}")
        if self.image_size is not None and int(self.image_size) < 1:
            raise ValueError(f"DataConfig.image_size must be >= 1 or None, got {self.image_size}")
        if int(self.cutout) < 0:
            raise ValueError(f"DataConfig.cutout must be >= 0, got {self.cutout}")
        if not 0.0 < float(self.subset) <= 1.0:
            raise ValueError(f"DataConfig.subset must be in (0, 1], got {self.subset}")
        if self.arch_subset is not None and not 0.0 < float(self.arch_subset) <= 1.0:
            raise ValueError(f"DataConfig.arch_subset must be in (0, 1] or None, got {self.arch_subset}")
        if int(self.num_workers) < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class SearchData:
    train: EpochLoader  # weight split
    valid: EpochLoader  # architecture split (build_train_data: the held-out split)
    test: EpochLoader  # held-out split
    num_classes: int
    in_channels: int  # always 3
    image_size: int
    classes: tuple[str, ...] = ()  # class names where the dataset has them
    # ImageFolder searches: the weight/architecture file lists (fastdarts.subsets record) and whether they
    # were read from an existing subsets file (else the caller saves them in the run directory).
    subsets: dict | None = None
    subsets_reused: bool = False


# ----------------------------------------------------------------------------------------------
# seeding helpers
# ----------------------------------------------------------------------------------------------


def _mix(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy SeedSequence hashing; platform independent)."""
    ss = np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys])
    return int(ss.generate_state(1, np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_mix(*keys))
    return g


# ----------------------------------------------------------------------------------------------
# batch sources
# ----------------------------------------------------------------------------------------------


class _TensorSource:
    """An in-memory dataset: ``images`` uint8 (0..255) or float (0..1) of shape [N, C, H, W].

    Batches are assembled, augmented and normalised on the batch tensor in the calling process.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, mean, std, image_size: int,
                 flip: bool, cutout: int, channels: int = 3):
        assert images.dim() == 4 and images.shape[0] == labels.shape[0]
        self.images = images
        self.labels = labels.to(torch.long)
        self.image_size = int(image_size)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.channels = int(channels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def fetch(self, idx: torch.Tensor, aug_seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images.index_select(0, idx)
        x = x.to(torch.float32).div_(255.0) if x.dtype == torch.uint8 else x.to(torch.float32)
        S = self.image_size
        if x.shape[-2:] != (S, S):
            down = x.shape[-1] > S or x.shape[-2] > S
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=down)
        g = None if aug_seed is None else _seeded(aug_seed)
        if g is not None:
            x = _random_crop(x, S // 8, g)
            if self.flip:
                flip = torch.rand(x.shape[0], generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        x = (x - self._mean_t) / self._std_t
        if g is not None and self.cutout > 0:
            x = _cutout_batch(x, self.cutout, g)
        return x.contiguous(), self.labels.index_select(0, idx)

    def iterate(self, specs: Iterator[tuple[torch.Tensor, int | None]], num_workers: int = 0):
        for idx, aug_seed in specs:
            yield self.fetch(idx, aug_seed)


def _seeded(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of size (H, W) from the zero-padded batch (torchvision RandomCrop)."""
    if pad <= 0:
        return x
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    rows = (oy.view(B, 1) + torch.arange(H).view(1, H)).view(B, 1, H, 1).expand(B, C, H, W + 2 * pad)
    cols = (ox.view(B, 1) + torch.arange(W).view(1, W)).view(B, 1, 1, W).expand(B, C, H, W)
    return xp.gather(2, rows).gather(3, cols)


def _cutout_batch(x: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """quark0 ``Cutout``: zero a length x length square (clipped at the border) centred uniformly."""
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=g).view(B, 1)
    cx = torch.randint(0, W, (B,), generator=g).view(B, 1)
    half = length // 2
    ar_h = torch.arange(H).view(1, H)
    ar_w = torch.arange(W).view(1, W)
    in_rows = (ar_h >= cy - half) & (ar_h < cy + half)  # [B, H]
    in_cols = (ar_w >= cx - half) & (ar_w < cx + half)  # [B, W]
    keep = ~(in_rows.view(B, 1, H, 1) & in_cols.view(B, 1, 1, W))
    return x * keep.to(x.dtype)


class _FolderDataset(torch.utils.data.Dataset):
    """Lazy PIL dataset; items are addressed as ``(index, sample_seed)``.

    ``sample_seed=None`` applies the evaluation transform (resize shorter side to ``size / 0.875``,
    centre crop); an integer seeds a :class:`random.Random` for the training transform
    (RandomResizedCrop(scale 0.08..1, ratio 3/4..4/3) + flip, then cutout after normalisation), so
    the result does not depend on which worker process decodes it.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], *, image_size: int, mean, std,
                 flip: bool, cutout: int):
        self.paths = list(paths)
        self.labels = [int(v) for v in labels]
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.flip = bool(flip)
        self.cutout = int(cutout)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        idx, seed = key if isinstance(key, tuple) else (key, None)
        from PIL import Image

        path = self.paths[idx]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises several types; the main process decides (_FolderSource._checked)
            return _Unreadable(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": "))
        S = self.image_size
        rng = None if seed is None else random.Random(seed)
        if rng is None:
            img = _resize_center_crop(img, S)
        else:
            i, j, h, w = _rrc_params(img.height, img.width, rng)
            img = img.resize((S, S), Image.BILINEAR, box=(j, i, j + w, i + h))
            if self.flip and rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div_(255.0)
        x = (x - self.mean) / self.std
        if rng is not None and self.cutout > 0:
            cy, cx, half = rng.randrange(S), rng.randrange(S), self.cutout // 2
            x[:, max(0, cy - half):min(S, cy + half), max(0, cx - half):min(S, cx + half)] = 0.0
        return x, self.labels[idx]


def _resize_center_crop(img, size: int):
    from PIL import Image

    resize = max(size, int(round(size / 0.875)))
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(resize, int(round(resize * h / w)))
    else:
        nw, nh = max(resize, int(round(resize * w / h))), resize
    img = img.resize((nw, nh), Image.BILINEAR)
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _rrc_params(H: int, W: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop.get_params`` with a :class:`random.Random`."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return rng.randint(0, H - h), rng.randint(0, W - w), h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        w, h = W, H
    h, w = min(h, H), min(w, W)
    return (H - h) // 2, (W - w) // 2, h, w


class _SpecBatchSampler:
    """Turns ``(indices, aug_seed)`` batch specs into lists of ``(index, sample_seed)`` keys."""

    def __init__(self, specs, n_batches: int | None):
        self.specs = specs
        self.n_batches = n_batches

    def __iter__(self):
        for idx, aug_seed in self.specs:
            yield _sample_keys(idx, aug_seed)

    def __len__(self):
        if self.n_batches is None:
            raise TypeError("infinite batch sampler has no length")
        return self.n_batches


def _sample_keys(idx: torch.Tensor, aug_seed: int | None) -> list:
    if aug_seed is None:
        return [(int(i), None) for i in idx.tolist()]
    rng = random.Random(aug_seed)
    return [(int(i), rng.getrandbits(63)) for i in idx.tolist()]


class CorruptImageError(ValueError):
    """An image file PIL cannot decode (the message names it); ``data.skip_corrupt=true`` skips such files."""


class _Unreadable(NamedTuple):
    """What ``_FolderDataset`` returns for an image it cannot decode (picklable across workers)."""

    path: str
    reason: str


def _collate(items) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple[_Unreadable, ...]]:
    """(images, labels, unreadable items) of one batch; images/labels are None if none could be read."""
    good = [it for it in items if not isinstance(it, _Unreadable)]
    bad = tuple(it for it in items if isinstance(it, _Unreadable))
    if not good:
        return None, None, bad
    xs, ys = zip(*good, strict=True)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), bad


class _FolderSource:
    def __init__(self, dataset: _FolderDataset, skip_corrupt: bool = False):
        self.dataset = dataset
        self.skip_corrupt = bool(skip_corrupt)
        self._skipped: set[str] = set()
        self.labels = torch.tensor(dataset.labels, dtype=torch.long)
        self.image_size = dataset.image_size
        self.mean = tuple(dataset.mean.flatten().tolist())
        self.std = tuple(dataset.std.flatten().tolist())

    def __len__(self) -> int:
        return len(self.dataset)

    def _checked(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Stop at an unreadable image, or (``skip_corrupt``) drop it from its batch and log it once."""
        x, y, bad = batch
        for item in bad:
            if not self.skip_corrupt:
                raise CorruptImageError(f"cannot read image {item.path} ({item.reason}); fix or remove it, or set "
                                        "data.skip_corrupt=true to skip unreadable images")
            if item.path not in self._skipped:
                self._skipped.add(item.path)
                logging.getLogger("fastdarts").warning("skipping unreadable image %s (%s)", item.path, item.reason)
        if x is None:
            raise CorruptImageError(f"every image of a batch is unreadable (first: {bad[0].path})")
        return x, y

    def fetch(self, idx: torch.Tensor, aug_seed: int | None):
        return self._checked(_collate([self.dataset[k] for k in _sample_keys(idx, aug_seed)]))

    def iterate(self, specs, num_workers: int = 0, n_batches: int | None = None):
        if num_workers <= 0:
            for idx, aug_seed in specs:
                yield self.fetch(idx, aug_seed)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=_SpecBatchSampler(specs, n_batches), num_workers=num_workers,
            collate_fn=_collate,
        )
        for batch in loader:
            yield self._checked(batch)


# ----------------------------------------------------------------------------------------------
# the loader
# ----------------------------------------------------------------------------------------------


class EpochLoader:
    """Deterministic batches over a subset (``indices``) of a source.

    * ``set_epoch(e)`` then ``for x, y in loader`` yields epoch ``e``'s batches; the order and the
      augmentation depend only on ``(seed, stream, e)`` (call ``set_epoch`` every epoch, as with
      ``DistributedSampler``: otherwise each pass repeats the same epoch).
    * ``iterate(epoch, start)`` yields the same batches from batch ``start`` on (mid-epoch resume);
      ``batch(epoch, i)`` returns one of them.
    * ``random_batch(epoch, step)`` / ``sample(step)``: a batch of distinct random images drawn
      afresh for every step (with replacement across steps), seeded by ``(seed, stream, epoch,
      step)``; ``random_batches(epoch, start, count)`` yields a run of them (prefetched by workers
      for ImageFolder).

    Images are float32 ``[B, 3, S, S]`` normalised with the dataset mean/std; labels int64 ``[B]``.
    """

    def __init__(self, source, indices, *, batch_size: int, seed: int, stream: int, shuffle: bool,
                 augment: bool, drop_last: bool, num_workers: int = 0):
        self.source = source
        self.indices = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        # drop the last partial batch only when there is at least one full batch
        self.drop_last = bool(drop_last) and len(self.indices) >= self.batch_size
        self.num_workers = int(num_workers)
        self.epoch = 0

    # -- basic properties -------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.indices.numel())

    @property
    def labels(self) -> torch.Tensor:
        """Labels of this loader's images (in ``indices`` order)."""
        return self.source.labels.index_select(0, self.indices)

    @property
    def image_size(self) -> int:
        return self.source.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.source.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.source.std

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        return n // bs if self.drop_last else (n + bs - 1) // bs

    def __repr__(self) -> str:
        return (f"EpochLoader(samples={self.num_samples}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, epoch={self.epoch})")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    # -- epoch iteration --------------------------------------------------------------------
    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return self.indices
        perm = torch.randperm(self.num_samples, generator=_generator(self.seed, self.stream, _TAG_SHUFFLE, epoch))
        return self.indices.index_select(0, perm)

    def _aug_seed(self, tag: int, epoch: int, i: int) -> int | None:
        return _mix(self.seed, self.stream, tag, epoch, i) if self.augment else None

    def _specs(self, epoch: int, start: int = 0):
        order, bs = self._order(epoch), self.batch_size
        for i in range(max(0, int(start)), len(self)):
            yield order[i * bs:(i + 1) * bs], self._aug_seed(_TAG_AUGMENT, epoch, i)

    def iterate(self, epoch: int | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start + 1, ...`` of ``epoch`` (default: the epoch set by ``set_epoch``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        specs = self._specs(epoch, start)
        if isinstance(self.source, _FolderSource):
            return self.source.iterate(specs, self.num_workers, max(0, len(self) - max(0, int(start))))
        return self.source.iterate(specs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(self.epoch)

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of ``epoch`` exactly as iteration yields it."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches")
        idx, aug = next(self._specs(int(epoch), i))
        return self.source.fetch(idx, aug)

    # -- random batches (architecture step) -------------------------------------------------
    def _random_spec(self, epoch: int, step: int):
        n = self.num_samples
        if n == 0:
            raise ValueError("cannot draw a random batch from an empty split")
        g = _generator(self.seed, self.stream, _TAG_RANDOM, epoch, step)
        pick = torch.randperm(n, generator=g)[: self.batch_size]
        return self.indices.index_select(0, pick), self._aug_seed(_TAG_RANDOM_AUG, epoch, step)

    def random_batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(batch_size, n)`` distinct random images, determined by ``(seed, epoch, step)``."""
        return self.source.fetch(*self._random_spec(int(epoch), int(step)))

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``random_batch`` for the epoch set by ``set_epoch``."""
        return self.random_batch(self.epoch, step)

    def random_batches(self, epoch: int | None = None, start: int = 0, count: int | None = None):
        """``random_batch(epoch, start)``, ``random_batch(epoch, start + 1)``, ... (endless if ``count`` is None)."""
        epoch = self.epoch if epoch is None else int(epoch)
        steps = range(start, start + count) if count is not None else _count_from(start)
        specs = (self._random_spec(epoch, s) for s in steps)
        if isinstance(self.source, _FolderSource):
            return self.source.iterate(specs, self.num_workers, count)
        return self.source.iterate(specs)


def _count_from(start: int):
    i = start
    while True:
        yield i
        i += 1


# ----------------------------------------------------------------------------------------------
# CIFAR (python pickle format) with a restricted unpickler
# ----------------------------------------------------------------------------------------------


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` restricted to what pickle emits for ``bytes``: a str and latin-1."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(obj).__name__}, {encoding!r}) in a CIFAR batch")
    return obj.encode("latin-1", errors)


def _numpy_globals() -> dict:
    try:
        from numpy._core import multiarray as _ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as _ma
    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): _ma._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _ma._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols 0-2
    allowed[("_codecs", "encode")] = _latin1_encode
    try:  # protocol-5 pickles of arrays
        try:
            from numpy._core import numeric as _nm
        except ImportError:
            from numpy.core import numeric as _nm
        if hasattr(_nm, "_frombuffer"):
            allowed[("numpy.core.numeric", "_frombuffer")] = _nm._frombuffer
            allowed[("numpy._core.numeric", "_frombuffer")] = _nm._frombuffer
    except ImportError:
        pass
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays, dicts, lists, str/bytes and numbers, nothing else."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._allowed = _numpy_globals()

    def find_class(self, module, name):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}' from {self._path}: a CIFAR batch file may only "
                "reference numpy array reconstruction (numpy.core.multiarray._reconstruct, numpy.ndarray, "
                "numpy.dtype); this file is not a CIFAR python batch or has been tampered with"
            )
        return obj

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"refusing persistent id in {self._path}")


def load_cifar_batch(path: str) -> dict:
    """Read one CIFAR python batch with the restricted unpickler; keys are returned as ``str``."""
    with open(path, "rb") as f:
        obj = _NumpyOnlyUnpickler(f, path).load()
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is not a CIFAR batch: expected a dict, got {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values) -> tuple[str, ...]:
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values)


def _cifar_arrays(files: Sequence[str], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    datas, labels = [], []
    for path in files:
        d = load_cifar_batch(path)
        if "data" not in d or label_key not in d:
            raise ValueError(f"{path} is not a CIFAR batch: missing 'data' or '{label_key}' (has {sorted(d)})")
        data = np.asarray(d["data"])
        lab = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(lab):
            raise ValueError(f"{path}: expected uint8 data of shape [n, 3072] and n labels, got "
                             f"{data.dtype} {data.shape} and {lab.shape[0]} labels")
        datas.append(data)
        labels.append(lab)
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate(datas).reshape(-1, 3, 32, 32)))
    return images, torch.from_numpy(np.concatenate(labels))


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR100_FILES = ("train", "test")


def _has(path: str, files) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in files)


def _has_any(path: str, files) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in files)


def _find_cifar_dir(root: str, kind: str) -> str:
    files, sub = (_CIFAR10_FILES, "cifar-10-batches-py") if kind == "cifar10" else (_CIFAR100_FILES, "cifar-100-python")
    for cand in (root, os.path.join(root, sub)):
        if _has(cand, files):
            return cand
    what = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
    expect = ("data_batch_1..5 and test_batch" if kind == "cifar10" else "train, test (and meta)")
    state = "not found" if not os.path.isdir(root) else "is incomplete"
    missing = [f for f in files if not os.path.isfile(os.path.join(root, f))]
    raise FileNotFoundError(
        f"{what} folder {root} {state}: expected {expect} (python version) in {root} or {os.path.join(root, sub)}"
        + (f"; missing {', '.join(missing)}" if os.path.isdir(root) else "")
    )


# ----------------------------------------------------------------------------------------------
# dataset resolution and loading
# ----------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    kind: str
    train: object  # _TensorSource | _FolderSource: the non-test training images
    test: object
    num_classes: int
    image_size: int
    classes: tuple[str, ...]
    stratified: bool  # split train/arch per class (digits, ImageFolder) rather than by index (CIFAR)
    root: str | None = None  # ImageFolder: the folder of the training classes (train/ or the root itself)


def _normalise_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _looks_like_path(name: str) -> bool:
    return os.sep in name or (os.altsep is not None and os.altsep in name) or name.startswith((".", "~"))


def dataset_kind(cfg: DataConfig) -> str:
    """``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagefolder"``: what ``cfg`` loads (nothing is read).

    Raises:
        FileNotFoundError, NotADirectoryError, ValueError: as the loaders do for a bad name or path.
    """
    return _resolve(cfg)[0]


def _resolve(cfg: DataConfig) -> tuple[str, str | None]:
    """(kind, directory) for the configuration."""
    key = _normalise_name(cfg.name)
    root = os.path.expanduser(cfg.root) if cfg.root else None
    if key == "digits":
        return "digits", None
    if key in ("cifar10", "cifar100"):
        if root is None:
            raise ValueError(f"dataset '{cfg.name}' needs DataConfig.root: a folder holding the python version "
                             f"({'cifar-10-batches-py' if key == 'cifar10' else 'cifar-100-python'}); nothing is "
                             "downloaded")
        return key, _find_cifar_dir(root, key)
    if key == "imagefolder":
        if root is None:
            raise ValueError("dataset 'imagefolder' needs DataConfig.root: a directory with one sub-directory "
                             "per class")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"ImageFolder root {root} not found: expected a directory with one "
                                    "sub-directory per class (optionally under train/ and val/)")
        return "imagefolder", root
    path = os.path.expanduser(cfg.name)
    if os.path.isdir(path):
        # Any CIFAR batch file marks a CIFAR folder, so an incomplete one names its missing batches.
        if _has_any(path, _CIFAR10_FILES + ("batches.meta",)) or os.path.isdir(
                os.path.join(path, "cifar-10-batches-py")):
            return "cifar10", _find_cifar_dir(path, "cifar10")
        if _has_any(path, _CIFAR100_FILES + ("meta",)) or os.path.isdir(os.path.join(path, "cifar-100-python")):
            return "cifar100", _find_cifar_dir(path, "cifar100")
        return "imagefolder", path
    if os.path.exists(path):
        raise NotADirectoryError(f"dataset path {path} is a file: expected a CIFAR python folder or an "
                                 "ImageFolder directory")
    if _looks_like_path(cfg.name):
        raise FileNotFoundError(f"dataset path {path} not found: expected a CIFAR python folder (data_batch_1..5 "
                                "+ test_batch, or train + test) or an ImageFolder directory (one sub-directory per "
                                "class)")
    raise ValueError(f"unknown dataset {cfg.name!r}: valid names are {', '.join(DATASET_NAMES)}, or the path of an "
                     "existing directory (CIFAR python folder or ImageFolder)")


def _stratified_pick(labels: torch.Tensor, frac_of, g: torch.Generator, pool: torch.Tensor | None = None,
                     at_least_one: bool = False) -> torch.Tensor:
    """Per class ``c``, pick ``frac_of(c)`` random indices among ``pool`` (default: all) with label ``c``."""
    pool = torch.arange(labels.numel()) if pool is None else pool
    pool_labels = labels.index_select(0, pool)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = pool[pool_labels == c]
        k = min(int(frac_of(c)), members.numel())
        if at_least_one and k == 0 and members.numel() >= 2:
            k = 1
        if k > 0:
            chosen.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(chosen)).values


def _class_counts(labels: torch.Tensor) -> dict[int, int]:
    values, counts = torch.unique(labels, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _load_digits(cfg: DataConfig) -> _Loaded:
    from sklearn.datasets import load_digits

    d = load_digits()
    S = int(cfg.image_size or _DEFAULT_SIZE["digits"])
    x = torch.from_numpy(np.asarray(d.data, dtype=np.float32)).view(-1, 1, 8, 8) / 16.0
    if S != 8:
        x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=False, antialias=S < 8)
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    counts = _class_counts(y)
    test_idx = _stratified_pick(y, lambda c: round(0.2 * counts[c]), _generator(SPLIT_SEED, _TAG_SPLIT))
    keep = torch.ones(y.numel(), dtype=torch.bool)
    keep[test_idx] = False
    train_idx = torch.nonzero(keep).flatten()
    xtr = x.index_select(0, train_idx)
    mean, std = float(xtr.mean()), float(xtr.std())  # of the non-test images (gray, same for all channels)
    common = dict(mean=(mean,) * 3, std=(std,) * 3, image_size=S, flip=False, cutout=cfg.cutout)
    train = _TensorSource(xtr, y.index_select(0, train_idx), **common)
    test = _TensorSource(x.index_select(0, test_idx), y.index_select(0, test_idx), **common)
    return _Loaded("digits", train, test, 10, S, tuple(str(i) for i in range(10)), stratified=True)


_CIFAR_CACHE: dict = {}


def _load_cifar(cfg: DataConfig, kind: str, folder: str) -> _Loaded:
    if kind == "cifar10":
        train_files = [os.path.join(folder, f) for f in _CIFAR10_FILES[:5]]
        test_files = [os.path.join(folder, "test_batch")]
        label_key, meta, names_key = "labels", "batches.meta", "label_names"
        mean, std, num_classes = CIFAR10_MEAN, CIFAR10_STD, 10
    else:
        train_files, test_files = [os.path.join(folder, "train")], [os.path.join(folder, "test")]
        label_key, meta, names_key = "fine_labels", "meta", "fine_label_names"
        mean, std, num_classes = CIFAR100_MEAN, CIFAR100_STD, 100
    stamp = tuple((p, os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in train_files + test_files)
    cached = _CIFAR_CACHE.get(stamp)
    if cached is None:
        cached = (_cifar_arrays(train_files, label_key), _cifar_arrays(test_files, label_key))
        _CIFAR_CACHE.clear()  # keep one dataset in memory at most
        _CIFAR_CACHE[stamp] = cached
    (xtr, ytr), (xte, yte) = cached
    for part, lab in (("train", ytr), ("test", yte)):
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"{kind} {part} labels in {folder} fall outside 0..{num_classes - 1}")
    classes: tuple[str, ...] = ()
    meta_path = os.path.join(folder, meta)
    if os.path.isfile(meta_path):
        names = load_cifar_batch(meta_path).get(names_key)
        if names is not None and len(names) == num_classes:
            classes = _names(names)
    S = int(cfg.image_size or _DEFAULT_SIZE[kind])
    common = dict(mean=mean, std=std, image_size=S, flip=True, cutout=cfg.cutout)
    return _Loaded(kind, _TensorSource(xtr, ytr, **common), _TensorSource(xte, yte, **common), num_classes, S,
                   classes, stratified=False)


def _scan_class_dirs(root: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} for every non-hidden sub-directory of ``root``."""
    out = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith("."))
        out[entry.name] = files
    return out


def _has_class_dirs(path: str) -> bool:
    return os.path.isdir(path) and any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(path))


def _load_imagefolder(cfg: DataConfig, root: str) -> _Loaded:
    train_root, val_root = root, None
    if _has_class_dirs(os.path.join(root, "train")):
        train_root = os.path.join(root, "train")
        for name in ("val", "valid", "validation"):
            if _has_class_dirs(os.path.join(root, name)):
                val_root = os.path.join(root, name)
                break
    scanned = _scan_class_dirs(train_root)
    exts = ", ".join(IMG_EXTENSIONS)
    if not scanned or not any(scanned.values()):
        raise FileNotFoundError(f"ImageFolder {train_root} is empty: expected one sub-directory per class holding "
                                f"images ({exts})")
    empty = [c for c, files in scanned.items() if not files]
    if empty:
        raise FileNotFoundError(f"ImageFolder {train_root}: class folder(s) {', '.join(empty)} hold no images ({exts})")
    classes = tuple(scanned)
    class_idx = {c: i for i, c in enumerate(classes)}
    paths = [p for c in classes for p in scanned[c]]
    labels = [class_idx[c] for c in classes for _ in scanned[c]]
    S = int(cfg.image_size or _DEFAULT_SIZE["imagefolder"])
    common = dict(image_size=S, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, cutout=cfg.cutout)
    if val_root is not None:
        vscan = _scan_class_dirs(val_root)
        unknown = [c for c in vscan if c not in class_idx]
        if unknown:
            raise ValueError(f"ImageFolder {val_root}: class folder(s) {', '.join(unknown)} are not in {train_root}")
        vpaths = [p for c in vscan for p in vscan[c]]
        vlabels = [class_idx[c] for c in vscan for _ in vscan[c]]
        train = _FolderDataset(paths, labels, **common)
        test = _FolderDataset(vpaths, vlabels, **common)
    else:
        y = torch.tensor(labels, dtype=torch.long)
        counts = _class_counts(y)
        test_idx = _stratified_pick(y, lambda c: round(0.1 * counts[c]), _generator(SPLIT_SEED, _TAG_SPLIT),
                                    at_least_one=True).tolist()
        held = set(test_idx)
        train_idx = [i for i in range(len(paths)) if i not in held]
        train = _FolderDataset([paths[i] for i in train_idx], [labels[i] for i in train_idx], **common)
        test = _FolderDataset([paths[i] for i in test_idx], [labels[i] for i in test_idx], **common)
    return _Loaded("imagefolder", _FolderSource(train, cfg.skip_corrupt), _FolderSource(test, cfg.skip_corrupt),
                   len(classes), S, classes, stratified=True, root=train_root)


def _load(cfg: DataConfig) -> _Loaded:
    kind, folder = _resolve(cfg)
    if kind == "digits":
        return _load_digits(cfg)
    if kind in ("cifar10", "cifar100"):
        return _load_cifar(cfg, kind, folder)
    return _load_imagefolder(cfg, folder)


# ----------------------------------------------------------------------------------------------
# public builders
# ----------------------------------------------------------------------------------------------


def _loader(source, indices, cfg: DataConfig, seed: int, stream: int, train: bool) -> EpochLoader:
    if cfg.batch_size is None:
        raise ValueError("DataConfig.batch_size is None: set it, or resolve the search config first "
                         "(fastdarts.config.resolve_search_config takes the method's default)")
    # Every split keeps its last partial batch, as the DataLoaders of quark0/darts train_search.py and
    # train.py do (drop_last=False): dropping it loses a step per epoch (1 of 12 on the digits demo).
    return EpochLoader(source, indices, batch_size=cfg.batch_size, seed=seed, stream=stream, shuffle=train,
                       augment=train and cfg.augment, drop_last=False, num_workers=cfg.num_workers)


def build_search_data(cfg: DataConfig, seed: int, *, single_level: bool = False,
                      subsets_file: str | None = None) -> SearchData:
    """Weight split (``train``), architecture split (``valid``) and the held-out ``test`` split.

    ``single_level=True`` (DropNAS, GAEA ERM): ``train`` and ``valid`` both draw from all non-test
    training images (with independent shuffles); ``train_portion`` is ignored.
    ``subsets_file`` (ImageFolder only; the search passes ``RUN_DIR/subsets.json``): when it exists, the
    two splits are its file lists (:mod:`fastdarts.subsets`), else the drawn ones, returned in
    ``SearchData.subsets`` for the caller to save.
    """
    ds = _load(cfg)
    labels = ds.train.labels
    n = labels.numel()
    seed = int(seed)
    portion = float(cfg.train_portion)
    if single_level:
        w_pool = a_pool = torch.arange(n)
        w_frac = a_frac = 1.0
    else:
        if ds.stratified:
            counts = _class_counts(labels)
            w_pool = _stratified_pick(labels, lambda c: round(portion * counts[c]), _generator(seed, _TAG_SPLIT))
            mask = torch.ones(n, dtype=torch.bool)
            mask[w_pool] = False
            a_pool = torch.nonzero(mask).flatten()
        else:  # quark0/darts: first floor(portion * n) by index
            split = int(math.floor(portion * n))
            w_pool, a_pool = torch.arange(split), torch.arange(split, n)
        w_frac, a_frac = portion, 1.0 - portion
        if w_pool.numel() == 0 or a_pool.numel() == 0:
            empty = "weight" if w_pool.numel() == 0 else "architecture"
            raise ValueError(f"train_portion={portion} leaves the {empty} split empty ({n} training images); "
                             "use a value strictly between 0 and 1")
    eps = 1e-9
    if cfg.subset < 1.0 and cfg.subset > w_frac + eps:
        raise ValueError(f"subset={cfg.subset} exceeds the weight split's share of the training images ({w_frac}); "
                         "subset is a fraction of all training images drawn from inside the weight split")
    if cfg.arch_subset is not None and cfg.arch_subset < 1.0 and cfg.arch_subset > a_frac + eps:
        raise ValueError(f"arch_subset={cfg.arch_subset} exceeds the architecture split's share of the training "
                         f"images ({a_frac:g}); arch_subset is drawn from inside the architecture split")
    counts = _class_counts(labels)
    if cfg.subset < 1.0:
        w_pool = _stratified_pick(labels, lambda c: round(cfg.subset * counts[c]), _generator(seed, _TAG_SUBSET, 1),
                                  pool=w_pool)
    if cfg.arch_subset is not None and cfg.arch_subset < 1.0:
        a_pool = _stratified_pick(labels, lambda c: round(cfg.arch_subset * counts[c]),
                                  _generator(seed, _TAG_SUBSET, 2), pool=a_pool)
    if w_pool.numel() == 0 or a_pool.numel() == 0:
        raise ValueError("subset/arch_subset leave a split without images; use larger fractions")
    record, reused = None, False
    if subsets_file is not None and ds.root is not None:
        from fastdarts.subsets import folder_subsets

        settings = dict(seed=seed, train_portion=portion, subset=float(cfg.subset), single_level=bool(single_level),
                        arch_subset=None if cfg.arch_subset is None else float(cfg.arch_subset))
        w_pool, a_pool, record, reused = folder_subsets(subsets_file, ds.root, ds.train.dataset.paths, ds.classes,
                                                        w_pool, a_pool, settings)
    return SearchData(
        train=_loader(ds.train, w_pool, cfg, seed, _STREAM_TRAIN, True),
        valid=_loader(ds.train, a_pool, cfg, seed, _STREAM_VALID, True),
        test=_loader(ds.test, torch.arange(len(ds.test)), cfg, seed, _STREAM_TEST, False),
        num_classes=ds.num_classes, in_channels=3, image_size=ds.image_size, classes=ds.classes,
        subsets=record, subsets_reused=reused,
    )


def build_train_data(cfg: DataConfig, seed: int) -> SearchData:
    """For retraining a derived network: ``train`` = all non-test training images (augmented,
    shuffled; ``train_portion``/``subset``/``arch_subset`` are ignored), ``valid`` = ``test`` = the
    held-out split (same loader object)."""
    ds = _load(cfg)
    seed = int(seed)
    test = _loader(ds.test, torch.arange(len(ds.test)), cfg, seed, _STREAM_TEST, False)
    return SearchData(
        train=_loader(ds.train, torch.arange(len(ds.train)), cfg, seed, _STREAM_TRAIN, True),
        valid=test, test=test, num_classes=ds.num_classes, in_channels=3, image_size=ds.image_size,
        classes=ds.classes,
    )
