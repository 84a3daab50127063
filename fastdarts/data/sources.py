"""Which source a :class:`DataConfig` names (a dataset name or a directory), and loading it."""

from __future__ import annotations

import os

from fastdarts.data.cifar import _CIFAR10_FILES, _CIFAR100_FILES, _find_cifar_dir, _has_any, _load_cifar
from fastdarts.data.config import DATASET_NAMES, DataConfig, _Loaded
from fastdarts.data.folder import _load_imagefolder
from fastdarts.data.memory import _load_digits


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


def _load(cfg: DataConfig) -> _Loaded:
    kind, folder = _resolve(cfg)
    if cfg.color_jitter is not None and kind != "imagefolder":
        raise ValueError(f"data.color_jitter applies to ImageFolder images (torchvision ColorJitter per image); "
                         f"{cfg.name} is {kind} data: remove it")
    if kind == "digits":
        return _load_digits(cfg)
    if kind in ("cifar10", "cifar100"):
        return _load_cifar(cfg, kind, folder)
    return _load_imagefolder(cfg, folder)
