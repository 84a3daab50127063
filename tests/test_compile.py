"""``compile=on``: a ``torch.compile``'d supernet gives the eager numbers (DESIGN.md "GPU hot path").

The supernets are compiled in place with inductor and ``fullgraph=True``: a graph break anywhere in
the forward (or a custom op without a fake kernel) fails the test. They are as small as the search
space allows (C=4, one node per cell, 3 cells = 1 normal + 2 reduction, 4 candidates incl. a pool
and a separable conv, 8x8 inputs): inductor's C++ code generation on a 2-core CPU costs about a
minute of CPU time per graph, and each supernet compiles two (the architecture step runs with the
weights frozen, a different autograd graph).

Tolerance: float64 throughout; compiled and eager programs compute the same operations but may
associate sums differently (fused reductions, batch-norm statistics). A reassociated sum of n
terms differs by at most about n·eps·Σ|terms| (eps = 2.2e-16); the largest sum here has
2·4·8·8 = 512 terms, so 1e-13 relative per reduction, and the ≤ 12 normalising layers a value
passes through amplify it by far less than 10^4. rtol = 1e-9 (and atol = 1e-12 for entries that
are zero up to such errors) therefore bounds the reordering error with margin while any
wrong formula would show up at O(1).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts.methods import get_method
from fastdarts.search import compile_enabled, compile_supernet

PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
RTOL, ATOL = 1e-9, 1e-12


def _supernet(method: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"k": 2} if method == "pcdarts" else {}
    return fastdarts.build_supernet("darts", method, C=4, num_classes=10, layers=3, steps=1, multiplier=1,
                                    primitives=PRIMITIVES, backend="auto", **options).double()


def _runner(method: str, model):
    cls = get_method(method)
    runner = cls(model, cls.resolve_hyper({"epochs": 50}))
    runner.begin_epoch(runner.hp["arch_warmup"])  # past PC-DARTS' warm-up: both steps run
    return runner


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (2,), generator=g)


def _close(a, b, what):
    torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("method", ["darts", "pcdarts"])
def test_compiled_supernet_matches_eager_over_three_search_steps(method):
    torch._dynamo.reset()
    eager = _supernet(method)
    compiled = compile_supernet(copy.deepcopy(eager), torch.device("cpu"), fullgraph=True)
    # in place: same module type, state_dict keys (no _orig_mod.), architecture tensors
    assert type(compiled) is type(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert len(compiled.arch_parameters()) == len(eager.arch_parameters())
    runners = [_runner(method, eager), _runner(method, compiled)]
    for step in range(3):
        train, valid = _batch(2 * step), _batch(2 * step + 1)
        # logits and the gradients of every weight and architecture tensor
        results = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            for a in model.arch_parameters():
                a.grad = None
            logits = model(valid[0])
            F.cross_entropy(logits, valid[1]).backward()
            grads = [p.grad for p in model.parameters()] + [a.grad for a in model.arch_parameters()]
            results.append((logits.detach(), grads))
        _close(results[1][0], results[0][0], f"step {step}: logits")
        for i, (g_c, g_e) in enumerate(zip(results[1][1], results[0][1], strict=True)):
            assert (g_c is None) == (g_e is None), f"step {step}: gradient {i} present in one model only"
            if g_e is not None:
                _close(g_c, g_e, f"step {step}: gradient {i}")
        # one search step (architecture step on `valid`, weight step on `train`) on both
        for model, runner in zip((eager, compiled), runners):
            model.zero_grad(set_to_none=True)
            runner.step(train, valid, step)
        for (name, v_c), v_e in zip(compiled.state_dict().items(), eager.state_dict().values(), strict=True):
            _close(v_c, v_e, f"after step {step}: {name}")
        for i, (a_c, a_e) in enumerate(zip(compiled.arch_parameters(), eager.arch_parameters(), strict=True)):
            _close(a_c, a_e, f"after step {step}: architecture tensor {i}")
    assert compiled.genotype() == eager.genotype()


def test_compile_flag_values():
    assert compile_enabled("on") and compile_enabled("ON") and compile_enabled(True)
    assert not compile_enabled("off") and not compile_enabled(False)
    with pytest.raises(ValueError, match="unknown compile 'fast'"):
        compile_enabled("fast")
