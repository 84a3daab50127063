"""Input checks that run before any work starts: config values and types, names, method options,
devices and backends, run directories.

Every check raises ``ValueError`` (a bad value or name), ``TypeError`` (a value of the wrong
type), ``FileNotFoundError`` or ``FileExistsError`` with one line that names the problem and,
for names, the closest valid choice. :func:`validate_search_config` and
:func:`validate_train_config` are called by :func:`fastdarts.search` / :func:`fastdarts.train.train`
before a run directory is created or touched, and the CLI turns these errors into
``fastdarts: error: <message>`` with exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import types
import typing
from typing import Any, Iterable

import torch

# Integer settings that must be >= 1 (dotted config keys; None means "the default" where allowed).
POSITIVE_INTS = ("epochs", "layers", "C", "data.batch_size", "data.image_size",
                 "method_options.steps", "method_options.multiplier", "method_options.stem_multiplier",
                 "method_options.k", "method_options.epochs", "method_options.batch_size",
                 "method_options.layers")
# Integer settings that must be >= 0 (0 is meaningful: in-process loading, no cutout, no warm-up).
NON_NEGATIVE_INTS = ("data.num_workers", "data.cutout", "optim.arch_warmup", "optim.lr_schedule_offset")
# Fractions: key -> (low, high, low_inclusive, high_inclusive).
FRACTIONS = {
    "data.train_portion": (0.0, 1.0, False, False),
    "data.subset": (0.0, 1.0, False, True),
    "data.arch_subset": (0.0, 1.0, False, True),
    "method_options.gate_dropout": (0.0, 1.0, True, False),
    "method_options.drop_rate": (0.0, 1.0, True, False),
    "optim.alpha_betas": (0.0, 1.0, True, False),
    "drop_path_prob": (0.0, 1.0, True, False),
}
# Float settings that must be >= 0 (learning rates, momenta, decays) or > 0 (clipping norms).
NON_NEGATIVE_FLOATS = ("optim.w_lr", "optim.w_lr_min", "optim.w_momentum", "optim.w_weight_decay",
                       "optim.alpha_lr", "optim.alpha_weight_decay", "lr", "lr_min", "momentum", "weight_decay",
                       "auxiliary_weight")
POSITIVE_FLOATS = ("optim.w_grad_clip", "grad_clip")
# Supernet constructor arguments that the search sets itself, never through method_options.
_RESERVED_SUPERNET_ARGS = {"self", "C", "num_classes", "layers", "N", "mixing", "partial_k", "backend",
                           "recompute", "in_channels"}


# ---------------------------------------------------------------------------------------------- names


def did_you_mean(name: Any, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` (difflib), or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_choice(what: str, value: Any, choices: Iterable[str]) -> None:
    """Refuse ``value`` unless it is one of ``choices``, naming the closest one and listing them all."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}{did_you_mean(value, choices)} (choose one of "
                         f"{', '.join(map(str, choices))})")


# ---------------------------------------------------------------------------------------------- types


_UNION = getattr(types, "UnionType", typing.Union)  # ``int | None`` annotations


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, _UNION):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint) or hint
    return getattr(origin, "__name__", str(origin))


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, _UNION):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base = origin or hint
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base is str:
        return isinstance(value, str)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if base is dict:
        return isinstance(value, dict)
    if isinstance(base, type):
        return isinstance(value, base)
    return True  # Any and other annotations are not checked


def check_types(cfg: Any, prefix: str = "") -> None:
    """Refuse any dataclass field (recursively) whose value does not match its annotation (TypeError)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint, key = getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint) and dataclasses.is_dataclass(value):
            check_types(value, f"{key}.")
        elif not _type_ok(value, hint):
            raise TypeError(f"config key {key!r} must be {_describe(hint)}, got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------- values


def _get(cfg: Any, key: str) -> tuple[bool, Any]:
    """(present, value) of a dotted key in a config (``method_options.x`` looks into the dict)."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False, None
            node = node[part]
        elif dataclasses.is_dataclass(node) and part in {f.name for f in dataclasses.fields(node)}:
            node = getattr(node, part)
        else:
            return False, None
    return True, node


def _numbers(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_values(cfg: Any) -> None:
    """Ranges of the integer, fraction and float settings that ``cfg`` has (see the tables above)."""
    for keys, minimum in ((POSITIVE_INTS, 1), (NON_NEGATIVE_INTS, 0)):
        for key in keys:
            present, value = _get(cfg, key)
            if not present or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
    for key, (lo, hi, lo_in, hi_in) in FRACTIONS.items():
        present, value = _get(cfg, key)
        if not present or value is None:
            continue
        for v in _numbers(value):
            inside = _is_number(v) and (lo <= v if lo_in else lo < v) and (v <= hi if hi_in else v < hi)
            if not inside:
                interval = f"{'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
                raise ValueError(f"{key} must be in {interval}, got {value!r}")
    for keys, strict in ((NON_NEGATIVE_FLOATS, False), (POSITIVE_FLOATS, True)):
        for key in keys:
            present, value = _get(cfg, key)
            if not present or value is None:
                continue
            if not _is_number(value) or (value <= 0 if strict else value < 0) or value != value:
                raise ValueError(f"{key} must be a number {'>' if strict else '>='} 0, got {value!r}")


# ---------------------------------------------------------------------------------------------- method options


class _KeyRecorder(dict):
    """An empty options dict that records the keys a method's ``supernet_options`` looks up."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def get(self, key, default=None):
        self.seen.add(key)
        return default

    def __contains__(self, key):
        self.seen.add(key)
        return False

    def __getitem__(self, key):
        self.seen.add(key)
        raise KeyError(key)


def _supernet_class(space: str, method: str, supernet: str) -> type:
    from fastdarts import spaces

    resolve = getattr(spaces, "resolve_supernet", None)
    layout = resolve(space, method, supernet) if resolve else ("nb201" if space == "nb201" else "quark0")
    if layout == "nb201":
        from fastdarts.spaces.nb201 import NB201Supernet

        return NB201Supernet
    if layout == "nasnet":
        from fastdarts.spaces.nasnet import NasnetSupernet

        return NasnetSupernet
    from fastdarts.spaces.darts import DartsSupernet

    return DartsSupernet


def method_option_names(method: str, space: str = "darts", supernet: str = "auto") -> set[str]:
    """Every ``method_options`` key ``method`` accepts on ``space``: its hyper-parameters
    (``DEFAULTS``, ``NB201_DEFAULTS``), the keys its ``supernet_options`` reads (PC-DARTS' ``k``)
    and the supernet constructor's own options (``steps``, ``primitives``, ...)."""
    from fastdarts.methods import get_method

    method_cls = get_method(method)
    names = set(method_cls.DEFAULTS) | set(getattr(method_cls, "NB201_DEFAULTS", {}))
    recorder = _KeyRecorder()
    try:
        method_cls.supernet_options(recorder)
    except (KeyError, TypeError, ValueError):  # a required option it looked up is still recorded
        pass
    names |= recorder.seen
    params = inspect.signature(_supernet_class(space, method, supernet).__init__).parameters
    names |= {n for n, p in params.items()
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in _RESERVED_SUPERNET_ARGS}
    if space not in ("darts", "nb201"):
        names.discard("primitives")  # RobustDARTS spaces fix their candidates
    return names


def check_method_options(method: str, space: str, options: dict, supernet: str = "auto") -> None:
    """Refuse ``method_options`` keys the method does not know, and values of the wrong type."""
    from fastdarts.methods import METHODS, get_method

    if not isinstance(options, dict):
        raise TypeError(f"method_options must be a mapping, got {type(options).__name__}")
    known = method_option_names(method, space, supernet)
    for key in options:
        if key in known:
            continue
        owners = []
        for other in sorted(METHODS):
            spaces_of = get_method(other).spaces
            if other != method and key in method_option_names(other, space if space in spaces_of else spaces_of[0]):
                owners.append(other)
        hint = did_you_mean(key, known) + (f"; {key!r} is an option of {', '.join(owners)}" if owners else "")
        raise ValueError(f"method {method!r} has no option {key!r}{hint}" if hint else
                         f"method {method!r} has no option {key!r} (its options: {', '.join(sorted(known))})")
    defaults = {**getattr(get_method(method), "NB201_DEFAULTS", {}), **get_method(method).DEFAULTS}
    for key, value in options.items():
        if key not in defaults or defaults[key] is None or value is None:
            continue
        ref = defaults[key]
        if isinstance(ref, bool):
            ok = isinstance(value, bool)
        elif _is_number(ref):
            ok = all(_is_number(v) for v in _numbers(value))
        elif isinstance(ref, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, type(ref))
        if not ok:
            raise TypeError(f"method_options.{key} must be {type(ref).__name__} like its default {ref!r}, "
                            f"got {type(value).__name__} {value!r}")


# ---------------------------------------------------------------------------------------------- devices


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` of a ``device=`` setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``), checked
    against this machine; an unavailable device is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r} (choose auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported (choose auto, cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ValueError(f"device {name!r} requested but CUDA is not available ({why}); use device=cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def check_backend(backend: str, device: torch.device) -> None:
    """Refuse a ``backend=`` that cannot run on ``device`` (unknown name, CUDA kernels on CPU, Triton
    without a GPU or the interpreter, a missing extension), before the first step."""
    from fastdarts.functional import BACKENDS, resolve_backend

    check_choice("backend", backend, BACKENDS)
    resolve_backend(backend, device.type)


# ---------------------------------------------------------------------------------------------- configs


def validate_search_config(cfg: Any) -> torch.device:
    """Check everything a search needs before it starts; returns the resolved device.

    Raises:
        TypeError: ``cfg`` is not a SearchConfig, or a field has the wrong type.
        ValueError: a bad value, an unknown name or option, an unavailable device or backend.
    """
    from fastdarts.config import SearchConfig
    from fastdarts.methods import METHODS, get_method
    from fastdarts.spaces import SPACES

    if not isinstance(cfg, SearchConfig):
        raise TypeError(f"expected a SearchConfig, got {type(cfg).__name__}")
    check_types(cfg)
    check_choice("method", cfg.method, sorted(METHODS))
    check_choice("space", cfg.space, SPACES)
    supported = get_method(cfg.method).spaces
    if cfg.space not in supported:
        raise ValueError(f"method {cfg.method!r} does not run on space {cfg.space!r} (it supports "
                         f"{', '.join(supported)})")
    supernet = getattr(cfg, "supernet", "auto")
    from fastdarts import spaces

    if hasattr(spaces, "SUPERNETS"):
        check_choice("supernet", supernet, spaces.SUPERNETS)
    check_values(cfg)
    check_method_options(cfg.method, cfg.space, cfg.method_options, supernet)
    device = resolve_device(cfg.device)
    check_backend(cfg.backend, device)
    check_amp(getattr(cfg, "amp", "off"), device)
    check_channels_last(getattr(cfg, "channels_last", False), device)
    if getattr(cfg, "sync_bn", False) and device.type != "cuda":
        raise ValueError(f"sync_bn=true needs CUDA GPUs (SyncBatchNorm does not run on {device.type} or with the "
                         "gloo backend); set sync_bn=false")
    every = getattr(cfg, "checkpoint_every", None)
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"checkpoint_every must be an integer >= 1 (steps between checkpoints) or null "
                         f"(epoch ends only), got {every!r}")
    return device


def check_world_size(batch_size: int, world: int) -> None:
    """Refuse a multi-process search whose global ``data.batch_size`` the number of ranks does not divide."""
    if world > 1 and batch_size % world:
        raise ValueError(f"data.batch_size={batch_size} is the global batch and must be divisible by the {world} "
                         f"ranks torchrun started (WORLD_SIZE={world}); use a multiple of {world}")


AMP_MODES = ("off", "bf16", "fp16")


def check_channels_last(channels_last: bool, device: torch.device) -> None:
    """Refuse ``channels_last=true`` off CUDA: NHWC is the layout of tensor-core convolutions, and on
    CPU PyTorch 2.13-2.14's float32 weight gradient of a stride-2 1x1 convolution (every
    FactorizedReduce) in channels_last corrupts the heap with 2+ threads at odd batch sizes (seen as
    "double free or corruption" aborts), which would kill a run."""
    if channels_last and device.type != "cuda":
        raise ValueError(f"channels_last=true needs a CUDA device (on {device.type} PyTorch's channels_last "
                         "convolution backward can corrupt memory); set channels_last=false")


def check_amp(amp: Any, device: torch.device) -> None:
    """Refuse an unknown ``amp`` mode, and ``fp16`` off CUDA (CPU autocast has no fp16 kernels to speak of)."""
    check_choice("amp", amp, AMP_MODES)
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"amp=fp16 needs a CUDA device (fp16 autocast is not supported on {device.type}); "
                         "use amp=bf16 or amp=off")


def validate_train_config(cfg: Any) -> torch.device:
    """Check a retraining config before it starts; returns the resolved device (see :func:`validate_search_config`)."""
    from fastdarts.config import TrainConfig

    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"expected a TrainConfig, got {type(cfg).__name__}")
    check_types(cfg)
    if not cfg.genotype:
        raise ValueError("genotype= is empty: give the genotype JSON written by fastdarts search")
    check_values(cfg)
    device = resolve_device(cfg.device)
    check_channels_last(cfg.channels_last, device)
    return device


# ---------------------------------------------------------------------------------------------- run directories


def check_run_dir(run_dir: str, *, resume: bool, checkpoint: str) -> None:
    """Refuse a run directory that is a symlink or a file, is not writable, lacks the checkpoint a
    resume needs, or holds one that a new run would overwrite. Creates nothing."""
    run_dir = os.fspath(run_dir)
    bare = run_dir.rstrip("/\\") or run_dir
    if os.path.islink(bare):
        raise ValueError(f"run_dir {run_dir} is a symbolic link (to {os.readlink(bare)}); give the real "
                         "directory, so that the run writes only where it says")
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"run_dir {run_dir} is a file, not a directory")
    ckpt = os.path.join(run_dir, checkpoint)
    if resume and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"cannot resume: {ckpt} not found (a run writes it at the end of each epoch)")
    if not resume and os.path.isfile(ckpt):
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it "
                              f"or choose another run_dir=")
    existing = os.path.abspath(run_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"run_dir {run_dir} is not writable ({existing} is read-only for this user)")
