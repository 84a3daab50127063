"""Literal ports of the PyTorch 0.3.1 LR schedulers quark0/darts ran with (its README pins 0.3.1;
PC-DARTS' V100 branch and DropNAS pin 1.0, whose ``_LRScheduler`` behaves the same here).

``_LRScheduler.__init__`` calls ``self.step(last_epoch + 1)`` and then sets
``self.last_epoch = last_epoch`` (-1), so the ``scheduler.step()`` these codes call at the start
of epoch e sets ``last_epoch = e``: epoch e runs at the schedule's value at e (on PyTorch >= 1.1
the constructor no longer resets it, and the same loop runs at e + 1).
"""

import math


class Scheduler031:
    """``scheduler.step()`` at each epoch start returns that epoch's LR."""

    def __init__(self, lr_at_epoch):
        self.lr_at_epoch = lr_at_epoch
        self.last_epoch = -1  # what the constructor leaves behind

    def step(self) -> float:
        self.last_epoch += 1
        return self.lr_at_epoch(self.last_epoch)


def cosine_annealing(base_lr: float, eta_min: float, T_max: float) -> Scheduler031:
    """``CosineAnnealingLR(optimizer, T_max, eta_min)`` of PyTorch 0.3.1 (its closed form)."""
    return Scheduler031(lambda e: eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * e / T_max)) / 2)


def step_lr(base_lr: float, step_size: int, gamma: float) -> Scheduler031:
    """``StepLR(optimizer, step_size, gamma)`` of PyTorch 0.3.1."""
    return Scheduler031(lambda e: base_lr * gamma ** (e // step_size))
