"""PC-DARTS' ImageNet search network (yuhuixu1993/PC-DARTS ``model_search_imagenet.py`` ``Network``).

The DARTS search cells of :class:`~fastdarts.spaces.darts.DartsSupernet` behind the ImageNet stem:

* ``stem0`` = Conv3×3 s2 (3 → 3C/2), BN, ReLU, Conv3×3 s2 (→ 3C), BN (``model_search_imagenet.py:113-119``),
* ``stem1`` = ReLU, Conv3×3 s2 (3C → 3C), BN (``:121-125``),

so cell 0 sees ``s0`` at 1/4 and ``s1`` at 1/8 of the input resolution (224 → 56 and 28 px) and
reduces ``s0`` with a FactorizedReduce (``reduction_prev = True``, ``:130``). The module names and
shapes are the original's, so its state_dict loads with ``strict=True``. With ``method="pcdarts"``
the edges are partial-channel edges; the original sends half of the channels through the
candidates (``C//2``, ``:34``, ``:42-43``), i.e. ``k=2``, which :func:`fastdarts.spaces.build_supernet`
takes as the default for this stem.

One departure, on purpose: the original's ``Cell.forward`` (``:93``) evaluates every edge twice
(the first call only supplies ``.device`` for ``weights2``). Logits and gradients are those of a
single evaluation, but every BatchNorm inside the candidates updates its running statistics twice
per forward and the edges cost twice the compute. Here each edge runs once.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastdarts.spaces.darts import DartsSupernet

# The stem divides the resolution by 8 and the two reduction cells by 4 more; every FactorizedReduce
# and partial-channel bypass (MaxPool2d(2, 2)) on the way needs an even size.
MIN_IMAGE_SIZE = 64
SIZE_MULTIPLE = 32


def check_image_size(image_size: int) -> None:
    """Refuse image sizes the ImageNet stem cannot take (one-line ``ValueError``).

    The stem divides the side by 8 and the reduction cells by 4 more; ``FactorizedReduce`` (cell 0
    and after each reduction) and the stride-2 edges need an even side at each step, hence a
    multiple of 32, and at least 64 px so that the last cells see 2×2 maps.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"stem=imagenet needs images of at least {MIN_IMAGE_SIZE} px (its stem divides the side by "
                         f"8 and the reduction cells by 4 more), got {image_size} px; set data.image_size="
                         f"{MIN_IMAGE_SIZE} or more, or use stem=cifar")
    if image_size % SIZE_MULTIPLE:
        raise ValueError(f"stem=imagenet needs an image size that is a multiple of {SIZE_MULTIPLE} (every "
                         f"stride-2 step must halve an even side), got {image_size} px; try data.image_size="
                         f"{image_size // SIZE_MULTIPLE * SIZE_MULTIPLE}")


class ImagenetSupernet(DartsSupernet):
    """PC-DARTS ImageNet search network: :class:`DartsSupernet` with the three stride-2 stem convolutions.

    Takes the arguments of :class:`DartsSupernet` (``in_channels`` for the first convolution).
    Both sides of the input must pass :func:`check_image_size` (224 px in the recipe).
    """

    def _build_stem(self, in_channels: int, C_stem: int) -> bool:
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C_stem // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C_stem // 2, C_stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        # In place as in the original: it overwrites stem0's output, which only cell 0's FactorizedReduce
        # reads, and that starts with a ReLU (relu∘relu = relu); it saves one 3C×H/4×W/4 map per sample.
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(C_stem, C_stem, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        return True  # cell 0's s0 (1/4) has twice the resolution of s1 (1/8)

    def _stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for side in x.shape[-2:]:  # metadata only (no host sync): one clear line, not a shape error in a cell
            check_image_size(side)
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return s0, s1
