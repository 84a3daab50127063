"""Augmentation and normalisation.

In-memory sources (digits, CIFAR) crop, flip and cut out whole batch tensors with a seeded generator.
ImageFolder images go through torchvision ``transforms.v2`` (:func:`folder_transforms`) in the
DataLoader workers and leave them as uint8; :func:`normalize_uint8` and the cutout masks
(:func:`cutout_keep`) finish them on the device the search runs on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)  # quark0/darts utils.py
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _random_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of size (H, W) from the zero-padded batch (torchvision RandomCrop)."""
    if pad <= 0:
        return x
    B, C, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=g)
    rows = (oy.view(B, 1) + torch.arange(H).view(1, H)).view(B, 1, H, 1).expand(B, C, H, W + 2 * pad)
    cols = (ox.view(B, 1) + torch.arange(W).view(1, W)).view(B, 1, 1, W).expand(B, C, H, W)
    return xp.gather(2, rows).gather(3, cols)


def cutout_keep(cy: torch.Tensor, cx: torch.Tensor, length: int, H: int, W: int) -> torch.Tensor:
    """quark0 ``Cutout`` masks, [B, 1, H, W] bool on the centres' device: False on the length x length
    square (clipped at the border) centred at ``(cy[b], cx[b])``, True elsewhere."""
    B, half = cy.numel(), length // 2
    cy, cx = cy.view(B, 1), cx.view(B, 1)
    ar_h = torch.arange(H, device=cy.device).view(1, H)
    ar_w = torch.arange(W, device=cx.device).view(1, W)
    in_rows = (ar_h >= cy - half) & (ar_h < cy + half)  # [B, H]
    in_cols = (ar_w >= cx - half) & (ar_w < cx + half)  # [B, W]
    return ~(in_rows.view(B, 1, H, 1) & in_cols.view(B, 1, 1, W))


def _cutout_batch(x: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """quark0 ``Cutout`` on a batch: one square zeroed per image, centred uniformly (drawn from ``g``)."""
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=g)
    cx = torch.randint(0, W, (B,), generator=g)
    return x * cutout_keep(cy, cx, length, H, W).to(x.dtype)


def normalize_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` in float32 for uint8 images ``[B, C, H, W]`` (``mean``, ``std``:
    [1, C, 1, 1] on ``x``'s device), computed where ``x`` is: folder batches cross to the GPU as uint8
    (a quarter of the bytes of float32) and are normalised there."""
    return (x.to(torch.float32).div_(255.0) - mean) / std


def folder_transforms(image_size: int, flip: bool, color_jitter: list | None = None):
    """torchvision ``transforms.v2`` pipelines for ImageFolder PIL images, each ending in a uint8
    ``[3, S, S]`` tensor: ``(train, evaluate)``.

    Training: ``RandomResizedCrop(S)`` (scale 0.08..1, ratio 3/4..4/3) and a horizontal flip, as in
    PC-DARTS' ``train_search_imagenet.py`` and DARTS' ``train_imagenet.py``, then, when given,
    ``ColorJitter(*color_jitter)`` (``train_imagenet.py``). Evaluation: ``Resize(S / 0.875)`` (256
    for 224) and ``CenterCrop(S)``. Random draws come from torch's global generator; the caller
    seeds it per image.
    """
    from torchvision.transforms import v2

    S = int(image_size)
    train = [v2.RandomResizedCrop(S, antialias=True)] + ([v2.RandomHorizontalFlip()] if flip else [])
    if color_jitter is not None:
        train.append(v2.ColorJitter(*color_jitter))
    evaluate = [v2.Resize(max(S, int(round(S / 0.875))), antialias=True), v2.CenterCrop(S)]
    return v2.Compose(train + [v2.PILToTensor()]), v2.Compose(evaluate + [v2.PILToTensor()])
