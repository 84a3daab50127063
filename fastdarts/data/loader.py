"""The deterministic epoch loader, and the batch sampler / worker plumbing of folder sources.

Determinism. Every random choice a loader makes (shuffle order, crop offsets, flips, cutout, the
random architecture batches) comes from a :class:`torch.Generator` (for ImageFolder images, torch's
generator reseeded per image) seeded from ``(seed, stream, epoch, batch or step index)``. An epoch's
batches therefore depend only on the run seed and the epoch number, so a search resumed from a
checkpoint at an epoch boundary sees bit-identical data without saving any loader state; batch
``i`` of an epoch can be regenerated alone (``EpochLoader.iterate(epoch, start=i)``), so a mid-epoch
resume is exact as well.

Workers. An ImageFolder loader with ``num_workers > 0`` keeps one :class:`torch.utils.data.DataLoader`
with persistent workers for its whole life (:class:`_WorkerStream`): each ``iterate`` /
``random_batches`` call swaps the batch specs of its batch sampler (which runs in the main process,
so the order stays the deterministic one) and restarts it. ``close()`` ends the workers.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Iterator, NamedTuple

import torch

from fastdarts.data.sampling import _TAG_AUGMENT, _TAG_RANDOM, _TAG_RANDOM_AUG, _TAG_SHUFFLE, _generator, _mix
from fastdarts.data.transforms import cutout_keep, normalize_uint8

if TYPE_CHECKING:
    from fastdarts.data.folder import _FolderDataset

# Batches each worker keeps ready. Deep for small batches, where one slow image stalls a step; for
# large ones the buffer is bounded by memory instead: a batch of 1024 images of 224 px is 0.6 GB of
# shared memory, and 8 workers x 2 batches of it are already 10 GB.
_PREFETCH_SMALL, _PREFETCH_LARGE, _LARGE_BATCH = 4, 2, 256


class _SpecBatchSampler:
    """Turns ``(indices, aug_seed, part)`` batch specs into lists of ``(index, sample_seed)`` keys.

    ``specs`` is replaced before every ``iter()`` of the persistent DataLoader (:class:`_WorkerStream`).
    """

    def __init__(self, specs=(), n_batches: int | None = None):
        self.specs = specs
        self.n_batches = n_batches

    def __iter__(self):
        # The specs are bound now, at the DataLoader's iter()/reset, not at its first next().
        return (_sample_keys(idx, aug_seed)[part] for idx, aug_seed, part in self.specs)

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


def _collate(items):
    """(uint8 images, labels, cutout centres [B, 2] or None, unreadable items) of one batch; images,
    labels and centres are None if no image could be read."""
    good = [it for it in items if not isinstance(it, _Unreadable)]
    bad = tuple(it for it in items if isinstance(it, _Unreadable))
    if not good:
        return None, None, None, bad
    xs, ys, centres = zip(*good, strict=True)
    centres = None if centres[0] is None else torch.tensor(centres, dtype=torch.long)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), centres, bad


class _FolderSource:
    """An ImageFolder split. Its raw batches are ``(uint8 images, labels, cutout centres)``, decoded and
    transformed per image (in DataLoader workers or in-process); :meth:`finish` normalises them and cuts
    the cutout squares out where the batch is going (the GPU, on a CUDA run)."""

    def __init__(self, dataset: _FolderDataset, skip_corrupt: bool = False):
        self.dataset = dataset
        self.skip_corrupt = bool(skip_corrupt)
        self._skipped: set[str] = set()
        self.labels = torch.tensor(dataset.labels, dtype=torch.long)
        self.image_size = dataset.image_size
        self.mean = dataset.mean
        self.std = dataset.std
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _checked(self, batch):
        """Stop at an unreadable image, or (``skip_corrupt``) drop it from its batch and log it once."""
        x, y, centres, bad = batch
        for item in bad:
            if not self.skip_corrupt:
                raise CorruptImageError(f"cannot read image {item.path} ({item.reason}); fix or remove it, or set "
                                        "data.skip_corrupt=true to skip unreadable images")
            if item.path not in self._skipped:
                self._skipped.add(item.path)
                logging.getLogger("fastdarts").warning("skipping unreadable image %s (%s)", item.path, item.reason)
        if x is None:
            raise CorruptImageError(f"every image of a batch is unreadable (first: {bad[0].path})")
        return x, y, centres

    def fetch(self, idx: torch.Tensor, aug_seed: int | None, part: slice = slice(None)):
        """Raw images ``part`` of the batch ``idx``; each image's augmentation seed is the one it has in
        the whole batch, and only the images of ``part`` are decoded."""
        return self._checked(_collate([self.dataset[k] for k in _sample_keys(idx, aug_seed)[part]]))

    def iterate(self, specs):
        """The raw batches of ``specs``, decoded in this process."""
        for idx, aug_seed, part in specs:
            yield self.fetch(idx, aug_seed, part)

    def finish(self, raw, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 images and labels on ``device`` from a raw batch: the uint8 images are
        copied (asynchronously from pinned memory), then normalised and cut out there."""
        x, y, centres = raw
        if device not in self._stats:  # mean/std as [1, 3, 1, 1] tensors, copied once per device
            self._stats[device] = tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(device)
                                        for v in (self.mean, self.std))
        x = normalize_uint8(x.to(device, non_blocking=True), *self._stats[device])
        if centres is not None:
            centres = centres.to(device, non_blocking=True)
            x = x * cutout_keep(centres[:, 0], centres[:, 1], self.dataset.cutout, *x.shape[-2:])
        return x, y.to(device, non_blocking=True)


class _WorkerStream:
    """One persistent-worker DataLoader over a folder source, restarted on new batch specs.

    ``start(specs, n)`` resets the DataLoader (a persistent one hands back the same iterator object,
    drained of the batches still in flight) and returns a generator over the new batches. A
    generator of an earlier ``start`` is thereby superseded: using it again raises ``RuntimeError``
    rather than yielding the new run's batches.
    """

    def __init__(self, source: _FolderSource, num_workers: int, *, images_per_batch: int, pin_memory: bool,
                 seed: int):
        self.source = source
        self.sampler = _SpecBatchSampler()
        self.loader = torch.utils.data.DataLoader(
            source.dataset, batch_sampler=self.sampler, num_workers=num_workers, collate_fn=_collate,
            pin_memory=pin_memory, persistent_workers=True,
            prefetch_factor=_PREFETCH_SMALL if images_per_batch <= _LARGE_BATCH else _PREFETCH_LARGE,
            # The workers' base seed comes from this generator, not from the global RNG the search
            # samples with (workers=0 draws nothing); the transforms are seeded per image and ignore it.
            generator=torch.Generator().manual_seed(seed),
        )
        self.generation = 0

    def start(self, specs, n_batches: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.specs, self.sampler.n_batches = specs, n_batches
        self.generation += 1
        return self._batches(iter(self.loader), self.generation)

    def _batches(self, it, generation: int):
        while True:
            if generation != self.generation:
                raise RuntimeError("this batch iterator was superseded by a later iterate()/random_batches() "
                                   "call, or close(), on the same loader (one live iterator per loader with workers)")
            try:
                batch = next(it)
            except StopIteration:
                return
            yield self.source._checked(batch)

    def close(self) -> None:
        """Stop the worker processes (the DataLoader would only do so when garbage-collected)."""
        it, self.loader._iterator = self.loader._iterator, None
        if it is not None:
            it._shutdown_workers()
        self.generation += 1


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

    ImageFolder with ``num_workers > 0``: the loader's worker processes start at its first
    ``iterate`` / ``random_batches`` and persist; each such call restarts them on its batches, and the
    iterator of the previous call must not be used after it (it raises). ``close()`` stops the workers.

    Batches come on ``device`` (default CPU): images float32 ``[B, 3, S, S]`` normalised with the
    dataset mean/std (``channels_last``: in that memory format), labels int64 ``[B]``. ImageFolder
    batches travel as uint8 and are normalised on ``device``; on CUDA the workers hand them over in
    page-locked memory and the copy is asynchronous.

    ``shard(rank, num_shards)`` (a multi-process search) makes every batch, epoch and random ones
    alike, the ``rank``-th contiguous slice of the batch a single process gets (slice sizes differ by
    at most one, the first ranks taking the larger); ``len`` and the batch indices stay those of the
    global batches. Each image is augmented exactly as in the single-process batch: an ImageFolder
    derives the per-image seeds of the whole batch and decodes only the slice; in-memory sources
    augment the whole batch (one generator runs through it) and keep the slice.
    """

    def __init__(self, source, indices, *, batch_size: int, seed: int, stream: int, shuffle: bool,
                 augment: bool, drop_last: bool, num_workers: int = 0, device: torch.device | str | None = None,
                 channels_last: bool = False):
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
        self.device = torch.device("cpu" if device is None else device)
        self.channels_last = bool(channels_last)
        self.epoch = 0
        self.rank, self.num_shards = 0, 1
        self._stream: _WorkerStream | None = None

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

    # -- sharding (multi-process search) ----------------------------------------------------
    @property
    def smallest_batch(self) -> int:
        """Images in the smallest batch this loader yields (the last epoch batch, or a random batch)."""
        n, bs = self.num_samples, self.batch_size
        last = n % bs
        return last if last and not self.drop_last else min(bs, n)

    def shard(self, rank: int, num_shards: int) -> None:
        """Yield only slice ``rank`` of ``num_shards`` of every batch from now on (see the class docstring).

        Raises:
            ValueError: a batch would leave some rank without images.
        """
        rank, num_shards = int(rank), int(num_shards)
        if not 0 <= rank < num_shards:
            raise ValueError(f"shard rank {rank} is not in [0, {num_shards})")
        if self.smallest_batch < num_shards:
            raise ValueError(f"a batch of this split ({self.num_samples} images, batch_size {self.batch_size}) has "
                             f"only {self.smallest_batch} image(s), fewer than the {num_shards} ranks; change "
                             "data.batch_size or the split's size (data.subset, data.train_portion)")
        self.rank, self.num_shards = rank, num_shards

    def _part(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` images (``torch.tensor_split`` sizes)."""
        if self.num_shards == 1:
            return slice(None)
        q, r = divmod(n, self.num_shards)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (self.rank < r))

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
            idx = order[i * bs:(i + 1) * bs]
            yield idx, self._aug_seed(_TAG_AUGMENT, epoch, i), self._part(idx.numel())

    def iterate(self, epoch: int | None = None, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start + 1, ...`` of ``epoch`` (default: the epoch set by ``set_epoch``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        return self._run(self._specs(epoch, start), max(0, len(self) - max(0, int(start))))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(self.epoch)

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of ``epoch`` exactly as iteration yields it."""
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range for {len(self)} batches")
        return self._finish(self.source.fetch(*next(self._specs(int(epoch), i))))

    # -- random batches (architecture step) -------------------------------------------------
    def _random_spec(self, epoch: int, step: int):
        n = self.num_samples
        if n == 0:
            raise ValueError("cannot draw a random batch from an empty split")
        g = _generator(self.seed, self.stream, _TAG_RANDOM, epoch, step)
        pick = torch.randperm(n, generator=g)[: self.batch_size]
        return (self.indices.index_select(0, pick), self._aug_seed(_TAG_RANDOM_AUG, epoch, step),
                self._part(pick.numel()))

    def random_batch(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``min(batch_size, n)`` distinct random images, determined by ``(seed, epoch, step)``."""
        return self._finish(self.source.fetch(*self._random_spec(int(epoch), int(step))))

    def sample(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``random_batch`` for the epoch set by ``set_epoch``."""
        return self.random_batch(self.epoch, step)

    def random_batches(self, epoch: int | None = None, start: int = 0, count: int | None = None):
        """``random_batch(epoch, start)``, ``random_batch(epoch, start + 1)``, ... (endless if ``count`` is None)."""
        epoch = self.epoch if epoch is None else int(epoch)
        steps = range(start, start + count) if count is not None else _count_from(start)
        return self._run((self._random_spec(epoch, s) for s in steps), count)

    # -- workers and the device ------------------------------------------------------------------
    def _finish(self, raw) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.source.finish(raw, self.device)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def _run(self, specs, n_batches: int | None):
        """The batches of ``specs``: through the persistent workers of a folder source, else in-process."""
        if not (self.num_workers > 0 and isinstance(self.source, _FolderSource)):
            raw = self.source.iterate(specs)
        else:
            if self._stream is None:
                self._stream = _WorkerStream(self.source, self.num_workers, seed=self.seed,
                                             pin_memory=self.device.type == "cuda",
                                             images_per_batch=-(-self.batch_size // self.num_shards))
            raw = self._stream.start(specs, n_batches)
        return map(self._finish, raw)

    def close(self) -> None:
        """Stop this loader's worker processes, if it has any (a later iteration starts new ones)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _count_from(start: int):
    i = start
    while True:
        yield i
        i += 1
