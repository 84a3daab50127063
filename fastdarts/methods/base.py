"""The method interface and the first-order DARTS iteration that most methods build on.

A method decides how architecture tensors are parameterised and mixed (its supernet
options), which optimisers it uses with which paper defaults, and what one search
iteration does. The search loop (:mod:`fastdarts.search`) only calls
:meth:`SearchMethod.begin_epoch` and :meth:`SearchMethod.step`.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdarts.distributed import average_gradients, average_grads_
from fastdarts.gates import Mixing


def batch_metrics(loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The weight step's metrics, all on the device of ``y``: loss, correct predictions, batch size.

    The count is a device fill, not ``torch.tensor(n)``, so the loop can sum every metric on the
    device and read them once per log interval.
    """
    return {"loss": loss.detach(), "correct": (logits.argmax(1) == y).sum(),
            "count": torch.full((), y.numel(), dtype=torch.long, device=y.device)}


@contextlib.contextmanager
def requires_grad_disabled(params: list[torch.Tensor]):
    """Temporarily mark ``params`` as not requiring gradients."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def optimizer_impl(params) -> dict[str, bool]:
    """Keyword arguments choosing the SGD / Adam implementation for ``params``.

    ``{"fused": True}`` when every parameter is a floating-point CUDA tensor: the whole update is
    a few fused kernels instead of a Python loop with several launches per tensor (the DARTS
    supernet has hundreds of small tensors). ``{}`` elsewhere: CPU keeps PyTorch's default
    implementation, whose numbers the tests pin.
    """
    params = list(params)
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


class SearchMethod:
    """First-order DARTS (quark0/darts ``train_search.py`` without ``--unrolled``).

    Per iteration: an architecture step on a validation batch (Adam on α), then a weight
    step on a training batch (SGD with momentum, gradient clipping), with the weight LR
    annealed by cosine per epoch.
    """

    name = "darts"
    spaces = ("darts", "s1", "s2", "s3", "s4", "s5", "nb201")
    # quark0/darts cnn/train_search.py argparse defaults. batch_size and layers (cells) fill the
    # search config's data.batch_size / layers when those are None (fastdarts.config).
    DEFAULTS: dict[str, Any] = dict(
        epochs=50, batch_size=64, layers=8,
        w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_weight_decay=3e-4, w_nesterov=False, w_grad_clip=5.0,
        alpha_lr=3e-4, alpha_betas=(0.5, 0.999), alpha_weight_decay=1e-3,
        arch_warmup=0,
        # quark0 calls scheduler.step() at the start of each epoch. On the PyTorch its README pins
        # (0.3.1; also 1.0) the scheduler's constructor resets last_epoch to -1 after its own step,
        # so epoch e runs at cos(π·e/T): 0.025 first. (On PyTorch >= 1.1 the same code runs at
        # e + 1, offset 1.)
        lr_schedule_offset=0,
        step_order="arch_first",  # quark0: architecture step, then weight step
    )
    # NAS-Bench-201 reference settings (D-X-Y configs/nas-benchmark/algos/DARTS.config: batch 64, wd 5e-4,
    # Nesterov; scripts-search/NAS-Bench-201-algos/DARTS-V1.sh: 5 cells per stage).
    # D-X-Y's search loops take the weight step first.
    NB201_DEFAULTS: dict[str, Any] = dict(batch_size=64, layers=5, w_weight_decay=5e-4, w_nesterov=True,
                                          lr_schedule_offset=0, step_order="weight_first")
    single_level = False  # True: weights and architecture both train on the full training set
    # "random": a fresh random validation batch each step (quark0's next(iter(valid_queue)));
    # "iterate": one pass over the validation split in step with the training batches.
    valid_sampling = "random"

    def __init__(self, model: nn.Module, hyper: dict[str, Any]):
        self.model = model
        self.hp = dict(hyper)
        self.weights = [p for p in model.parameters() if p.requires_grad]
        self.arch = model.arch_parameters()
        self.w_optim = torch.optim.SGD(self.weights, lr=self.hp["w_lr"], momentum=self.hp["w_momentum"],
                                       weight_decay=self.hp["w_weight_decay"], nesterov=self.hp["w_nesterov"],
                                       **optimizer_impl(self.weights))
        self.a_optim = self.make_arch_optimizer()
        self.epoch = 0
        self.lr = self.hp["w_lr"]
        self.set_amp("off")

    # ---------------------------------------------------------------- mixed precision
    def set_amp(self, mode: str) -> None:
        """Mixed precision of the supernet forwards: ``"off"``, ``"bf16"`` or ``"fp16"`` (CUDA).

        The candidate ops run under ``torch.autocast`` (:meth:`forward`); the mixing weights are
        computed with autocast off (:func:`fastdarts.gates.autocast_off`), the logits are cast back
        to fp32 before the loss, and regularisers are computed outside autocast, so architecture
        tensors, their gradients and the optimiser states stay fp32. ``fp16`` adds one
        ``torch.amp.GradScaler`` shared by the weight and the architecture step: every loss that is
        differentiated is multiplied by the scale S (:meth:`scaled`), gradients set on parameters
        are unscaled in place by the scaler before clipping, and :meth:`optimizer_step` skips the
        update of a step whose gradients overflowed; :meth:`end_step` adapts S once per iteration.
        Methods that use gradients inside the step (second-order DARTS, Λ-DARTS) unscale them with
        :meth:`unscale`.
        """
        dtypes = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if mode not in dtypes:
            raise ValueError(f"unknown amp {mode!r}; choose one of {tuple(dtypes)}")
        self.amp, self.amp_dtype = mode, dtypes[mode]
        self.device_type = self.arch[0].device.type
        self.scaler = torch.amp.GradScaler(self.device_type) if mode == "fp16" else None

    def autocast(self):
        """The autocast region of a supernet forward (a no-op with ``amp=off``)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Supernet logits of ``x`` under :meth:`autocast`; half-precision logits come back as fp32 (the loss
        is computed in fp32), fp32 and float64 ones are kept (float64 tests stay float64)."""
        with self.autocast():
            out = self.model(x, **kwargs)
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        """``S·loss`` with ``amp=fp16`` (GradScaler), ``loss`` otherwise: the tensor to differentiate."""
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, grads) -> list:
        """Gradients of :meth:`scaled` losses divided by S (None entries kept); identity without fp16.

        S is read as a device tensor (``scaler.scale(1)``), so this costs no host synchronisation;
        an overflow (inf/NaN) stays in the result and makes :meth:`optimizer_step` skip the update.
        """
        if self.scaler is None:
            return list(grads)
        inv = 1.0 / self.scaler.scale(torch.ones((), device=self.arch[0].device))
        return [None if g is None else g * inv for g in grads]

    def gradients(self, loss: torch.Tensor, inputs: list[torch.Tensor], count: int,
                  allow_unused: bool = True) -> list[torch.Tensor | None]:
        """``∇ scaled(loss)`` w.r.t. ``inputs`` (None where unused), averaged over the ranks of a multi-process
        search, weighted by ``count``, the samples ``loss`` is the mean over (:mod:`fastdarts.distributed`).

        Every gradient a method uses goes through here or :meth:`backward`, so each rank reads the
        gradient of the global batch before using it (virtual steps, finite differences, masks).
        """
        grads = torch.autograd.grad(self.scaled(loss), inputs, allow_unused=allow_unused)
        return average_gradients(grads, inputs, count)

    def backward(self, loss: torch.Tensor, inputs: list[torch.Tensor], count: int) -> None:
        """``scaled(loss).backward(inputs=inputs)``, then the ``.grad`` of ``inputs`` averaged over the ranks
        as in :meth:`gradients`."""
        self.scaled(loss).backward(inputs=inputs)
        average_grads_(inputs, count)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, clip: float | None = None) -> None:
        """Unscale (fp16) the gradients of ``optimizer``'s parameters, clip their norm to ``clip``, step.

        With a scaler the step is skipped when the unscaled gradients are not finite. Without
        ``clip`` the scaler's ``step`` unscales (unless :meth:`set_arch_grads` already did).
        """
        if clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)

    def end_step(self) -> None:
        """Close one iteration: the GradScaler adapts its scale (once per iteration, after all steps)."""
        if self.scaler is not None:
            self.scaler.update()

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def mixing(cls, options: dict[str, Any]) -> Mixing:
        """How this method's supernet mixes candidates (softmax of α for DARTS)."""
        return Mixing()

    @classmethod
    def supernet_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments this method passes to the space's supernet constructor."""
        return {"mixing": cls.mixing(options)}

    @classmethod
    def resolve_hyper(cls, overrides: dict[str, Any], space: str = "darts") -> dict[str, Any]:
        """Paper defaults for ``space`` updated with the non-None ``overrides``."""
        hp = dict(cls.DEFAULTS)
        if space == "nb201":
            hp.update(cls.NB201_DEFAULTS)
        hp.update({k: v for k, v in overrides.items() if v is not None})
        hp["alpha_betas"] = tuple(hp["alpha_betas"])
        if hp["step_order"] not in ("arch_first", "weight_first"):
            raise ValueError(f"step_order must be 'arch_first' or 'weight_first', got {hp['step_order']!r}")
        return hp

    def make_arch_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.arch, lr=self.hp["alpha_lr"], betas=self.hp["alpha_betas"],
                                weight_decay=self.hp["alpha_weight_decay"], **optimizer_impl(self.arch))

    # ---------------------------------------------------------------- schedule
    def lr_at(self, epoch: int) -> float:
        """Cosine-annealed weight LR of ``epoch``."""
        T = self.hp["epochs"]
        e = min(epoch + self.hp["lr_schedule_offset"], T)
        lo, hi = self.hp["w_lr_min"], self.hp["w_lr"]
        return lo + (hi - lo) * (1 + math.cos(math.pi * e / T)) / 2

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.lr = self.lr_at(epoch)
        for group in self.w_optim.param_groups:
            group["lr"] = self.lr

    def arch_frozen(self, epoch: int) -> bool:
        return epoch < self.hp["arch_warmup"]

    # ---------------------------------------------------------------- one iteration
    def step(self, train_batch, valid_batch, step: int) -> dict[str, torch.Tensor]:
        """One search iteration: architecture step (unless frozen) and weight step, in ``step_order``."""
        metrics = {}
        if self.hp["step_order"] == "weight_first":
            metrics.update(self.weight_step(*train_batch))
        if not self.arch_frozen(self.epoch):
            metrics.update(self.arch_step(train_batch, valid_batch))
        if self.hp["step_order"] != "weight_first":
            metrics.update(self.weight_step(*train_batch))
        self.end_step()
        return metrics

    def criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    def arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss whose gradient w.r.t. α drives the architecture step (methods add regularisers)."""
        return self.criterion(self.forward(x), y)

    def set_arch_grads(self, grads) -> None:
        """Set the architecture gradients (of a :meth:`scaled` loss) and, with fp16, unscale them in
        place, so overrides that clip them (PC-DARTS) see true gradients."""
        for p, g in zip(self.arch, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        if self.scaler is not None:
            self.scaler.unscale_(self.a_optim)

    def arch_step(self, train_batch, valid_batch) -> dict[str, torch.Tensor]:
        x, y = valid_batch
        # Only α needs gradients: with the weights marked as not requiring grad, no weight-gradient
        # work is done (recomputed cells included, which otherwise see every parameter as an input).
        with requires_grad_disabled(self.weights):
            loss = self.arch_loss(x, y)
            self.set_arch_grads(self.gradients(loss, self.arch, y.shape[0]))
        self.optimizer_step(self.a_optim)
        return {"arch_loss": loss.detach()}

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        self.w_optim.zero_grad(set_to_none=True)
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        self.backward(loss, self.weights, y.shape[0])
        self.optimizer_step(self.w_optim, self.hp["w_grad_clip"])
        return batch_metrics(loss, logits, y)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        state = {"w_optim": self.w_optim.state_dict(), "a_optim": self.a_optim.state_dict(), "epoch": self.epoch}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_optim.load_state_dict(state["w_optim"])
        self.a_optim.load_state_dict(state["a_optim"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.begin_epoch(state["epoch"])
