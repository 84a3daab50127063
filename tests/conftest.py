"""Test-suite setup: Triton kernels run on CPU through the interpreter when there is no GPU."""

import os

import torch

# Must happen before any Triton kernel module is imported (STYLE.md: interpreter facts).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
