"""``deterministic=true``: PyTorch's deterministic algorithms for the length of a run.

On CPU a fastdarts run is already reproducible for a fixed seed and thread count (every batch
depends only on (seed, epoch, index), every random draw comes from seeded generators, and the
C++ and Triton kernels reduce in a fixed order); the switch then only makes PyTorch raise on an
op without a deterministic implementation. On CUDA it also selects deterministic cuDNN
convolutions (no autotuning) and a fixed cuBLAS workspace (``CUBLAS_WORKSPACE_CONFIG``), which
costs speed, and it runs with ``warn_only=True``: PyTorch documents no deterministic CUDA
implementation for two ops every search uses, the backward of ``nn.AdaptiveAvgPool2d`` (the
supernets' global pooling) and ``nn.NLLLoss`` (inside ``cross_entropy``), so strict mode would
stop every GPU search at its first step; PyTorch warns once for each such op instead. The
previous global settings are restored when the run ends.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

# cuBLAS needs a fixed workspace for reproducible GEMMs (PyTorch "Reproducibility" notes).
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """Within the block, ``torch.use_deterministic_algorithms(True)`` (``warn_only`` on CUDA, see the
    module docstring), cuDNN deterministic and not benchmarking, and (on CUDA)
    ``CUBLAS_WORKSPACE_CONFIG`` set if it was unset; a no-op when not ``enabled``."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.deterministic, cudnn.benchmark)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2], previous[3]
