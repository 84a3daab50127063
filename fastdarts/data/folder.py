"""ImageFolder directories (one sub-directory per class, optionally under ``train/`` and ``val/``),
decoded lazily with PIL inside a :class:`torch.utils.data.Dataset` and transformed with torchvision.

``val/`` is the test split when present, otherwise a stratified 10 % held out with
:data:`SPLIT_SEED`.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from fastdarts.data.config import _DEFAULT_SIZE, SPLIT_SEED, DataConfig, _Loaded
from fastdarts.data.loader import _FolderSource, _Unreadable
from fastdarts.data.sampling import _TAG_SPLIT, _class_counts, _generator, _stratified_pick
from fastdarts.data.transforms import IMAGENET_MEAN, IMAGENET_STD, folder_transforms

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class _FolderDataset(torch.utils.data.Dataset):
    """Lazy PIL dataset; items are addressed as ``(index, sample_seed)`` and are ``(image, label,
    cutout centre)`` with the image a uint8 ``[3, S, S]`` tensor.

    ``sample_seed=None`` applies the evaluation transform; an integer seeds torch's generator for the
    training transform (:func:`fastdarts.data.transforms.folder_transforms`) and then the cutout
    centre ``(cy, cx)`` (None without cutout), so the result does not depend on which worker process
    decodes it. Normalisation and the cutout square are applied to the batch on the device
    (:meth:`_FolderSource.finish`).
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], *, image_size: int, mean, std,
                 flip: bool, cutout: int, color_jitter: list | None = None):
        self.paths = list(paths)
        self.labels = [int(v) for v in labels]
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.flip = bool(flip)
        self.cutout = int(cutout)
        self.train_transform, self.eval_transform = folder_transforms(self.image_size, self.flip, color_jitter)

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
        if seed is None:
            return self.eval_transform(img), self.labels[idx], None
        # The global generator, forked so that an in-process loader leaves the search's draws alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.train_transform(img)
            centre = tuple(torch.randint(0, self.image_size, (2,)).tolist()) if self.cutout > 0 else None
        return x, self.labels[idx], centre


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
    common = dict(image_size=S, mean=IMAGENET_MEAN, std=IMAGENET_STD, flip=True, cutout=cfg.cutout,
                  color_jitter=cfg.color_jitter)
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
