"""Test-suite setup: Triton kernels run on CPU through the interpreter when there is no GPU.

``FASTDARTS_TEST_THREADS`` chooses the intra-op thread count: ``1`` (unset: the default of
``make test``), any positive integer, or ``default`` (leave torch's own choice, which follows
``OMP_NUM_THREADS`` or the core count). ``make test-threads`` runs the suite with 1, 2 and default.
"""

import os

import pytest
import torch

# Must happen before any Triton kernel module is imported (STYLE.md: interpreter facts).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _threads_from_env() -> int | None:
    """Thread count asked for by FASTDARTS_TEST_THREADS, or None for torch's default."""
    value = os.environ.get("FASTDARTS_TEST_THREADS", "1").strip()
    if value == "default":
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"FASTDARTS_TEST_THREADS must be a positive integer or 'default', got {value!r}")
    return int(value)


# The tests use tiny tensors: one intra-op thread avoids OpenMP overhead (and the 5-10x slowdowns
# seen when the 2 CI cores are shared). Results must not depend on this choice: no test compares
# runs made under different thread counts unless it sets them itself (test_cpp_ops determinism).
_THREADS = _threads_from_env()
if _THREADS is not None:
    torch.set_num_threads(_THREADS)


def pytest_report_header(config) -> str:
    """Show the thread setting in pytest's header, so a log says which run it was."""
    how = "torch default" if _THREADS is None else "FASTDARTS_TEST_THREADS"
    return f"fastdarts: torch intra-op threads = {torch.get_num_threads()} ({how})"


@pytest.fixture(autouse=True)
def _restore_thread_count():
    """Give every test the suite's thread count back: a script's main() under test (the collapse
    study, ``--threads``) may set its own, and later tests hand the count to their subprocesses."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
