"""Augmentation and normalisation: per-batch crop and cutout on tensors (in-memory sources), and the
per-image resize-centre-crop and RandomResizedCrop parameters for PIL images (ImageFolder)."""

from __future__ import annotations

import math
import random

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


def _cutout_batch(x: torch.Tensor, length: int, g: torch.Generator) -> torch.Tensor:
    """quark0 ``Cutout``: zero a length x length square (clipped at the border) centred uniformly."""
    B, _, H, W = x.shape
    cy = torch.randint(0, H, (B,), generator=g).view(B, 1)
    cx = torch.randint(0, W, (B,), generator=g).view(B, 1)
    half = length // 2
    ar_h = torch.arange(H).view(1, H)
    ar_w = torch.arange(W).view(1, W)
    in_rows = (ar_h >= cy - half) & (ar_h < cy + half)  # [B, H]
    in_cols = (ar_w >= cx - half) & (ar_w < cx + half)  # [B, W]
    keep = ~(in_rows.view(B, 1, H, 1) & in_cols.view(B, 1, 1, W))
    return x * keep.to(x.dtype)


def _resize_center_crop(img, size: int):
    from PIL import Image

    resize = max(size, int(round(size / 0.875)))
    w, h = img.size
    if w <= h:
        nw, nh = resize, max(resize, int(round(resize * h / w)))
    else:
        nw, nh = max(resize, int(round(resize * w / h))), resize
    img = img.resize((nw, nh), Image.BILINEAR)
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _rrc_params(H: int, W: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision ``RandomResizedCrop.get_params`` with a :class:`random.Random`."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            return rng.randint(0, H - h), rng.randint(0, W - w), h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        w, h = W, H
    h, w = min(h, H), min(w, W)
    return (H - h) // 2, (W - w) // 2, h, w
