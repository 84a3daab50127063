"""The weight / architecture / test splits and their subsets, as :class:`EpochLoader` objects.

* digits: the remaining 80 % after the fixed test split are split per class (stratified) with the
  *run* seed into ``train_portion`` for the weights and the rest for the architecture.
* CIFAR: the 50k training images are split by index, the first ``floor(train_portion * 50000)`` for
  the weights and the rest for the architecture (as quark0/darts ``train_search.py``).
* ImageFolder: the images outside the test split are split per class (stratified) with the run seed.

``subset`` / ``arch_subset`` are fractions of *all* non-test training images of each class (so
``subset=0.1, arch_subset=0.025`` reproduces the PC-DARTS ImageNet sampling), drawn with the run
seed from inside the weight / architecture split respectively; they may not exceed the split's own
fraction (``train_portion`` / ``1 - train_portion``).
"""

from __future__ import annotations

import math

import torch

from fastdarts.data.config import DataConfig, SearchData, _Loaded, resolve_num_workers
from fastdarts.data.loader import EpochLoader
from fastdarts.data.sampling import (
    _STREAM_TEST,
    _STREAM_TRAIN,
    _STREAM_VALID,
    _TAG_SPLIT,
    _TAG_SUBSET,
    _class_counts,
    _generator,
    _stratified_pick,
)
from fastdarts.data.sources import _load


def _loader(source, indices, cfg: DataConfig, seed: int, stream: int, train: bool, *, num_workers: int,
            device: torch.device | str | None, channels_last: bool) -> EpochLoader:
    if cfg.batch_size is None:
        raise ValueError("DataConfig.batch_size is None: set it, or resolve the search config first "
                         "(fastdarts.config.resolve_search_config takes the method's default)")
    # Every split keeps its last partial batch, as the DataLoaders of quark0/darts train_search.py and
    # train.py do (drop_last=False): dropping it loses a step per epoch (1 of 12 on the digits demo).
    return EpochLoader(source, indices, batch_size=cfg.batch_size, seed=seed, stream=stream, shuffle=train,
                       augment=train and cfg.augment, drop_last=False,
                       num_workers=num_workers, device=device, channels_last=channels_last)


def _io_options(ds: _Loaded, cfg: DataConfig, device: torch.device | str | None, channels_last: bool) -> dict:
    return dict(num_workers=resolve_num_workers(cfg.num_workers, ds.kind), device=device,
                channels_last=bool(channels_last))


def build_search_data(cfg: DataConfig, seed: int, *, single_level: bool = False,
                      subsets_file: str | None = None, device: torch.device | str | None = None,
                      channels_last: bool = False) -> SearchData:
    """Weight split (``train``), architecture split (``valid``) and the held-out ``test`` split.

    ``single_level=True`` (DropNAS, GAEA ERM): ``train`` and ``valid`` both draw from all non-test
    training images (with independent shuffles); ``train_portion`` is ignored.
    ``subsets_file`` (ImageFolder only; the search passes ``RUN_DIR/subsets.json``): when it exists, the
    two splits are its file lists (:mod:`fastdarts.subsets`), else the drawn ones, returned in
    ``SearchData.subsets`` for the caller to save.
    ``device`` (default CPU): where the loaders put their batches (an ImageFolder's are normalised
    there; on CUDA its workers hand over page-locked uint8 batches); ``channels_last``: images in that
    memory format. The loaders'
    ``num_workers`` is ``cfg.num_workers`` resolved (:func:`fastdarts.data.config.resolve_num_workers`);
    ``SearchData.close()`` stops their workers.
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
    io = _io_options(ds, cfg, device, channels_last)
    record, reused = None, False
    if subsets_file is not None and ds.root is not None:
        from fastdarts.subsets import folder_subsets

        settings = dict(seed=seed, train_portion=portion, subset=float(cfg.subset), single_level=bool(single_level),
                        arch_subset=None if cfg.arch_subset is None else float(cfg.arch_subset))
        w_pool, a_pool, record, reused = folder_subsets(subsets_file, ds.root, ds.train.dataset.paths, ds.classes,
                                                        w_pool, a_pool, settings)
    return SearchData(
        train=_loader(ds.train, w_pool, cfg, seed, _STREAM_TRAIN, True, **io),
        valid=_loader(ds.train, a_pool, cfg, seed, _STREAM_VALID, True, **io),
        test=_loader(ds.test, torch.arange(len(ds.test)), cfg, seed, _STREAM_TEST, False, **io),
        num_classes=ds.num_classes, in_channels=3, image_size=ds.image_size, classes=ds.classes,
        subsets=record, subsets_reused=reused,
    )


def build_train_data(cfg: DataConfig, seed: int, *, device: torch.device | str | None = None,
                     channels_last: bool = False) -> SearchData:
    """For retraining a derived network: ``train`` = all non-test training images (augmented,
    shuffled; ``train_portion``/``subset``/``arch_subset`` are ignored), ``valid`` = ``test`` = the
    held-out split (same loader object). ``device``, ``channels_last``: as for :func:`build_search_data`."""
    ds = _load(cfg)
    seed = int(seed)
    io = _io_options(ds, cfg, device, channels_last)
    test = _loader(ds.test, torch.arange(len(ds.test)), cfg, seed, _STREAM_TEST, False, **io)
    return SearchData(
        train=_loader(ds.train, torch.arange(len(ds.train)), cfg, seed, _STREAM_TRAIN, True, **io),
        valid=test, test=test, num_classes=ds.num_classes, in_channels=3, image_size=ds.image_size,
        classes=ds.classes,
    )
