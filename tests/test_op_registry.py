"""Every ``fastdarts::`` operator is covered by an ``opcheck`` test (STYLE.md item 14).

The C++ ops are opchecked in ``test_cpp_ops.py`` (enumerated from ``_ext.CPP_OPS``), the Triton
ops in ``test_triton_mixed_sum.py``. A new op must be added to one of those lists, or this fails.
"""

import pytest
import torch

import fastdarts  # noqa: F401  (loads the extension)
from fastdarts import _ext
from fastdarts.kernels import has_triton

TRITON_OPCHECKED = {"fastdarts::mixed_sum_triton", "fastdarts::mixed_sum_triton_backward"}


@pytest.mark.skipif(not (_ext.cpp_available() and has_triton()), reason="needs fastdarts._C and triton")
def test_every_fastdarts_op_has_an_opcheck_test():
    import fastdarts.kernels.gates  # noqa: F401
    import fastdarts.kernels.mixed_sum  # noqa: F401

    registered = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdarts::")}
    assert registered == set(_ext.cpp_op_names()) | TRITON_OPCHECKED
