"""What to load (:class:`DataConfig`), what the builders return (:class:`SearchData`, and the
sources' :class:`_Loaded`), and the dataset names and default sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastdarts.data.loader import EpochLoader

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagefolder")
# Seed of the fixed held-out splits (digits test 20 %, ImageFolder 10 % when there is no val/).
SPLIT_SEED = 20240607

_DEFAULT_SIZE = {"digits": 16, "cifar10": 32, "cifar100": 32, "imagefolder": 64}


@dataclass
class DataConfig:
    """What to load and how to batch it (the split rules: :mod:`fastdarts.data.splits`)."""

    name: str = "digits"  # "digits", "cifar10", "cifar100", "imagefolder" or a path to a directory
    root: str | None = None  # CIFAR python folder (or its parent) / ImageFolder root
    batch_size: int | None = 64  # None: the search method's default (fastdarts.config.resolve_search_config)
    train_portion: float = 0.5  # fraction of non-test training images for the weights
    image_size: int | None = None  # digits 16, CIFAR 32, ImageFolder 64 when None
    augment: bool = True  # random crop (pad = size // 8) + h-flip (not digits); ImageFolder: RRC + flip
    cutout: int = 0  # cutout length in pixels (0 = off); training/architecture batches only
    subset: float = 1.0  # per-class fraction of all training images kept for the weight split
    arch_subset: float | None = None  # per-class fraction for the architecture split; None = all of it
    # DataLoader worker processes (ImageFolder only; in-memory sets batch in-process and ignore it).
    # None: min(8, CPU count) for an ImageFolder (resolve_num_workers); the count never changes the batches.
    num_workers: int | None = None
    skip_corrupt: bool = False  # ImageFolder: drop unreadable images from their batch (logged) instead of stopping
    # ImageFolder training images: torchvision ColorJitter(brightness, contrast, saturation, hue) after the flip
    # (quark0 train_imagenet.py: [0.4, 0.4, 0.4, 0.2]); None: off.
    color_jitter: list | None = None

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
        if self.color_jitter is not None:
            jitter = list(self.color_jitter)
            if (len(jitter) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in jitter)
                    or min(jitter) < 0 or jitter[3] > 0.5):
                raise ValueError("DataConfig.color_jitter must be [brightness, contrast, saturation, hue], each >= 0 "
                                 f"and hue <= 0.5, or None; got {self.color_jitter!r}")
            self.color_jitter = [float(v) for v in jitter]
        if self.num_workers is not None:
            if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int):
                raise TypeError(f"DataConfig.num_workers must be an integer >= 0 or None, got "
                                f"{type(self.num_workers).__name__} {self.num_workers!r}")
            if self.num_workers < 0:
                raise ValueError(f"DataConfig.num_workers must be an integer >= 0 or None, got {self.num_workers}")


def resolve_num_workers(num_workers: int | None, kind: str) -> int:
    """The DataLoader workers a source of ``kind`` gets: ``num_workers`` if set for an ImageFolder,
    ``min(8, os.cpu_count())`` if None there, and 0 for the in-memory sources (digits, CIFAR), which
    batch in this process whatever is set."""
    if kind != "imagefolder":
        return 0
    if num_workers is None:
        return min(8, os.cpu_count() or 1)
    return int(num_workers)


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

    def close(self) -> None:
        """Stop the DataLoader workers of every split (ImageFolder with workers; else nothing to do)."""
        for loader in (self.train, self.valid, self.test):
            loader.close()


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
