"""fastdarts: fast, memory-frugal differentiable architecture search.

Public API (see DESIGN.md): the drop-in mixed ops, the fused mixed sum, supernet and
network builders, the search entry point, genotype files and GAEA's optimiser.
"""

from fastdarts import optim
from fastdarts.functional import gated_mixed_sum, mixed_sum
from fastdarts.gated import GatedMixedOp
from fastdarts.genotype import Genotype, NB201Genotype, load_genotype, save_genotype
from fastdarts.mixed import MixedOp, PartialMixedOp
from fastdarts.search import search
from fastdarts.spaces import build_network, build_supernet

__version__ = "0.1.0"

__all__ = [
    "MixedOp",
    "PartialMixedOp",
    "mixed_sum",
    "GatedMixedOp",
    "gated_mixed_sum",
    "build_supernet",
    "build_network",
    "search",
    "load_genotype",
    "save_genotype",
    "Genotype",
    "NB201Genotype",
    "optim",
]
