"""Tests of the candidate operations and the primitive registry (``fastdarts.ops``).

The DARTS primitives are compared with ``tests/reference_darts.py`` (a literal copy of
quark0/darts ``cnn/operations.py``): same state_dict keys and shapes. Every primitive keeps
the channel count and divides the (even) spatial size by its stride.
"""

from __future__ import annotations

import pytest
import reference_darts as ref
import torch
import torch.nn as nn

import fastdarts
from fastdarts import ops as fops

DARTS_PRIMS = list(ref.PRIMITIVES)
NB201_ONLY = ["nor_conv_1x1", "nor_conv_3x3"]
# Primitives with a quark0 counterpart in reference_darts.OPS (the 8 DARTS ones and the extras).
QUARK0_PRIMS = DARTS_PRIMS + ["sep_conv_7x7", "conv_7x1_1x7"]
C = 8


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_default_primitive_lists():
    assert tuple(fops.DARTS_PRIMITIVES) == tuple(ref.PRIMITIVES)
    assert tuple(fops.NB201_PRIMITIVES) == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", QUARK0_PRIMS + NB201_ONLY + ["noise"])
def test_primitive_shape(name, stride, affine):
    torch.manual_seed(0)
    op = fops.OPS[name](C, stride, affine)
    x = torch.randn(2, C, 8, 8)
    y = op(x)
    assert y.shape == (2, C, 8 // stride, 8 // stride)
    assert y.dtype == x.dtype


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", DARTS_PRIMS)
def test_search_op_shape(name, stride):
    # The search-cell version (affine-free BN, pools followed by BN) keeps shapes too.
    torch.manual_seed(0)
    op = fops.make_search_op(name, C, stride)
    y = op(torch.randn(2, C, 8, 8))
    assert y.shape == (2, C, 8 // stride, 8 // stride)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", QUARK0_PRIMS)
def test_primitive_state_dict_matches_quark0(name, stride, affine):
    ours = fops.OPS[name](C, stride, affine)
    theirs = ref.OPS[name](C, stride, affine)
    assert list(_shapes(ours).items()) == list(_shapes(theirs).items())
    ours.load_state_dict(theirs.state_dict(), strict=True)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", QUARK0_PRIMS)
def test_primitive_numbers_match_quark0(name, stride):
    # Same layout and same weights must give the same function (train mode, batch statistics).
    torch.manual_seed(1)
    theirs = ref.OPS[name](C, stride, False)
    ours = fops.OPS[name](C, stride, False)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, C, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_zero_is_exactly_zero_and_keeps_grad_path():
    x = torch.randn(2, C, 8, 8, requires_grad=True)
    y = fops.OPS["none"](C, 2, False)(x)
    assert torch.count_nonzero(y) == 0
    y.sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_factorized_reduce_needs_even_channels():
    with pytest.raises(ValueError, match="even"):
        fops.FactorizedReduce(4, 5)


def test_nb201_conv_has_bias_only_without_affine():
    # D-X-Y's ReLUConvBN uses bias=not affine.
    assert fops.OPS["nor_conv_3x3"](C, 1, False).op[1].bias is not None
    assert fops.OPS["nor_conv_3x3"](C, 1, True).op[1].bias is None
    keys = set(fops.OPS["nor_conv_1x1"](C, 1, True).state_dict())
    assert keys == {"op.1.weight", "op.2.weight", "op.2.bias", "op.2.running_mean", "op.2.running_var",
                    "op.2.num_batches_tracked"}


@pytest.mark.parametrize("stride", [1, 2])
def test_noise_is_fresh_and_detached(stride):
    op = fops.OPS["noise"](C, stride, False)
    x = torch.zeros(2, C, 8, 8, requires_grad=True)
    torch.manual_seed(3)
    a = op(x)
    b = op(x)
    assert not a.requires_grad
    assert not torch.equal(a, b)
    assert a.std() > 0.5  # N(0, 1), not a function of the (all-zero) input
    torch.manual_seed(3)
    torch.testing.assert_close(op(x), a)  # driven by the global RNG


# ---------------------------------------------------------------------------------------------
# register_primitive


class _Scale(nn.Module):
    """A custom candidate: a strided 1x1 conv (C -> C)."""

    def __init__(self, C_, stride):
        super().__init__()
        self.conv = nn.Conv2d(C_, C_, 1, stride=stride, bias=False)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def my_op():
    name = "my_op_test_ops"
    assert name not in fops.OPS
    fastdarts.ops.register_primitive(name, lambda C_, stride, affine: _Scale(C_, stride))
    try:
        yield name
    finally:
        fops.OPS.pop(name, None)


@pytest.mark.parametrize("backend", ["eager", "auto"])
@pytest.mark.parametrize("stride", [1, 2])
def test_registered_primitive_usable_in_mixed_op(my_op, stride, backend):
    torch.manual_seed(0)
    m = fastdarts.MixedOp(C, stride, primitives=["none", "skip_connect", my_op], backend=backend)
    assert isinstance(m._ops[2], _Scale)
    assert "_ops.2.conv.weight" in m.state_dict()
    m.double()  # float64: the fused kernel may add the weighted terms in another order
    x = torch.randn(2, C, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64, requires_grad=True)
    y = m(x, w)
    expected = w[1] * m._ops[1](x) + w[2] * m._ops[2].conv(x)
    torch.testing.assert_close(y, expected)
    y.square().sum().backward()
    assert m._ops[2].conv.weight.grad is not None
    assert w.grad.shape == (3,)


def test_register_primitive_duplicate_raises(my_op):
    with pytest.raises(ValueError, match=my_op):
        fastdarts.ops.register_primitive(my_op, lambda C_, stride, affine: _Scale(C_, stride))
    with pytest.raises(ValueError, match="sep_conv_3x3"):
        fastdarts.ops.register_primitive("sep_conv_3x3", lambda C_, stride, affine: _Scale(C_, stride))
    # The built-in was not replaced.
    assert isinstance(fops.OPS["sep_conv_3x3"](C, 1, False), fops.SepConv)


def test_register_primitive_overwrite(my_op):
    fastdarts.ops.register_primitive(my_op, lambda C_, stride, affine: fops.Identity(), overwrite=True)
    assert isinstance(fops.OPS[my_op](C, 1, False), fops.Identity)


def test_register_primitive_needs_callable():
    with pytest.raises(TypeError, match="not_callable_op"):
        fastdarts.ops.register_primitive("not_callable_op", 3)
    assert "not_callable_op" not in fops.OPS


def test_unknown_primitive_raises_with_name():
    with pytest.raises(ValueError, match="bogus_prim"):
        fastdarts.MixedOp(C, 1, primitives=["none", "bogus_prim"])
    with pytest.raises(ValueError, match="bogus_prim"):
        fastdarts.PartialMixedOp(C, 1, primitives=["bogus_prim"])
    with pytest.raises(ValueError, match="bogus_prim"):
        fops.make_search_op("bogus_prim", C, 1)
    with pytest.raises(ValueError):
        fastdarts.MixedOp(C, 1, primitives=[])
