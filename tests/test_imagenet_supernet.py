"""PC-DARTS' ImageNet search network (``stem="imagenet"``) against a literal port of ``model_search_imagenet.py``.

``tests/reference_pcdarts_imagenet.py`` re-states the original ``Network``. For equal weights and
architecture tensors the fastdarts supernet must load its state_dict strictly and give the same
logits, gradients (weights by name, α and β) and genotype. Tiny settings: C=4, 3 and 5 cells,
64×64 inputs (the stem divides by 8, the reductions by 4 more), batch 2.
"""

from __future__ import annotations

import pytest
import reference_pcdarts_imagenet as ref
import torch
import torch.nn as nn

import fastdarts
from fastdarts.spaces.imagenet import ImagenetSupernet, check_image_size

C = 4
ARCH_NAMES = ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]
BACKENDS = ["eager", None]  # None: build_supernet's default backend ("auto": C++ on CPU)


def _build(layers, backend=None, **options):
    if backend is not None:
        options["backend"] = backend
    return fastdarts.build_supernet(space="darts", method="pcdarts", C=C, num_classes=10, layers=layers,
                                    stem="imagenet", **options)


def _reference(layers, seed=0):
    torch.manual_seed(seed)
    net = ref.Network(C, 10, layers, nn.CrossEntropyLoss())
    with torch.no_grad():  # spread α/β (1e-3·N(0,1) at init) so the genotype is not decided by ties
        for a in net.arch_parameters():
            a.copy_(torch.randn_like(a))
    return net


def _double(reference):
    reference.double()
    for a in reference.arch_parameters():
        a.data = a.data.double()
    return reference


def _copy_into(net, reference):
    net.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        for ours, theirs in zip(net.arch_parameters(), reference.arch_parameters(), strict=True):
            ours.copy_(theirs)


def _batch(dtype=torch.float64, size=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size, generator=g, dtype=dtype), torch.randint(0, 10, (2,), generator=g)


def _step(net, x, y):
    net.train()
    net.zero_grad(set_to_none=True)
    for a in net.arch_parameters():
        a.grad = None
    logits = net(x)
    nn.functional.cross_entropy(logits, y).backward()
    return (logits.detach(), {n: p.grad.detach().clone() for n, p in net.named_parameters()},
            [a.grad.detach().clone() for a in net.arch_parameters()])


@pytest.mark.parametrize("layers", [3, 5])
def test_state_dict_layout_matches_original(layers):
    theirs, ours = _reference(layers), _build(layers)
    assert isinstance(ours, ImagenetSupernet)
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == \
        [(k, tuple(v.shape)) for k, v in theirs.state_dict().items()]
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert [tuple(a.shape) for a in ours.arch_parameters()] == [(14, 8), (14, 8), (14,), (14,)]
    assert [getattr(ours, n) is a for n, a in zip(ARCH_NAMES, ours.arch_parameters(), strict=True)] == [True] * 4
    # k=2 by default with this stem (model_search_imagenet.py: C//2 channels through the candidates).
    assert {op.k for cell in ours.cells for op in cell._ops} == {2}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layers", [3, 5])
def test_same_logits_gradients_and_genotype(layers, backend):
    # float64: the default backend fuses the weighted sums and reorders gradient reductions; in float64
    # that rounding is ~1e-15, far inside assert_close's float64 tolerances, on any CPU and thread count.
    theirs = _double(_reference(layers))
    ours = _build(layers, backend).double()
    _copy_into(ours, theirs)
    initial = {n: b.clone() for n, b in ours.named_buffers()}
    x, y = _batch()

    logits_ref, wg_ref, ag_ref = _step(theirs, x, y)
    logits, wg, ag = _step(ours, x, y)

    torch.testing.assert_close(logits, logits_ref)
    assert wg.keys() == wg_ref.keys()
    for name in wg_ref:
        torch.testing.assert_close(wg[name], wg_ref[name], msg=name)
    assert len(ag) == len(ag_ref) == 4
    for a, b in zip(ag, ag_ref, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b)

    # BatchNorm statistics. Stems and preprocessing: the same single update. Inside the edges the
    # original's Cell.forward calls every edge twice (same input, same batch statistics b), so with
    # momentum m it applies r ← (1 − m)r + m·b twice where fastdarts applies it once:
    # r_ref = (2 − m)·r_ours − (1 − m)·r_0 (eliminate b between the two updates; exact algebra, float64).
    ref_bufs = dict(theirs.named_buffers())
    m = 0.1  # nn.BatchNorm2d's default momentum, used by both networks
    edge_bns = 0
    for name, buf in ours.named_buffers():
        inside_edge = "._ops." in name
        if name.endswith("num_batches_tracked"):
            assert int(ref_bufs[name]) == (2 if inside_edge else 1) * int(buf), name
        elif inside_edge:
            torch.testing.assert_close(ref_bufs[name], (2 - m) * buf - (1 - m) * initial[name], msg=name)
            edge_bns += 1
        else:
            torch.testing.assert_close(buf, ref_bufs[name], msg=name)
    assert edge_bns > 0

    g_ref, g = theirs.genotype(), ours.genotype()
    assert [tuple(e) for e in g.normal] == list(g_ref.normal)
    assert [tuple(e) for e in g.reduce] == list(g_ref.reduce)
    assert list(g.normal_concat) == list(g_ref.normal_concat) == [2, 3, 4, 5]


def test_same_seed_same_initialisation():
    # Modules are created, and α/β drawn, in the original's order: one seed, the same initial network.
    torch.manual_seed(11)
    theirs = ref.Network(C, 10, 3, nn.CrossEntropyLoss())
    torch.manual_seed(11)
    ours = _build(3)
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    for a, b in zip(ours.arch_parameters(), theirs.arch_parameters(), strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_recompute_matches_plain():
    # float64: recompute sums the gradients reaching a cell input in another order (rounding only).
    theirs = _double(_reference(3))
    plain, rec = _build(3).double(), _build(3, recompute=True).double()
    _copy_into(plain, theirs)
    _copy_into(rec, theirs)
    x, y = _batch()
    logits0, wg0, ag0 = _step(plain, x, y)
    logits1, wg1, ag1 = _step(rec, x, y)
    torch.testing.assert_close(logits1, logits0)
    for name in wg0:
        torch.testing.assert_close(wg1[name], wg0[name], msg=name)
    for a, b in zip(ag1, ag0, strict=True):
        torch.testing.assert_close(a, b)


def test_cell_inputs_are_a_quarter_and_an_eighth_of_the_image():
    net = _build(3, backend="eager")
    s0, s1 = net._stem_forward(torch.randn(2, 3, 96, 96))
    assert tuple(s0.shape) == (2, 3 * C, 24, 24) and tuple(s1.shape) == (2, 3 * C, 12, 12)


@pytest.mark.parametrize("size, words", [(32, "at least 64 px"), (80, "multiple of 32")])
def test_too_small_or_odd_images_are_one_clear_line(size, words):
    with pytest.raises(ValueError, match=words) as err:
        check_image_size(size)
    assert "\n" not in str(err.value) and f"got {size} px" in str(err.value)
    net = _build(3, backend="eager")
    with pytest.raises(ValueError, match=words):
        net(torch.randn(1, 3, size, size))
    check_image_size(64)
    check_image_size(224)


def test_imagenet_stem_needs_the_quark0_layout():
    with pytest.raises(ValueError, match="no ImageNet stem"):
        fastdarts.build_supernet(space="darts", method="gdas", C=C, layers=3, stem="imagenet")
    with pytest.raises(ValueError, match="no ImageNet stem"):
        fastdarts.build_supernet(space="nb201", method="darts", C=C, layers=1, stem="imagenet")
    with pytest.raises(ValueError, match="unknown stem 'imgnet'"):
        fastdarts.build_supernet(space="darts", method="darts", C=C, layers=3, stem="imgnet")
    # Other methods on the quark0 layout take the stem too (DARTS: full-channel edges).
    net = fastdarts.build_supernet(space="darts", method="darts", C=C, layers=3, stem="imagenet", backend="eager")
    assert net(torch.randn(1, 3, 64, 64)).shape == (1, 10)
