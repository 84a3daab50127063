"""Multi-process search (``torchrun --nproc_per_node=N -m fastdarts search ...``): the process group,
rank queries, gradient averaging and broadcasting from rank 0.

A search runs data-parallel when the ``torchrun`` environment says ``WORLD_SIZE > 1``: every rank
holds the whole supernet, takes its contiguous slice of each global batch
(:meth:`fastdarts.data.EpochLoader.shard`) and averages every gradient over the ranks right where
it is formed, before anything reads it (:func:`average_gradients`). The average weights each rank
by its number of samples, so it is the gradient of the global batch's mean loss whatever the
slice sizes (apart from BatchNorm, whose batch statistics are those of each rank's slice unless
``sync_bn=true``). Since every rank then applies the same update to the same tensors, weights,
architecture tensors and optimiser states stay identical on every rank without ever being
broadcast again.

Averaging where gradients are formed, instead of wrapping the supernet in
``DistributedDataParallel``, is what the methods need: second-order DARTS takes a virtual step
with the global weight gradient and perturbs along the global validation gradient, Λ-DARTS
perturbs along directions computed from the global per-cell gradients, DropNAS masks its decay
with the global gradients, and the sampled-path methods (PR-DARTS, DropNAS, GDAS) leave
parameters without gradients, which DDP would need ``find_unused_parameters=True`` for. Here a
missing gradient is reduced as zeros, so every rank reduces the same tensors, and stays ``None``
afterwards (as in a single process, where SGD then skips the parameter): all ranks sample the
same gates from a shared seed, so they agree on which gradients are missing.

With ``WORLD_SIZE`` unset or 1 every function here is the identity (or a constant), so a
single-process search runs exactly the code and numbers it ran before.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

# Tensors of one all_reduce: a few buckets of at most this many elements instead of one flat copy
# of every gradient (an ImageNet supernet's weights fit in one or two).
BUCKET_ELEMENTS = 1 << 24


def env_world_size() -> int:
    """The number of ranks ``torchrun`` started (``WORLD_SIZE``; 1 without torchrun).

    Raises:
        ValueError: ``WORLD_SIZE`` is not a positive integer.
    """
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"WORLD_SIZE={value!r} in the environment is not a positive integer (set by torchrun)")
    return n


def env_rank() -> int:
    """This process's rank as ``torchrun`` set it (``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Ranks of the process group (1 outside one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this process logs and writes the run directory (rank 0, or the only process)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device``."""
    if device.type == "cuda" and env_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the ``torchrun`` process group for the block when ``WORLD_SIZE > 1`` (NCCL on CUDA, with this
    rank's ``LOCAL_RANK`` GPU; gloo on CPU) and leave it afterwards; yields this rank's device.

    A group the caller has already initialised is used as it is and left to the caller; without
    ``WORLD_SIZE > 1`` nothing happens.
    """
    device = local_device(device)
    if env_world_size() == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _buckets(tensors: Sequence[torch.Tensor]) -> Iterator[list[int]]:
    """Indices of ``tensors`` grouped into runs of one dtype and at most :data:`BUCKET_ELEMENTS` elements."""
    run: list[int] = []
    size = 0
    for i, t in enumerate(tensors):
        if run and (t.dtype != tensors[run[0]].dtype or size + t.numel() > BUCKET_ELEMENTS):
            yield run
            run, size = [], 0
        run.append(i)
        size += t.numel()
    if run:
        yield run


def average_gradients(grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor],
                      count: int) -> list[torch.Tensor | None]:
    """The sample-weighted mean over the ranks of ``grads`` (the gradients w.r.t. ``inputs`` of a mean loss
    over ``count`` samples of this rank): ``Σ_r count_r·g_r / Σ_r count_r``, the gradient of the mean
    loss over all ranks' samples. Identical on every rank.

    A ``None`` gradient is reduced as zeros, so every rank reduces the same tensors, and stays ``None``
    in the result: the ranks run the same graph (sampled gates are shared), so they agree on which
    gradients exist. One all_reduce per bucket (the first also carries the sample count), no host
    synchronisation. Outside a process group ``grads`` come back unchanged.
    """
    grads = list(grads)
    if not is_distributed():
        return grads
    filled = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, grads)]
    out: list[torch.Tensor | None] = [None] * len(grads)
    total = None
    for run in _buckets(filled):
        parts = [filled[i].reshape(-1) * count for i in run]
        if total is None:  # Σ_r count_r rides on the first bucket (exact in fp32 below 2**24 samples)
            parts.append(torch.full((1,), float(count), dtype=filled[run[0]].dtype, device=filled[run[0]].device))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        if total is None:
            flat, total = flat[:-1], flat[-1:]
        flat = flat / total.to(flat.dtype)
        for i, part in zip(run, flat.split([filled[i].numel() for i in run])):
            if grads[i] is not None:
                out[i] = part.view_as(filled[i])
    return out


def average_grads_(params: Sequence[torch.Tensor], count: int) -> None:
    """:func:`average_gradients` of the ``.grad`` of ``params``, written back to ``.grad`` (in place)."""
    if not is_distributed():
        return
    params = list(params)
    for p, g in zip(params, average_gradients([p.grad for p in params], params, count)):
        p.grad = g


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over the ranks in place (``op``: "sum" or "max"); unchanged outside a group."""
    if is_distributed():
        dist.all_reduce(tensor, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


@torch.no_grad()
def broadcast_tensors_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place; a no-op outside a group)."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t.data, src)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself outside a group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every BatchNorm layer replaced by a :class:`torch.nn.SyncBatchNorm` that keeps its
    parameters and running statistics (``sync_bn=true``): batch statistics over all ranks' samples,
    as one process on the global batch computes them. SyncBatchNorm runs on CUDA only."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)


def barrier() -> None:
    """Wait until every rank gets here (a no-op outside a group)."""
    if is_distributed():
        dist.barrier()
