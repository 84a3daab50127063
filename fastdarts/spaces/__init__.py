"""Search spaces (DARTS CNN cell, NAS-Bench-201 cell, RobustDARTS S1–S4) and their builders."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from fastdarts.genotype import Genotype, NB201Genotype, validate_genotype

SPACES = ("darts", "nb201", "s1", "s2", "s3", "s4", "s5")
SUPERNETS = ("auto", "quark0", "nasnet")
# Stems of the DARTS-space network: quark0's CIFAR stem, or PC-DARTS' ImageNet stem (fastdarts.spaces.imagenet).
STEMS = ("cifar", "imagenet")
# Methods whose published DARTS-space search uses D-X-Y's NASNet-super network (ALGORITHMS.md §12.3).
NASNET_METHODS = ("prdarts", "gdas")


def resolve_supernet(space: str, method: str, supernet: str = "auto") -> str:
    """The network layout ``build_supernet`` builds: ``"nb201"``, ``"quark0"`` or ``"nasnet"``.

    ``"auto"`` is the method's published network: D-X-Y's NASNet-super for PR-DARTS and GDAS on the
    DARTS space, quark0's search network for the other methods and spaces.
    """
    if supernet not in SUPERNETS:
        raise ValueError(f"unknown supernet {supernet!r}; choose one of {SUPERNETS}")
    if space == "nb201":
        if supernet != "auto":
            raise ValueError(f"space 'nb201' has one supernet; supernet={supernet!r} applies to space 'darts'")
        return "nb201"
    if supernet == "nasnet" and space != "darts":
        raise ValueError(f"supernet 'nasnet' searches the DARTS space; space {space!r} needs supernet='quark0'")
    if supernet == "auto":
        return "nasnet" if space == "darts" and method in NASNET_METHODS else "quark0"
    return supernet


def build_supernet(space: str = "darts", method: str = "darts", C: int = 16, num_classes: int = 10,
                   layers: int | None = None, *, supernet: str = "auto", stem: str = "cifar",
                   **options: Any) -> nn.Module:
    """Build the search supernet of ``space`` for ``method``.

    Args:
        space: ``"darts"``, ``"nb201"``, RobustDARTS ``"s1"``–``"s4"`` or Λ-DARTS' ``"s5"``.
        method: a name from :data:`fastdarts.methods.METHODS`.
        C: initial channels. num_classes: classifier outputs.
        layers: cells (DARTS spaces: default 8, NASNet-super: default 6 = 3N) or cells per stage
            (NAS-Bench-201, default 5).
        supernet: network on the DARTS space (:func:`resolve_supernet`): ``"quark0"`` (quark0/darts'
            ``Network``), ``"nasnet"`` (D-X-Y's NASNet-super, :mod:`fastdarts.spaces.nasnet`) or
            ``"auto"``, the method's published one (NASNet-super for ``prdarts`` and ``gdas``).
        stem: ``"cifar"`` (quark0's 3×3 stem) or ``"imagenet"``: PC-DARTS' ``model_search_imagenet.py``
            network (three stride-2 convolutions, :mod:`fastdarts.spaces.imagenet`; inputs of 64 px or
            more) on the quark0 layout, where PC-DARTS' ``k`` defaults to 2 as in that file.
        **options: ``backend``, ``recompute``, ``in_channels``, ``steps``, ``multiplier``,
            ``stem_multiplier``, ``primitives``, NASNet-super's ``track_running_stats`` and
            ``conv_bias``, and method options (e.g. ``k`` for PC-DARTS).

    Returns:
        A module with ``forward(x) -> logits``, ``arch_parameters()`` (original order) and ``genotype()``.
    """
    from fastdarts.methods import get_method

    method_cls = get_method(method)
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; choose one of {SPACES}")
    if space not in method_cls.spaces:
        raise ValueError(f"method {method!r} does not run on space {space!r} (it supports {method_cls.spaces})")
    layout = resolve_supernet(space, method, supernet)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    options = dict(options)
    if stem == "imagenet":
        if layout != "quark0":
            raise ValueError(f"stem='imagenet' builds PC-DARTS' ImageNet network on the quark0 layout; the "
                             f"{layout!r} supernet has no ImageNet stem (use supernet='quark0')")
        options.setdefault("k", 2)  # model_search_imagenet.py:34, 42-43: C//2 channels through the ops
    kwargs = method_cls.supernet_options(options)
    for key in ("k",):  # method options consumed above
        options.pop(key, None)
    kwargs.update(options)
    try:
        if layout == "nasnet":
            from fastdarts.spaces.nasnet import NasnetSupernet, method_settings

            if "partial_k" in kwargs:
                raise ValueError(f"method {method!r} uses partial channels, which the NASNet-super supernet "
                                 "does not have; use supernet='quark0'")
            return NasnetSupernet(C, num_classes, 6 if layers is None else layers,
                                  **{**method_settings(method), **kwargs})
        if space == "nb201":
            from fastdarts.spaces.nb201 import NB201Supernet

            return NB201Supernet(C, num_classes, 5 if layers is None else layers, **kwargs)
        from fastdarts.spaces.darts import DartsSupernet
        from fastdarts.spaces.imagenet import ImagenetSupernet

        if space != "darts":
            from fastdarts.spaces.robust import robust_primitives

            if "primitives" in kwargs:
                raise ValueError(f"space {space!r} fixes its primitives; do not pass primitives=")
            kwargs["primitives"] = robust_primitives(space)
        network = ImagenetSupernet if stem == "imagenet" else DartsSupernet
        return network(C, num_classes, 8 if layers is None else layers, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad option for build_supernet(space={space!r}, method={method!r}): {err}") from err


def build_network(genotype, C: int = 36, num_classes: int = 10, layers: int | None = None, *,
                  auxiliary: bool = False, drop_path_prob: float = 0.0, in_channels: int = 3,
                  stem: str = "cifar") -> nn.Module:
    """Build the discrete network of a genotype.

    DARTS genotypes give quark0's ``NetworkCIFAR`` (``layers`` cells, default 20, drop path,
    optional auxiliary head; ``forward`` returns ``(logits, aux_logits)``), or with
    ``stem="imagenet"`` its ``NetworkImageNet`` (default 14 cells; three stride-2 stem convolutions,
    images of at least 64 px). NAS-Bench-201 genotypes give the NAS-Bench-201 network (``layers``
    cells per stage, default 5; ``forward`` returns ``(logits, None)``).
    """
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    if isinstance(genotype, (Genotype, NB201Genotype)):
        validate_genotype(genotype)  # an input out of range is a clear ValueError here, not an IndexError later
    if isinstance(genotype, NB201Genotype):
        from fastdarts.spaces.nb201 import NB201Network

        if stem != "cifar":
            raise ValueError(f"stem={stem!r} builds DARTS-space networks; a NAS-Bench-201 genotype has one network")

        return NB201Network(genotype, C, num_classes, 5 if layers is None else layers, in_channels=in_channels)
    if not isinstance(genotype, Genotype):
        raise TypeError(f"expected a Genotype or NB201Genotype, got {type(genotype).__name__}")
    from fastdarts.spaces.darts import NetworkCIFAR, NetworkImageNet

    if stem == "imagenet":
        return NetworkImageNet(C, num_classes, 14 if layers is None else layers, auxiliary, genotype,
                               in_channels=in_channels, drop_path_prob=drop_path_prob)
    return NetworkCIFAR(C, num_classes, 20 if layers is None else layers, auxiliary, genotype,
                        in_channels=in_channels, drop_path_prob=drop_path_prob)
