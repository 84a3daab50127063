"""In-memory sources: :class:`_TensorSource` (digits and CIFAR; a batch is assembled, augmented and
normalised on the batch tensor in the calling process) and scikit-learn's embedded digits.

``"digits"``: 1797 real 8x8 hand-written digits, 10 classes, scaled to [0, 1], upsampled bilinearly
to ``image_size`` (default 16) and replicated to 3 channels. The test split is a stratified 20 %
chosen with the fixed seed :data:`SPLIT_SEED` (the same 359 images for every run).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fastdarts.data.config import _DEFAULT_SIZE, SPLIT_SEED, DataConfig, _Loaded
from fastdarts.data.sampling import _TAG_SPLIT, _class_counts, _generator, _seeded, _stratified_pick
from fastdarts.data.transforms import _cutout_batch, _random_crop


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

    def fetch(self, idx: torch.Tensor, aug_seed: int | None,
              part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``part`` of the batch ``idx``, augmented with the generator of ``aug_seed``. The generator
        runs through the whole batch, so the whole batch is augmented and ``part`` kept: each row equals
        the one the unsliced batch has."""
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
        return x[part].contiguous(), self.labels.index_select(0, idx)[part]

    def iterate(self, specs: Iterator[tuple[torch.Tensor, int | None, slice]]):
        for idx, aug_seed, part in specs:
            yield self.fetch(idx, aug_seed, part)

    @staticmethod
    def finish(raw: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of :meth:`fetch` (already normalised here) on ``device``."""
        x, y = raw
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


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
