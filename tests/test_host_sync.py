"""No host round trip inside a search step (DESIGN.md, "GPU hot path").

The functions and methods that copy between host and device, or read a device value on the
host, are patched for the whole process (so calls from library code count, wherever they
are made) around one training-mode step of each method:

* softmax-mixed methods (DARTS, DARTS-2nd, PC-DARTS, GAEA, GAEA-PC-DARTS, Λ-DARTS) make none;
* sampled-gate methods (PR-DARTS, DropNAS, GDAS) make exactly one ``.tolist()`` per supernet
  forward (the keep masks of all edges of all cell types) and nothing else.

The supernet, the method and the batches are built, and one step is run, before patching: the
first step creates the optimisers' state (``torch.tensor(0.)`` step counters in torch) and the
small per-device index tensors; the patched step is the one every later step repeats. On CPU,
backend "auto" runs the C++ kernels; on CUDA the same code runs Triton/CUDA kernels.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter

import pytest
import torch

import fastdarts
from fastdarts.methods import get_method

# (owner, attribute): every Python-level way the library could move data between host and device.
PATCHED = [
    (torch, "tensor"), (torch, "as_tensor"),
    (torch.Tensor, "item"), (torch.Tensor, "tolist"), (torch.Tensor, "__bool__"), (torch.Tensor, "nonzero"),
    (torch.Tensor, "cpu"), (torch.Tensor, "numpy"),
    # int()/float()/index use of a tensor read its value on the host like .item().
    (torch.Tensor, "__int__"), (torch.Tensor, "__float__"), (torch.Tensor, "__index__"),
]

FASTDARTS_DIR = os.path.dirname(fastdarts.__file__)


def _optimizer_step_counters(method) -> set[int]:
    """ids of the CPU step counters of torch's (non-fused) optimisers.

    torch keeps ``state["step"]`` of SGD/Adam as a CPU scalar unless the optimiser is fused or
    capturable, and reads it with ``.item()`` every step: a host-side read, no device round trip
    (on CUDA these counters stay on the CPU too). Those reads are not counted.
    """
    ids = set()
    for opt in vars(method).values():
        if isinstance(opt, torch.optim.Optimizer):
            for st in opt.state.values():
                step = st.get("step")
                if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                    ids.add(id(step))
    return ids


@contextlib.contextmanager
def count_host_syncs(ignore_ids: set[int]):
    """Patch :data:`PATCHED` process-wide; yields a Counter of ``"name (file:line)"`` → calls."""
    calls: Counter = Counter()
    saved = []

    def wrap(name, fn):
        def counted(*args, **kwargs):
            if not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in ignore_ids):
                frame = sys._getframe(1)
                calls[f"{name} ({os.path.relpath(frame.f_code.co_filename)}:{frame.f_lineno})"] += 1
            return fn(*args, **kwargs)

        return counted

    for owner, attr in PATCHED:
        had = attr in vars(owner)
        original = getattr(owner, attr)
        saved.append((owner, attr, had, vars(owner).get(attr)))
        setattr(owner, attr, wrap(attr, original))
    try:
        yield calls
    finally:
        for owner, attr, had, value in reversed(saved):
            if had:
                setattr(owner, attr, value)
            else:
                delattr(owner, attr)


def _batches(seed: int, n: int = 2, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    return make(), make()


def _setup(method: str, space: str, layers: int, epoch: int = 0, **net):
    torch.manual_seed(0)
    cls = get_method(method)
    model = fastdarts.build_supernet(space, method, C=4, num_classes=10, layers=layers, backend="auto", **net)
    # arch_warmup=0: PC-DARTS freezes the architecture for 15 epochs by default; the arch step must run.
    hp = cls.resolve_hyper({"epochs": 3, "arch_warmup": 0}, space)
    m = cls(model, hp)
    m.begin_epoch(epoch)
    model.train()
    return model, m


def _run_patched_step(model, m):
    """Warm-up step, then one counted step; returns (calls, number of supernet forwards)."""
    (xt, yt), (xv, yv) = _batches(1)
    m.step((xt, yt), (xv, yv), 0)  # creates optimiser state and cached index tensors
    (xt, yt), (xv, yv) = _batches(2)
    forwards = []
    hook = model.register_forward_pre_hook(lambda mod, args: forwards.append(1))
    try:
        with count_host_syncs(_optimizer_step_counters(m)) as calls:
            metrics = m.step((xt, yt), (xv, yv), 1)
    finally:
        hook.remove()
    assert metrics["loss"].dim() == 0
    return dict(calls), len(forwards)


SOFTMAX_CASES = [
    # (method, space, layers, epoch, supernet options)
    ("darts", "darts", 3, 0, {}),
    ("darts", "darts", 3, 0, {"recompute": True}),
    ("darts", "nb201", 1, 0, {}),
    ("darts2", "darts", 3, 0, {}),
    ("pcdarts", "darts", 3, 0, {}),
    ("gaea", "darts", 3, 0, {}),
    ("gaea", "nb201", 1, 0, {}),
    ("gaea_pcdarts", "darts", 3, 0, {}),
    # 5 cells: 3 normal cells, so the alignment term is active; epoch 1 makes λ_t > 0.
    ("lambda_darts", "darts", 5, 1, {}),
    ("lambda_darts", "nb201", 1, 1, {}),
]


@pytest.mark.parametrize("method,space,layers,epoch,net", SOFTMAX_CASES,
                         ids=[f"{c[0]}-{c[1]}{'-recompute' if c[4] else ''}" for c in SOFTMAX_CASES])
def test_softmax_mixed_step_has_no_host_round_trip(method, space, layers, epoch, net):
    model, m = _setup(method, space, layers, epoch, **net)
    calls, forwards = _run_patched_step(model, m)
    assert forwards >= 2  # both the architecture and the weight step ran
    assert calls == {}, f"{method} on {space}: host round trips {calls}"


SAMPLED_CASES = [("prdarts", "darts", 3), ("dropnas", "darts", 3), ("gdas", "darts", 3), ("gdas", "nb201", 1)]


@pytest.mark.parametrize("method,space,layers", SAMPLED_CASES, ids=[f"{c[0]}-{c[1]}" for c in SAMPLED_CASES])
def test_sampled_gate_step_copies_once_per_forward(method, space, layers):
    model, m = _setup(method, space, layers)
    calls, forwards = _run_patched_step(model, m)
    assert forwards >= 1
    gates_file = os.path.relpath(os.path.join(FASTDARTS_DIR, "gates.py"))
    copies = {k: v for k, v in calls.items() if k.startswith(f"tolist ({gates_file}:")}
    others = {k: v for k, v in calls.items() if k not in copies}
    assert others == {}, f"{method} on {space}: host round trips besides the gate copy {others}"
    assert sum(copies.values()) == forwards, f"{method}: {copies} for {forwards} forwards"


def test_counter_sees_library_calls():
    """The patch counts calls made inside library code (a supernet with a sampler copies in gates.py)."""
    model, m = _setup("gdas", "darts", 3)
    x = torch.randn(2, 3, 8, 8)
    with count_host_syncs(set()) as calls:
        model(x)
        torch.ones(2).sum().item()
    assert sum(v for k, v in calls.items() if k.startswith("tolist (")) == 1
    assert sum(v for k, v in calls.items() if k.startswith("item (")) == 1
