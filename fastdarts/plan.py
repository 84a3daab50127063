"""``fastdarts plan``: the memory a search step needs, per sample, and the largest batch that fits.

The bytes of one search step are modelled as affine in the batch: ``fixed + per_sample·batch``.

* On CUDA the model is fitted to the peak allocated bytes (``torch.cuda.max_memory_allocated``)
  of a real method step at two small batch sizes (after one warm-up step, so the optimiser
  states exist at both), with everything the run holds: weights, gradients, optimiser states,
  the step's activations and temporaries.
* On CPU (no peak counter) it is fitted to the net bytes a supernet forward leaves allocated
  (its saved activations and output, :func:`fastdarts.bench.forward_net_bytes`) at two batch
  sizes, with the parameters, their gradients and the optimiser states added to ``fixed``.
  This leaves out the transient buffers of backward (gradients of activations, freed as they
  are used) and the second forwards of second-order DARTS / Λ-DARTS, which free their graphs.

Both honour the configured method (its supernet and optimisers), backend, recompute, amp and
channels_last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from fastdarts.bench import forward_net_bytes
from fastdarts.config import SearchConfig, resolve_search_config, to_dict
from fastdarts.data import build_search_data
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet
from fastdarts.validate import validate_search_config

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``"80GiB"``, ``"80 GB"``, ``"512MiB"`` or a plain byte count as bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read memory size {text!r}; write e.g. 80GiB, 40GB or 512MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class MemoryPlan:
    """Bytes of one search step: ``fixed + per_sample·batch``, and what fits in ``memory``."""

    device: str
    how: str  # "cuda-peak" or "cpu-forward"
    fixed: int
    per_sample: float
    batch: int  # the configured batch
    memory: int  # bytes available
    measured_batches: tuple[int, int]

    def bytes_at(self, batch: int) -> float:
        return self.fixed + self.per_sample * batch

    @property
    def largest_batch(self) -> int:
        if self.per_sample <= 0:
            return 0
        return max(0, int((self.memory - self.fixed) // self.per_sample))

    @property
    def fits(self) -> bool:
        return self.bytes_at(self.batch) <= self.memory

    def table(self) -> str:
        """The table ``fastdarts plan`` prints."""
        rows = [("measured", f"{self.how} on {self.device} at batch {self.measured_batches[0]} and "
                             f"{self.measured_batches[1]}"),
                ("fixed bytes", _size(self.fixed)),
                ("bytes per sample", _size(self.per_sample)),
                ("memory", _size(self.memory)),
                ("largest batch that fits", f"{self.largest_batch:,}"),
                (f"configured batch {self.batch:,}",
                 f"{'fits' if self.fits else 'does NOT fit'} ({_size(self.bytes_at(self.batch))})")]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _size(n: float) -> str:
    for unit, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= f:
            return f"{n / f:,.2f} {unit}"
    return f"{n:,.0f} B"


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _optimizer_state_bytes(method) -> int:
    opts = [v for v in vars(method).values() if isinstance(v, torch.optim.Optimizer)]
    return sum(_tensor_bytes(st.values()) for opt in opts for st in opt.state.values())


def build_planned(cfg: SearchConfig):
    """(method, input shape without the batch, device) for ``cfg``, as :func:`fastdarts.search` builds them."""
    device = validate_search_config(cfg)
    cfg = resolve_search_config(cfg)
    cls = get_method(cfg.method)
    hyper_options = {k: v for k, v in cfg.method_options.items() if k in cls.DEFAULTS}
    net_options = {k: v for k, v in cfg.method_options.items() if k not in cls.DEFAULTS}
    hyper = cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs, "layers": cfg.layers,
                               "batch_size": cfg.data.batch_size, **hyper_options}, cfg.space)
    single_level = bool(hyper.get("single_level", cls.single_level))
    data = build_search_data(cfg.data, cfg.seed, single_level=single_level)
    torch.manual_seed(cfg.seed)
    model = build_supernet(cfg.space, cfg.method, cfg.C, data.num_classes, cfg.layers, supernet=cfg.supernet,
                           stem=cfg.stem, backend=cfg.backend, recompute=cfg.recompute,
                           in_channels=data.in_channels, **net_options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = cls(model, hyper)
    method.set_amp(cfg.amp)
    method.begin_epoch(max(int(hyper.get("arch_warmup", 0)), 0))  # past any warm-up: both steps run
    shape = (data.in_channels, data.image_size, data.image_size)
    return method, shape, device, int(cfg.data.batch_size), data.num_classes


def planned_batch(cfg: SearchConfig, shape, n: int, classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of ``n`` images shaped as the search's (``channels_last`` as configured)."""
    g = torch.Generator().manual_seed(n)
    x = torch.randn((n, *shape), generator=g).to(device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, classes, (n,), generator=g).to(device)


def plan(cfg: SearchConfig, memory: int | None = None, batches: tuple[int, int] = (2, 4)) -> MemoryPlan:
    """Measure ``cfg``'s search step at ``batches`` and fit ``fixed + per_sample·batch``.

    ``memory``: bytes available (default: the CUDA device's total memory; on CPU 80 GiB).
    """
    method, shape, device, batch, classes = build_planned(cfg)
    b1, b2 = batches
    xy1 = planned_batch(cfg, shape, b1, classes, device)
    method.step(xy1, xy1, 0)  # warm-up: optimiser states exist from here on
    if device.type == "cuda":
        peaks = []
        for b in batches:
            xy = planned_batch(cfg, shape, b, classes, device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            method.step(xy, xy, 0)
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device))
        how, total = "cuda-peak", torch.cuda.get_device_properties(device).total_memory
    else:
        nets = []
        for b in batches:
            x, _ = planned_batch(cfg, shape, b, classes, device)
            with method.autocast():
                nets.append(forward_net_bytes(method.model, x))
        state = (2 * _tensor_bytes(method.weights) + 2 * _tensor_bytes(method.arch)  # tensors + gradients
                 + _optimizer_state_bytes(method) + _tensor_bytes(method.model.buffers()))
        peaks = [n + state for n in nets]
        how, total = "cpu-forward", 80 * 2**30
    per = (peaks[1] - peaks[0]) / (b2 - b1)
    fixed = int(round(peaks[0] - per * b1))
    return MemoryPlan(device=str(device), how=how, fixed=fixed, per_sample=per, batch=batch,
                      memory=total if memory is None else int(memory), measured_batches=(b1, b2))
