"""Test-suite setup: Triton kernels run on CPU through the interpreter when there is no GPU."""

import os

import torch

# Must happen before any Triton kernel module is imported (STYLE.md: interpreter facts).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests use tiny tensors: one intra-op thread avoids OpenMP overhead (and the 5-10x slowdowns
# seen when the 2 CI cores are shared). Tests that check thread-count independence set it themselves.
torch.set_num_threads(1)
