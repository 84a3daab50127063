"""Configuration: dataclasses, YAML files, packaged recipes and dotted command-line overrides.

``load_config(SearchConfig, "cfg.yaml", ["method=pcdarts", "data.batch_size=256"])`` starts
from the dataclass defaults, applies the YAML file, then the overrides. Values are
converted to the field's type; unknown keys are errors that list the valid ones.
``data=<name or path>`` is shorthand for ``data.name=...``.

Recipes are the YAML files packaged in ``fastdarts/configs/`` (:func:`recipe_names`,
:func:`recipe_path`), one per published search setting. A search config is resolved in this
order: the method's built-in defaults (its ``DEFAULTS``) < the recipe/YAML < command-line
overrides. Every field a search leaves at ``None`` (``epochs``, ``layers``,
``data.batch_size``, the ``optim`` fields) takes the method's default in
:func:`resolve_search_config`; an explicit value always wins.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

import yaml

from fastdarts.data import DataConfig
from fastdarts.validate import did_you_mean


@dataclass
class OptimConfig:
    """Optimiser settings; ``None`` means the method's paper default (see each method's ``DEFAULTS``)."""

    w_lr: float | None = None
    w_lr_min: float | None = None
    w_momentum: float | None = None
    w_weight_decay: float | None = None
    w_nesterov: bool | None = None
    w_grad_clip: float | None = None
    alpha_lr: float | None = None
    alpha_betas: list | None = None
    alpha_weight_decay: float | None = None
    arch_warmup: int | None = None  # epochs with the architecture frozen
    lr_schedule_offset: int | None = None  # epoch e runs at cos(π·(e + offset)/T); 1: PyTorch >= 1.1 epoch-start step


@dataclass
class SearchConfig:
    """Everything ``fastdarts search`` needs.

    ``epochs``, ``layers``, ``data.batch_size`` and the ``optim`` fields left at ``None`` take the
    method's default (:func:`resolve_search_config`). ``stem``: ``"cifar"`` (quark0's 3×3 stem) or
    ``"imagenet"``, PC-DARTS' ImageNet search network (``model_search_imagenet.py``: three stride-2
    convolutions, k=2 partial channels; :mod:`fastdarts.spaces.imagenet`), for images of 64 px or more.
    """

    method: str = "darts"
    space: str = "darts"
    supernet: str = "auto"  # DARTS-space network: quark0 | nasnet | auto (the method's published one)
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=None))
    epochs: int | None = None
    seed: int = 2
    run_dir: str | None = None
    C: int = 16
    layers: int | None = None
    backend: str = "auto"
    recompute: bool = False
    # "on": torch.compile the supernet (CUDA graphs through mode="reduce-overhead" on CUDA)
    compile: str = "off"
    device: str = "auto"
    optim: OptimConfig = field(default_factory=OptimConfig)
    method_options: dict = field(default_factory=dict)
    stem: str = "cifar"
    log_every: int = 50  # steps between reads of the device-side metrics (and at each epoch end)
    on_nonfinite: str = "stop"  # NaN/inf loss or architecture tensor: stop | skip (drop the step's updates)
    max_skipped: int = 10  # on_nonfinite=skip: the run stops at the next non-finite step after this many
    deterministic: bool = False  # torch.use_deterministic_algorithms(True), cuDNN deterministic (README)
    # Mixed precision of the candidate ops: off | bf16 | fp16 (fp16: GradScaler; CUDA only). Architecture
    # tensors, mixing weights, losses and regularisers stay fp32 (fastdarts.methods.base).
    amp: str = "off"
    # Also write the checkpoint every N steps within an epoch (None: at epoch ends only); resume is exact.
    checkpoint_every: int | None = None
    # torchrun runs (CUDA): BatchNorm statistics over all ranks' samples (SyncBatchNorm) instead of per rank.
    sync_bn: bool = False
    # Supernet weights and image batches in the channels_last memory format (NHWC), CUDA runs only: faster
    # convolutions on tensor cores under amp; the same numbers up to the convolution algorithms' summation
    # order (fastdarts.validate.check_channels_last says why CPU runs refuse it).
    channels_last: bool = False


@dataclass
class TrainConfig:
    """Retraining a derived genotype (quark0/darts ``cnn/train.py`` defaults, as the ``darts-cifar10-train``
    recipe). ``fastdarts train`` starts from a packaged recipe picked by the data
    (:func:`default_train_recipe`), so these defaults apply to the Python API only."""

    genotype: str = ""
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=96))
    epochs: int = 600
    C: int = 36
    layers: int | None = None
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    seed: int = 0
    run_dir: str | None = None
    device: str = "auto"
    deterministic: bool = False  # as SearchConfig.deterministic
    channels_last: bool = False  # as SearchConfig.channels_last
    # LR per epoch e: "cosine" lr_min + (lr − lr_min)(1 + cos(π(e + offset)/epochs))/2 (cnn/train.py), or
    # "step" lr·lr_gamma^⌊(e + offset)/lr_decay_period⌋ (cnn/train_imagenet.py StepLR). quark0 steps the
    # scheduler at each epoch start, which on its PyTorch 0.3.1 gives offset 0 (offset 1 on PyTorch >= 1.1).
    lr_schedule: str = "cosine"
    lr_gamma: float = 0.97
    lr_decay_period: int = 1
    lr_schedule_offset: int = 0
    label_smoothing: float = 0.0  # ε of (1 − ε)·one_hot + ε/classes (train_imagenet.py CrossEntropyLabelSmooth)
    stem: str = "cifar"  # "cifar": NetworkCIFAR; "imagenet": quark0's NetworkImageNet (three stride-2 stems)


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type of ``key``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~"))):
        return None
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, str):
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return low in ("true", "1", "yes")
            if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        if origin is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if origin is float:
            return float(value)
        if origin is str:
            return str(value)
        if origin in (list, dict):
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(parsed, origin):
                raise ValueError(value)
            return parsed
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r}: cannot use {value!r} as {getattr(base, '__name__', base)}") from None
    return value


def _apply(obj, updates: dict[str, Any], prefix: str = "") -> None:
    hints = _field_types(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = did_you_mean(key, names)
            raise ValueError(f"unknown config key {full!r}{close}" if close else
                             f"unknown config key {full!r} (valid keys here: {', '.join(names)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if isinstance(value, dict):
                _apply(current, value, f"{full}.")
                continue
            if key == "data":  # data=<name or path>
                current.name = str(value)
                continue
            raise ValueError(f"config key {full!r} is a section; set its fields as {full}.<field>=...")
        if key == "method_options" and isinstance(value, dict):
            current.update(value)
            continue
        setattr(obj, key, _convert(value, hints[key], full))


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": "1"}, "c": "x"}`` (values stay strings; types come later)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ValueError(f"override {item!r} has an empty key")
        if parts == ["data"]:  # data=<name or path> shorthand: combines with data.<field>=... in any order
            parts = ["data", "name"]
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {p!r}")
        if isinstance(node.get(parts[-1]), dict):
            raise ValueError(f"override {item!r} conflicts with earlier overrides of {key.strip()}.<field>")
        # method_options has no declared types: parse its values as YAML scalars.
        node[parts[-1]] = yaml.safe_load(value) if parts[0] == "method_options" else value
    return tree


def _read_yaml(path: str) -> Any:
    """``yaml.safe_load`` of a config file (never builds Python objects); problems as one-line ValueErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {path} is not valid YAML: {err.problem or err.context}{where}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"config file {path} cannot be read ({type(err).__name__}: {err})") from None


def load_config(cls, path: str | None = None, overrides: Sequence[str] = ()):
    """Build a ``cls`` config from defaults, an optional YAML file and ``key=value`` overrides."""
    cfg = cls()
    if path is not None:
        if os.path.isdir(path):
            raise ValueError(f"config file {path} cannot be read (it is a directory)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path} not found")
        content = _read_yaml(path)
        if not isinstance(content, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(content).__name__}")
        _apply(cfg, content)
    _apply(cfg, parse_overrides(overrides))
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML files and checkpoints)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict[str, Any]):
    cfg = cls()
    _apply(cfg, d)
    return cfg


RECIPES_DIR = os.path.join(os.path.dirname(__file__), "configs")
# Fields of SearchConfig that the method's DEFAULTS fill when they are None (besides ``optim``).
_METHOD_FIELDS = ("epochs", "layers", "batch_size")
STEMS = ("cifar", "imagenet")


def default_search_config_path() -> str:
    """The packaged config that ``fastdarts search`` uses with no arguments (embedded digits data)."""
    return os.path.join(RECIPES_DIR, "default.yaml")


# Retraining recipes share the folder; their names end in this suffix (``darts-cifar10-train``).
TRAIN_RECIPE_SUFFIX = "-train"
RECIPE_KINDS = ("search", "train")


def recipe_names(kind: str = "search") -> list[str]:
    """Names of the packaged recipes (``fastdarts/configs/*.yaml``) of ``kind``, sorted: ``"search"``
    (``default`` is the digits demo) or ``"train"`` (names ending in ``-train``)."""
    if kind not in RECIPE_KINDS:
        raise ValueError(f"unknown recipe kind {kind!r}; choose one of {RECIPE_KINDS}")
    names = sorted(f[:-5] for f in os.listdir(RECIPES_DIR) if f.endswith(".yaml"))
    return [n for n in names if n.endswith(TRAIN_RECIPE_SUFFIX) == (kind == "train")]


def recipe_path(name: str, kind: str = "search") -> str:
    """The packaged YAML file of the ``kind`` recipe ``name``.

    Raises:
        ValueError: for an unknown name, naming the closest recipe.
    """
    names = recipe_names(kind)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.0)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        what = "recipe" if kind == "search" else "retraining recipe"
        raise ValueError(f"unknown {what} {name!r}{hint} (fastdarts {kind} --list-configs lists them)")
    return os.path.join(RECIPES_DIR, f"{name}.yaml")


def default_train_recipe(data_name: str, data_root: str | None = None) -> str:
    """The retraining recipe ``fastdarts train`` uses for this data when no recipe or YAML is given:
    ``digits-train`` for the embedded digits, ``darts-cifar10-train`` for CIFAR-10/100,
    ``darts-imagenet-train`` for an ImageFolder (ImageNet).

    Raises:
        FileNotFoundError, ValueError: for a data name or path that names no dataset.
    """
    from fastdarts.data import dataset_kind

    kind = dataset_kind(DataConfig(name=data_name, root=data_root))
    return {"digits": "digits-train", "cifar10": "darts-cifar10-train", "cifar100": "darts-cifar10-train",
            "imagefolder": "darts-imagenet-train"}[kind]


def _plain(value: Any) -> Any:
    """Tuples as lists, so a resolved config dumps as plain YAML."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def resolve_search_config(cfg: SearchConfig) -> SearchConfig:
    """A copy of ``cfg`` with every method-dependent ``None`` replaced by the method's default.

    Fills ``epochs``, ``layers``, ``data.batch_size`` and the ``optim`` fields, writes the
    method's other hyper-parameters (its ``DEFAULTS`` for ``cfg.space``, e.g. PC-DARTS'
    ``arch_warmup`` or Λ-DARTS' ``lambda_``) into ``method_options`` and ``supernet="auto"`` as
    the network it stands for, so the result names every value the search will use. Values
    already set, in ``cfg`` or its ``method_options``, are kept. Resolving twice gives the same
    config.
    """
    from fastdarts.methods import get_method

    method_cls = get_method(cfg.method)
    out = copy.deepcopy(cfg)
    optim_fields = [f.name for f in dataclasses.fields(OptimConfig)]
    hyper_options = {k: v for k, v in cfg.method_options.items() if k in method_cls.DEFAULTS}
    given = {**to_dict(cfg.optim), "epochs": cfg.epochs, "layers": cfg.layers,
             "batch_size": cfg.data.batch_size, **hyper_options}
    hyper = method_cls.resolve_hyper(given, cfg.space)
    out.epochs, out.layers, out.data.batch_size = hyper["epochs"], hyper["layers"], hyper["batch_size"]
    for name in optim_fields:
        setattr(out.optim, name, _plain(hyper[name]))
    for key, value in hyper.items():
        if key not in optim_fields and key not in _METHOD_FIELDS:
            out.method_options[key] = _plain(value)
    from fastdarts.spaces import resolve_supernet

    layout = resolve_supernet(cfg.space, cfg.method, cfg.supernet)  # also refuses impossible combinations
    if cfg.space != "nb201":  # NAS-Bench-201 has one network and keeps supernet="auto"
        out.supernet = layout
    if layout == "nasnet" and isinstance(out.layers, int):
        from fastdarts.spaces.nasnet import nasnet_layout

        nasnet_layout(out.layers)  # refuses a cell count that is not 3N (before a run or a --dry-run)
    return out


def check_search_config(cfg: SearchConfig) -> None:
    """Refuse settings this version cannot run (before any work starts).

    Raises:
        ValueError: for an unknown stem, or ``stem="imagenet"`` with a network that has no ImageNet
            stem (NASNet-super, NAS-Bench-201). Its image size is checked once the data is known
            (:func:`fastdarts.spaces.imagenet.check_image_size`).
    """
    if cfg.stem not in STEMS:
        raise ValueError(f"unknown stem {cfg.stem!r}; choose one of {STEMS}")
    if cfg.stem == "imagenet" and (cfg.space == "nb201" or cfg.supernet == "nasnet"):
        network = "NAS-Bench-201" if cfg.space == "nb201" else "NASNet-super (supernet=nasnet)"
        raise ValueError(f"stem=imagenet is PC-DARTS' ImageNet network on the DARTS cell (supernet=quark0); "
                         f"the {network} network has no ImageNet stem")
