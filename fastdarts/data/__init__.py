"""Datasets and deterministic epoch loaders for search and retraining.

Three sources are supported, none of which downloads anything:

* ``"digits"``: scikit-learn's embedded 8x8 hand-written digits (1797 real images, 10 classes),
  scaled to [0, 1], upsampled bilinearly to ``image_size`` (default 16) and replicated to 3 channels.
* ``"cifar10"`` / ``"cifar100"``: a local folder in the standard *python* pickle batch format. The
  pickles are read with a restricted unpickler that only rebuilds numpy arrays.
* an ImageFolder directory (one sub-directory per class, optionally under ``train/`` and ``val/``),
  decoded lazily with PIL and augmented with torchvision inside a :class:`torch.utils.data.Dataset`.

The files follow the path of a batch:

* ``config.py``: :class:`DataConfig` (what to load) and :class:`SearchData` (what the builders return);
* ``sources.py`` resolves the name to a source: ``memory.py`` (the in-memory tensor source, digits),
  ``cifar.py`` (CIFAR and its restricted unpickler), ``folder.py`` (ImageFolder, PIL decoding);
* ``splits.py``: the weight / architecture / test splits and subsets (:func:`build_search_data`,
  :func:`build_train_data`), drawn with ``sampling.py`` (seeds, stratified picks);
* ``loader.py``: :class:`EpochLoader`, whose batch order and augmentation depend only on
  ``(seed, stream, epoch, index)``, and the DataLoader worker plumbing of folder sources;
* ``transforms.py``: crop, flip and cutout of in-memory batches, the torchvision ``transforms.v2``
  pipelines of folder images, their normalisation on the device, and the normalisation constants.
"""

from fastdarts.data.cifar import load_cifar_batch
from fastdarts.data.config import DATASET_NAMES, SPLIT_SEED, DataConfig, SearchData
from fastdarts.data.folder import IMG_EXTENSIONS
from fastdarts.data.loader import CorruptImageError, EpochLoader
from fastdarts.data.sources import dataset_kind
from fastdarts.data.splits import build_search_data, build_train_data
from fastdarts.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)

__all__ = [
    "DataConfig",
    "SearchData",
    "EpochLoader",
    "CorruptImageError",
    "build_search_data",
    "build_train_data",
    "dataset_kind",
    "load_cifar_batch",
    "DATASET_NAMES",
    "SPLIT_SEED",
    "IMG_EXTENSIONS",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
