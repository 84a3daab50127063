"""CIFAR-10/100 from a local folder in the standard *python* pickle batch format (nothing is
downloaded), read with a restricted unpickler that only rebuilds numpy arrays.

``test_batch`` / ``test`` is the test split; the training images are held in memory as uint8
(:class:`_TensorSource`), one dataset cached at a time.
"""

from __future__ import annotations

import os
import pickle
from typing import Sequence

import numpy as np
import torch

from fastdarts.data.config import _DEFAULT_SIZE, DataConfig, _Loaded
from fastdarts.data.memory import _TensorSource
from fastdarts.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD


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
