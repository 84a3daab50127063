"""Triton kernels of fastdarts (installed as ``fastdarts.kernels``).

Importing this package needs neither Triton nor a GPU: the kernel modules are imported
lazily, on first attribute access (``fastdarts.kernels.mixed_sum``) or by an explicit
``import fastdarts.kernels.mixed_sum``. Check ``has_triton()`` first.

To run the kernels on CPU tensors, set ``TRITON_INTERPRET=1`` before a kernel module is
imported (Triton reads it when the kernels are decorated).
"""

import importlib
import importlib.util
from functools import lru_cache

__all__ = ["has_triton", "mixed_sum"]

_KERNEL_MODULES = ("mixed_sum", "gates")


@lru_cache(maxsize=None)
def has_triton() -> bool:
    """True when ``triton`` (with ``triton.language``) can be imported. Does not touch CUDA."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install (e.g. missing libs) counts as "no triton"
        return False
    return True


def __getattr__(name: str):
    # PEP 562 lazy submodule import: `fastdarts.kernels.mixed_sum` imports triton only here.
    if name in _KERNEL_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
