"""The bilevel search loop (thin): data, supernet, method steps, logging, checkpoints, genotypes.

Run directory layout::

    config.yaml        resolved configuration
    search.log         log (also printed)
    metrics.csv        one row per epoch
    tb/                TensorBoard scalars; heat maps and cell diagrams each epoch (arch/*)
    genotypes/epoch_NNN.json, genotype.json (latest)
    arch_history.pt    normalised architecture tensors after every epoch (fastdarts.arch_history)
    plots/             PNG heat maps, trajectories, cell diagrams, curves: fastdarts.viz.plot_run (the CLI
                       ``fastdarts search`` calls it at the end; ``fastdarts plot RUN_DIR`` redraws them)
    checkpoint.pt      atomic, loadable with torch.load(weights_only=True); written each epoch
    subsets.json       ImageFolder data: the weight / architecture file lists (fastdarts.subsets), reused on resume

A run resumed from its checkpoint continues bit for bit on CPU: every epoch's batches
depend only on (seed, epoch), and the checkpoint holds the RNG state, the weights, the
architecture tensors and the optimiser states.

Several processes (``torchrun --nproc_per_node=N -m fastdarts search ...``, or ``search`` called
with the torchrun environment set, ``WORLD_SIZE > 1``): ``data.batch_size`` is the global batch,
each rank takes its contiguous slice of every batch (:meth:`fastdarts.data.EpochLoader.shard`) and
the method averages every gradient over the ranks where it is formed (:mod:`fastdarts.distributed`),
so weights, architecture tensors, optimiser states and sampled gates (one gate seed, broadcast from
rank 0) are the same on every rank after every step, and so is the genotype. Rank 0 alone logs and
writes the run directory; the other ranks log warnings only. The metric reads sum the ranks' metrics
(one all_reduce per read), so the non-finite check stops every rank at the same step. ``sync_bn=true``
(CUDA) turns the supernet's BatchNorm into SyncBatchNorm; without it each rank normalises with its
own slice's statistics. Ctrl-C is not caught there: torchrun stops the ranks at once, and
``--resume`` continues from the last checkpoint (``checkpoint_every`` bounds the steps redone).

Host reads: the step metrics (loss, accuracy, architecture loss) are summed on the device and
read by the host once per ``log_every`` steps (default 50) and at each epoch end, in one small
copy; nothing in the loop waits for the device in between. The non-finite check rides on that
read: each step records on the device whether its loss-type metrics or architecture tensors
hold NaN/inf, and the read raises. With ``on_nonfinite=stop`` (default) a run therefore stops
up to ``log_every − 1`` steps after the bad step (always before that epoch's checkpoint, so the
checkpoint kept is the last good epoch), and the message names the tensor, the epoch and the
bad step. ``on_nonfinite=skip`` snapshots the weights, buffers, architecture tensors and
optimiser states before each step and reads that step's flags at once (one small copy per
step, the price of undoing a bad step exactly); a bad step is undone, logged and counted, and
the run stops at the first bad step after ``max_skipped`` (default 10) were skipped.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import torch
import yaml
from tqdm import tqdm

from fastdarts.arch_history import HISTORY_FILE, ArchHistory, arch_views
from fastdarts.checkpoint import (
    CHECKPOINT,
    check_config_matches,
    check_kind,
    check_state_fits,
    load_checkpoint,
    save_checkpoint,
)
from fastdarts.config import (
    SearchConfig,
    check_search_config,
    default_search_config_path,
    from_dict,
    load_config,
    resolve_search_config,
    to_dict,
)
from fastdarts.data import build_search_data
from fastdarts.determinism import deterministic_mode
from fastdarts.distributed import (
    all_reduce_,
    barrier,
    broadcast_object,
    broadcast_tensors_,
    env_world_size,
    is_distributed,
    is_main,
    process_group,
    rank,
    sync_batchnorm,
    world_size,
)
from fastdarts.genotype import save_genotype
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet
from fastdarts.spaces.imagenet import check_image_size
from fastdarts.subsets import SUBSETS_FILE, save_subsets
from fastdarts.validate import check_run_dir, check_world_size, validate_search_config
from fastdarts.viz import log_arch_figures

log = logging.getLogger("fastdarts")

# Config keys a resumed run must share with its checkpoint: they fix the tensors' shapes and the
# trajectory. Execution choices (device, backend, recompute, logging, epochs to extend) may change.
RESUME_KEYS = ("method", "space", "supernet", "stem", "C", "layers", "seed", "optim", "method_options",
               "data.name", "data.batch_size", "data.train_portion", "data.image_size", "data.augment",
               "data.cutout", "data.color_jitter", "data.subset", "data.arch_subset")


@dataclass
class SearchResult:
    """What :func:`search` returns (on every rank of a multi-process search, with equal values)."""

    genotype: object
    run_dir: str
    test_acc: float
    history: list = field(default_factory=list)
    arch: list = field(default_factory=list)  # final architecture tensors, CPU copies, arch_parameters() order


def get_logger(run_dir: str, filename: str = "search.log") -> logging.Logger:
    """The ``fastdarts`` logger, writing to ``run_dir/filename`` (retraining: ``train.log``) and the console."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_fastdarts", False):
            log.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.FileHandler(os.path.join(run_dir, filename)), logging.StreamHandler()):
        h.setFormatter(fmt)
        h._fastdarts = True
        log.addHandler(h)
    log.propagate = False
    return log


def get_rank_logger() -> logging.Logger:
    """The ``fastdarts`` logger of a rank other than 0: warnings and errors only, on the console, tagged
    with the rank (rank 0 writes the log)."""
    log.setLevel(logging.WARNING)
    for h in list(log.handlers):
        if getattr(h, "_fastdarts", False):
            log.removeHandler(h)
            h.close()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank()}] %(message)s", "%H:%M:%S"))
    handler._fastdarts = True
    log.addHandler(handler)
    log.propagate = False
    return log


@torch.no_grad()
def accuracies(model: torch.nn.Module, loader, device: torch.device, ks: tuple[int, ...] = (1,)) -> list[float]:
    """Top-k accuracies (%) of ``model`` (logits or ``(logits, aux)``) on ``loader`` for each k of ``ks``
    (at most the number of classes), in eval mode."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(ks), dtype=torch.long, device=device)
    total = 0
    for x, y in loader:
        out = model(x.to(device, non_blocking=True))
        logits = out[0] if isinstance(out, tuple) else out
        ranked = logits.topk(max(ks), dim=1).indices  # [B, max k], best first
        hit = ranked == y.to(device, non_blocking=True).view(-1, 1)
        correct += torch.stack([hit[:, :k].any(1).sum() for k in ks])  # read once, at the end
        total += y.numel()
    model.train(was_training)
    return [100.0 * c / max(total, 1) for c in correct.tolist()]


def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy (%) of ``model`` (logits or ``(logits, aux)``) on ``loader``, in eval mode."""
    return accuracies(model, loader, device)[0]


def _coerce_config(config) -> SearchConfig:
    if config is None:
        return load_config(SearchConfig, default_search_config_path())
    if isinstance(config, SearchConfig):
        return config
    if isinstance(config, dict):
        return from_dict(SearchConfig, config)
    if isinstance(config, (str, os.PathLike)):
        return load_config(SearchConfig, os.fspath(config))
    raise TypeError(f"config must be a SearchConfig, dict, YAML path or None, got {type(config).__name__}")


def _default_run_dir(cfg: SearchConfig) -> str:
    data = os.path.basename(os.path.normpath(cfg.data.name))
    return os.path.join("runs", f"{cfg.method}-{cfg.space}-{data}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")


ON_NONFINITE = ("stop", "skip")


COMPILE_CHOICES = ("off", "on")


def compile_enabled(value) -> bool:
    """``compile=`` as a bool: "on"/"off" (YAML 1.1 also reads a bare on/off as True/False)."""
    name = {"true": "on", "false": "off"}.get(str(value).lower(), str(value).lower())
    if name not in COMPILE_CHOICES:
        raise ValueError(f"unknown compile {value!r}; choose one of {COMPILE_CHOICES}")
    return name == "on"


def compile_supernet(model: torch.nn.Module, device: torch.device, **options) -> torch.nn.Module:
    """Compile ``model`` in place with ``torch.compile`` (``nn.Module.compile``) and return it.

    In place, so the module keeps its identity: ``arch_parameters()``, ``genotype()``,
    ``state_dict()`` (no ``_orig_mod.`` prefix) and the method's optimisers see the original
    parameters; only ``model(x)`` runs the compiled forward. CUDA uses ``mode="reduce-overhead"``
    (CUDA graphs: the step is capturable, see DESIGN.md "GPU hot path"); CPU the default mode.
    ``options`` go to ``torch.compile`` (e.g. ``fullgraph=True``).
    """
    if device.type == "cuda":
        options.setdefault("mode", "reduce-overhead")
    model.compile(**options)
    return model


def _check_loop_options(cfg: SearchConfig) -> None:
    """Refuse bad ``log_every`` / ``on_nonfinite`` / ``max_skipped`` before any work starts."""
    if isinstance(cfg.log_every, bool) or not isinstance(cfg.log_every, int) or cfg.log_every < 1:
        raise ValueError(f"log_every must be an integer >= 1 (steps between metric reads), got {cfg.log_every!r}")
    if cfg.on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"unknown on_nonfinite {cfg.on_nonfinite!r}; choose one of {ON_NONFINITE}")
    if isinstance(cfg.max_skipped, bool) or not isinstance(cfg.max_skipped, int) or cfg.max_skipped < 0:
        raise ValueError(f"max_skipped must be an integer >= 0, got {cfg.max_skipped!r}")


def _finite_flags(metrics: dict, arch: list, arch_names: list) -> tuple[tuple[str, ...], torch.Tensor]:
    """Names of the checked quantities (float metrics, then architecture tensors) and a device
    bool vector, True where that quantity has a NaN/inf. No host synchronisation."""
    names = [k for k, v in metrics.items() if v.is_floating_point()]
    values = [metrics[k] for k in names] + list(arch)
    names += [f"architecture tensor {n}" for n in arch_names]
    return tuple(names), ~torch.stack([torch.isfinite(v).all() for v in values])


class _EpochMetrics:
    """One epoch's step metrics, summed on the device and read on the host once per log interval.

    ``add`` sums loss, correct predictions, count and (when the architecture step ran) the
    architecture loss into a float64 device vector (the same float64 sums as adding the values
    on the host). ``note_bad`` records, on the device, the first step of the interval whose
    checked quantities were non-finite and which ones. ``read`` is the interval's single
    device→host copy.
    """

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, correct, count, arch_loss
        self.steps = self.arch_steps = 0
        self.names: tuple[str, ...] | None = None
        self.bad_step = self.bad_flags = None

    def add(self, metrics: dict) -> None:
        parts = [metrics["loss"], metrics["correct"], metrics["count"]]
        if "arch_loss" in metrics:
            parts.append(metrics["arch_loss"])
            self.arch_steps += 1
        self.steps += 1
        self.sums[: len(parts)] += torch.stack([t.to(torch.float64) for t in parts])

    def state_dict(self) -> dict:
        """The partial epoch's sums and counts, for a mid-epoch checkpoint (call after :meth:`read`).

        A multi-process search saves one row of sums per rank (every rank calls this: the rows are
        gathered by a sum of zero-padded rows, which is exact), so that a resume with as many ranks
        continues every rank's own sums and the epoch's metrics come out bit for bit the same.
        """
        sums = self.sums
        if is_distributed():
            sums = torch.zeros(world_size(), sums.numel(), dtype=sums.dtype, device=sums.device)
            sums[rank()] = self.sums
            all_reduce_(sums)
        return {"sums": sums.cpu(), "steps": self.steps, "arch_steps": self.arch_steps}

    def load_state_dict(self, state: dict) -> None:
        saved = state["sums"].reshape(-1, self.sums.numel())  # one row per rank that saved it
        if saved.shape[0] == world_size():
            self.sums.copy_(saved[rank()])
        else:  # resumed with another number of ranks: rank 0 carries the total on
            self.sums.copy_(saved.sum(0) if rank() == 0 else torch.zeros_like(self.sums))
        self.steps, self.arch_steps = int(state["steps"]), int(state["arch_steps"])

    def note_bad(self, names: tuple[str, ...], bad: torch.Tensor, step: int) -> None:
        """Keep the first non-finite step since the last read (``names`` fixed within an interval)."""
        if self.bad_step is None:
            self.names = names
            self.bad_step = torch.full((), -1, dtype=torch.long, device=bad.device)
            self.bad_flags = torch.zeros_like(bad)
        first = bad.any() & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_flags = torch.where(first, bad, self.bad_flags)

    def read(self) -> tuple[list[float], int | None, list[str]]:
        """(sums, first bad step or None, names of its non-finite quantities); resets the bad record.

        In a multi-process search the sums are those of all ranks, with the loss sums divided by the
        number of ranks (means of the ranks' batch means), and the bad step is the first on any rank.
        """
        parts = [self.sums]
        if self.bad_step is not None:
            parts += [self.bad_step.to(torch.float64).reshape(1), self.bad_flags.to(torch.float64)]
        values = torch.cat(parts)
        if is_distributed():
            values = _reduce_metrics(values)
        host = values.tolist()  # the one device→host copy of this interval
        sums, step, bad = host[:4], None, []
        if self.bad_step is not None and host[4] >= 0:
            step = int(host[4])
            bad = [n for n, flag in zip(self.names, host[5:]) if flag]
        self.names = self.bad_step = self.bad_flags = None
        return sums, step, bad

    def read_checked(self, epoch: int, step: int, ckpt_path: str, log_every: int) -> list[float]:
        """:meth:`read` at ``step``; raises FloatingPointError if a step since the last read was non-finite."""
        sums, bad_step, bad = self.read()
        if bad_step is not None:
            raise _nonfinite_error(bad, epoch, bad_step, ckpt_path, os.path.isfile(ckpt_path),
                                   f" (seen at the metric read after step {step}, log_every={log_every})")
        return sums


def _reduce_metrics(values: torch.Tensor) -> torch.Tensor:
    """:meth:`_EpochMetrics.read`'s vector (4 sums, then optionally the bad step and flags) over all ranks:
    the sums added (losses then divided by the ranks), the first bad step and every flag raised."""
    sums = all_reduce_(values[:4].clone())
    sums[0] /= world_size()
    sums[3] /= world_size()
    if values.numel() == 4:
        return sums
    # MAX of −step is −(the smallest bad step); a rank without one sends −inf.
    bad = values[4:].clone()
    bad[0] = torch.where(bad[0] >= 0, -bad[0], torch.full_like(bad[0], -math.inf))
    all_reduce_(bad, "max")
    bad[0] = torch.where(torch.isfinite(bad[0]), -bad[0], torch.full_like(bad[0], -1.0))
    return torch.cat([sums, bad])


class _StepUndo:
    """``on_nonfinite=skip``: snapshot what a step changes, and put it back when the step was bad.

    A step changes the supernet's parameters and buffers (BatchNorm statistics), the
    architecture tensors and the optimisers' states. They are copied before every step and
    restored exactly (an optimiser state created by the bad step is removed again). The gate
    sampler's counter is not rewound: the next step draws new gates, as after any step.
    """

    def __init__(self, model: torch.nn.Module, method):
        self.tensors = [*model.parameters(), *model.buffers(), *method.arch]
        self.optimizers = [v for v in vars(method).values() if isinstance(v, torch.optim.Optimizer)]
        self.saved: list = []
        self.saved_states: list = []

    def snapshot(self) -> None:
        self.saved = [t.detach().clone() for t in self.tensors]
        self.saved_states = [{p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in st.items()}
                              for p, st in opt.state.items()} for opt in self.optimizers]

    @torch.no_grad()
    def restore(self) -> None:
        for t, s in zip(self.tensors, self.saved):
            t.copy_(s)
        for opt, states in zip(self.optimizers, self.saved_states):
            opt.state.clear()
            opt.state.update(states)


def _nonfinite_error(bad: list[str], epoch: int, step: int, ckpt_path: str, has_ckpt: bool,
                     detail: str = "") -> FloatingPointError:
    kept = (f"{ckpt_path} holds the last good epoch (resume with --resume)" if has_ckpt
            else "no checkpoint had been written yet")
    return FloatingPointError(f"non-finite {', '.join(bad)} at epoch {epoch} step {step}{detail}; "
                              f"the run stopped and {kept}")


def search(config=None, *, resume: bool = False) -> SearchResult:
    """Run an architecture search.

    Args:
        config: a :class:`~fastdarts.config.SearchConfig`, a dict of its fields, a YAML path,
            or None for the packaged default (DARTS on the embedded digits data).
        resume: continue from ``run_dir/checkpoint.pt`` (``run_dir`` must be set).

    Returns:
        :class:`SearchResult` with the final genotype, the run directory, the held-out
        top-1 accuracy (%) of the supernet and the final architecture tensors (CPU copies).

    With torchrun's environment (``WORLD_SIZE > 1``) every rank calls this: it joins the process
    group, searches on its slice of each global batch and leaves the group; every rank returns the
    same result, rank 0 alone writes the run directory (see the module docstring).

    Raises:
        ValueError, TypeError, FileNotFoundError, FileExistsError: bad input (also a global batch the
            ranks do not divide, ``sync_bn=true`` off CUDA), before anything is written
            (:mod:`fastdarts.validate`; the run directory is created only once the data, the
            supernet and, on resume, the checkpoint have been checked).
        CheckpointWriteError: a checkpoint could not be written (the previous one is intact).
        KeyboardInterrupt: Ctrl-C; its message says which epoch the checkpoint holds and how to resume.
    """
    cfg = _coerce_config(config)
    device = validate_search_config(cfg)
    # Method defaults fill what the config leaves at None (batch size, epochs, cells, optimisers).
    cfg = resolve_search_config(cfg)
    check_world_size(cfg.data.batch_size, env_world_size())
    if resume and not cfg.run_dir:
        raise ValueError("resume=True needs run_dir= pointing at the run to continue")
    with process_group(device) as device:
        # One run directory for all ranks (a default one carries rank 0's clock).
        cfg.run_dir = broadcast_object(cfg.run_dir or _default_run_dir(cfg))
        check_run_dir(cfg.run_dir, resume=resume, checkpoint=CHECKPOINT)
        # Under torchrun a Ctrl-C stops every rank at once (see the module docstring).
        # cleanup: stops the data loaders' worker processes however the search ends.
        with deterministic_mode(cfg.deterministic, device), CtrlC(enabled=not is_distributed()) as ctrl_c, \
                contextlib.ExitStack() as cleanup:
            try:
                return _search(cfg, resume, ctrl_c, device, cleanup)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(interrupted_message(cfg.run_dir, cfg.epochs)) from None


class CtrlC:
    """SIGINT during the steps of an epoch: the first one is remembered and the loop, at the end of
    the step in progress, writes a mid-epoch checkpoint and stops (a resume continues exactly
    there); a second one, or one outside the steps (data loading, evaluation), stops at once.

    Installed only from the main thread (Python delivers signals there) and when ``enabled``; a no-op
    otherwise.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.armed = False  # True while the epoch loop runs its steps
        self.requested = False
        self._previous = None

    def __enter__(self) -> CtrlC:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if not self.armed or self.requested:
            raise KeyboardInterrupt
        self.requested = True


def interrupted_message(run_dir: str, epochs: int, command: str = "search") -> str:
    """What a Ctrl-C leaves: a mid-epoch checkpoint at the step it stopped after, or the checkpoint of
    the last finished epoch (when it came outside the steps, or twice: those steps are redone)."""
    ckpt = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(ckpt):
        return (f"interrupted before the first epoch ended: no checkpoint was written, start the {command} again "
                f"(run_dir={run_dir})")
    state = load_checkpoint(ckpt)
    done = state["epoch"] + 1
    pos = state.get("position")
    if pos is not None:  # a mid-epoch checkpoint (checkpoint_every): the resume starts at its step
        return (f"interrupted: {ckpt} holds the state after step {pos['step']} of epoch {pos['epoch'] + 1}/{epochs}; "
                f"continue with `fastdarts {command} --resume {run_dir}` (it continues at that step)")
    redone = (f"the steps of epoch {done + 1} are redone" if done < epochs else
              "every epoch is done: it only evaluates and writes the summary")
    return (f"interrupted: {ckpt} holds the state after epoch {done}/{epochs}; continue with "
            f"`fastdarts {command} --resume {run_dir}` ({redone})")


def _resume_state(ckpt_path: str, cfg: SearchConfig, model: torch.nn.Module, method) -> dict:
    """The checkpoint to resume from, checked against this run before anything is loaded or written."""
    state = load_checkpoint(ckpt_path)
    check_kind(state, "search", ckpt_path)
    check_config_matches(state, to_dict(cfg), RESUME_KEYS, ckpt_path)
    check_state_fits(model.state_dict(), state["model"], "model", ckpt_path)
    check_state_fits(model.arch_state_dict(), state["arch"], "arch", ckpt_path)
    return state


def trim_metrics_csv(csv_path: str, epoch: int) -> None:
    """Drop metrics.csv rows of epochs >= ``epoch``: a killed run may have logged an epoch whose
    checkpoint never reached the disk; the resumed run logs it again."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < epoch]
    if len(keep) != len(rows):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerows(keep)


def _checkpoint_state(cfg: SearchConfig, model: torch.nn.Module, method, device: torch.device, epoch: int,
                      history: list, skipped: int, position: dict | None = None) -> dict:
    """What ``checkpoint.pt`` holds: ``epoch`` is the last finished epoch; ``position`` (mid-epoch
    checkpoints only) the epoch in progress, its next step, the architecture-split position and the
    partial metric sums. The method state carries the optimisers and the gate sampler's counter."""
    state = {
        "epoch": epoch, "model": model.state_dict(), "arch": model.arch_state_dict(),
        "method": method.state_dict(), "rng": torch.get_rng_state(), "history": history,
        "skipped_steps": skipped,
        "config": to_dict(cfg),
    }
    if position is not None:
        state["position"] = position
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state()
    return state


def _share_rank0_state(model: torch.nn.Module, method) -> None:
    """Rank 0's weights, buffers, architecture tensors and gate seed/counter on every rank (a no-op in one
    process). The ranks built them from the same seed; this makes their equality a fact, not a hope."""
    if not is_distributed():
        return
    broadcast_tensors_([*model.parameters(), *model.buffers(), *model.arch_parameters()])
    gates = getattr(method, "gates", None)
    if gates is not None:
        gates.load_state_dict(broadcast_object(gates.state_dict()))


def _search(cfg: SearchConfig, resume: bool, ctrl_c: CtrlC, device: torch.device,
            cleanup: contextlib.ExitStack) -> SearchResult:
    """The search itself, on a validated and resolved config, on this rank's ``device`` (see :func:`search`);
    ``cleanup`` closes the data loaders when the caller's ``with`` ends."""
    cfg = resolve_search_config(cfg)  # idempotent: a resolved config resolves to itself
    check_search_config(cfg)
    _check_loop_options(cfg)
    compiled = compile_enabled(cfg.compile)
    method_cls = get_method(cfg.method)
    run_dir = cfg.run_dir
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    main = is_main()  # rank 0 (or the only process) logs and writes the run directory
    torch.manual_seed(cfg.seed)
    # method_options: keys the method knows as hyper-parameters (its DEFAULTS) tune the method,
    # the others (e.g. PC-DARTS' k) configure its supernet.
    hyper_options = {k: v for k, v in cfg.method_options.items() if k in method_cls.DEFAULTS}
    net_options = {k: v for k, v in cfg.method_options.items() if k not in method_cls.DEFAULTS}
    hyper = method_cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs, "layers": cfg.layers,
                                      "batch_size": cfg.data.batch_size, **hyper_options}, cfg.space)
    # DropNAS is single-level by construction; GAEA has it as an option (ERM).
    single_level = bool(hyper.get("single_level", method_cls.single_level))
    # ImageFolder: the weight/architecture file lists of an earlier start of this run are reused.
    subsets_path = os.path.join(run_dir, SUBSETS_FILE)
    data = build_search_data(cfg.data, cfg.seed, single_level=single_level, subsets_file=subsets_path,
                             device=device, channels_last=cfg.channels_last)
    cleanup.callback(data.close)
    if cfg.stem == "imagenet":
        check_image_size(data.image_size)
    if is_distributed():  # each rank trains on its slice of every global batch
        data.train.shard(rank(), world_size())
        data.valid.shard(rank(), world_size())
    model = build_supernet(cfg.space, cfg.method, cfg.C, data.num_classes, cfg.layers, supernet=cfg.supernet,
                           stem=cfg.stem, backend=cfg.backend, recompute=cfg.recompute,
                           in_channels=data.in_channels, **net_options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and is_distributed():
        model = sync_batchnorm(model)
    if compiled:
        compile_supernet(model, device)
    method = method_cls(model, hyper)
    method.set_amp(cfg.amp)
    epochs = hyper["epochs"]
    resume_state = _resume_state(ckpt_path, cfg, model, method) if resume else None
    # Every rank has read the run directory (subsets, checkpoint) before rank 0 writes into it.
    barrier()
    # Only now, with the data, the supernet and the checkpoint checked, is the run directory touched.
    if main:
        os.makedirs(os.path.join(run_dir, "genotypes"), exist_ok=True)
        logger = get_logger(run_dir)
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    else:
        logger = get_rank_logger()
    logger.info("run dir %s | method %s | space %s | data %s (%d/%d/%d images, %d loader workers) | device %s | "
                "%d epochs",
                run_dir, cfg.method, cfg.space, cfg.data.name, data.train.num_samples, data.valid.num_samples,
                data.test.num_samples, data.train.num_workers, device, epochs)
    if is_distributed():
        logger.info("%d ranks: global batch %d, %d per rank; sync_bn %s", world_size(), cfg.data.batch_size,
                    cfg.data.batch_size // world_size(), "on" if cfg.sync_bn else "off (per-rank BatchNorm statistics)")
    elif cfg.sync_bn:
        logger.info("sync_bn=true has no effect in a single process")
    logger.info("hyper-parameters: %s", hyper)
    if data.subsets is not None:
        if not data.subsets_reused and main:
            save_subsets(subsets_path, data.subsets)
        logger.info("weight / architecture images: %d / %d, %s %s", data.train.num_samples, data.valid.num_samples,
                    "listed in" if data.subsets_reused else "drawn from the seed and saved to", subsets_path)

    start_epoch, history, skipped, position = 0, [], 0, None
    if resume:
        state = resume_state
        model.load_state_dict(state["model"])
        model.load_arch_state_dict(state["arch"])
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_epoch, history = state["epoch"] + 1, list(state["history"])
        skipped = int(state.get("skipped_steps", 0))
        position = state.get("position")  # a mid-epoch checkpoint: the epoch, step and loader positions
        if position is not None:
            logger.info("resumed from %s: continuing epoch %d/%d at step %d", ckpt_path, position["epoch"] + 1,
                        epochs, position["step"] + 1)
        else:
            logger.info("resumed from %s: epoch %d/%d was done, continuing with epoch %d", ckpt_path, start_epoch,
                        epochs, start_epoch + 1)
    _share_rank0_state(model, method)

    csv_path = os.path.join(run_dir, "metrics.csv")
    fields = ["epoch", "lr", "train_loss", "train_acc", "arch_loss", "seconds", "genotype"]
    history_path = os.path.join(run_dir, HISTORY_FILE)
    writer = arch_hist = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(os.path.join(run_dir, "tb"))
        if not resume or not os.path.isfile(csv_path):
            with open(csv_path, "w", newline="") as f:
                csv.writer(f).writerow(fields)
        else:
            trim_metrics_csv(csv_path, start_epoch)
        arch_hist = ArchHistory.resume(history_path, start_epoch) if resume else ArchHistory.empty()
        if not len(arch_hist):  # entry 0: the initialisation (or the resumed state of a run without a history)
            arch_hist.append(start_epoch, arch_views(model))
            arch_hist.save(history_path)
    genotype = model.genotype()
    arch = model.arch_parameters()
    arch_names = model.arch_names() if hasattr(model, "arch_names") else [str(i) for i in range(len(arch))]
    undo = _StepUndo(model, method) if cfg.on_nonfinite == "skip" else None

    def save_mid_epoch(epoch: int, next_step: int, valid_pos: int, acc: _EpochMetrics, t0: float) -> None:
        """Steps 0 .. next_step-1 are done: a mid-epoch checkpoint, checked for non-finite values first."""
        acc.read_checked(epoch, next_step - 1, ckpt_path, cfg.log_every)
        metrics_state = acc.state_dict()  # on every rank: the sums of all ranks
        if main:
            save_checkpoint(ckpt_path, _checkpoint_state(
                cfg, model, method, device, epoch - 1, history, skipped,
                {"epoch": epoch, "step": next_step, "valid_pos": valid_pos, "metrics": metrics_state,
                 "seconds": time.time() - t0}))

    def stop_if_asked(epoch: int, step: int, valid_pos: int, acc: _EpochMetrics, t0: float) -> None:
        """After a step: on a pending Ctrl-C, checkpoint here and stop (at the last step the epoch ends first)."""
        if ctrl_c.requested and step + 1 < len(data.train):
            save_mid_epoch(epoch, step + 1, valid_pos, acc, t0)
            raise KeyboardInterrupt

    ctrl_c.armed = True
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        method.begin_epoch(epoch)
        model.train()
        data.train.set_epoch(epoch)
        acc = _EpochMetrics(device)
        # first: the step this epoch starts at (a mid-epoch resume); valid_pos: architecture batches taken
        # from the current pass over the architecture split ("iterate" sampling).
        first = valid_pos = 0
        if position is not None:
            first, valid_pos = int(position["step"]), int(position["valid_pos"])
            acc.load_state_dict(position["metrics"])
            t0 -= float(position["seconds"])
            position = None
        # Batch i of an epoch depends only on (seed, epoch, i): starting at `first` gives the same batches.
        if method.valid_sampling == "random":
            valid_iter = data.valid.random_batches(epoch, start=first)
        else:
            valid_iter = iter(data.valid.iterate(epoch, start=valid_pos))

        bar = tqdm(data.train.iterate(epoch, start=first), desc=f"epoch {epoch + 1}/{epochs}", total=len(data.train),
                   initial=first, leave=False, dynamic_ncols=True, disable=not main)
        step = first - 1
        for step, (xt, yt) in enumerate(bar, start=first):
            if cfg.checkpoint_every and step > first and step % cfg.checkpoint_every == 0:
                save_mid_epoch(epoch, step, valid_pos, acc, t0)
            try:
                xv, yv = next(valid_iter)
                valid_pos += 1
            except StopIteration:  # persistent iteration over a smaller validation split: start over
                valid_iter = iter(data.valid.iterate(epoch))
                xv, yv = next(valid_iter)
                valid_pos = 1
            batch_t, batch_v = (xt, yt), (xv, yv)  # the loaders put them on the device
            if undo is not None:
                undo.snapshot()
            if compiled and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
            metrics = method.step(batch_t, batch_v, step)
            names, bad = _finite_flags(metrics, arch, arch_names)
            if undo is not None:
                # skip: this step's flags are read now (one small copy per step), to undo it at once;
                # every rank undoes a step that was bad on any rank.
                flags = all_reduce_(bad.to(torch.float32), "max").tolist() if is_distributed() else bad.tolist()
                if any(flags):
                    undo.restore()
                    skipped += 1
                    what = ", ".join(n for n, f in zip(names, flags) if f)
                    if skipped > cfg.max_skipped:
                        raise _nonfinite_error([what], epoch, step, ckpt_path, os.path.isfile(ckpt_path),
                                               f" ({skipped} non-finite steps, more than max_skipped="
                                               f"{cfg.max_skipped})")
                    logger.warning("non-finite %s at epoch %d step %d: step skipped (%d of at most %d)",
                                   what, epoch, step, skipped, cfg.max_skipped)
                    stop_if_asked(epoch, step, valid_pos, acc, t0)
                    continue
            else:
                if acc.names is not None and names != acc.names:  # new set of metrics: close the interval
                    acc.read_checked(epoch, step - 1, ckpt_path, cfg.log_every)
                acc.note_bad(names, bad, step)
            acc.add(metrics)
            if (step + 1) % cfg.log_every == 0:
                sums = acc.read_checked(epoch, step, ckpt_path, cfg.log_every)
                bar.set_postfix(loss=f"{sums[0] / max(acc.steps, 1):.3f}")
                logger.info("epoch %d/%d step %d loss %.4f acc %.2f%%", epoch + 1, epochs, step + 1,
                            sums[0] / max(acc.steps, 1), 100.0 * sums[1] / max(sums[2], 1))
            stop_if_asked(epoch, step, valid_pos, acc, t0)
        sums = acc.read_checked(epoch, step, ckpt_path, cfg.log_every)  # epoch end: checked before the checkpoint
        bar.close()
        genotype = model.genotype()
        row = {
            "epoch": epoch, "lr": method.lr,
            "train_loss": sums[0] / max(acc.steps, 1),
            "train_acc": 100.0 * sums[1] / max(sums[2], 1),
            "arch_loss": sums[3] / acc.arch_steps if acc.arch_steps else math.nan,
            "seconds": time.time() - t0,
            "genotype": str(genotype.to_dict()),
        }
        history.append({k: v for k, v in row.items() if k != "genotype"})
        if main:
            with open(csv_path, "a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in fields])
            for k in ("lr", "train_loss", "train_acc", "arch_loss"):
                writer.add_scalar(f"search/{k}", row[k], epoch)
            save_genotype(genotype, os.path.join(run_dir, "genotypes", f"epoch_{epoch:03d}.json"))
            save_genotype(genotype, os.path.join(run_dir, "genotype.json"))
            views = arch_views(model)
            arch_hist.append(epoch + 1, views)
            arch_hist.save(history_path)  # before the checkpoint: a resume drops an entry the checkpoint lacks
            log_arch_figures(writer, views, genotype, run_dir, cfg.method, epoch + 1, epochs)
        logger.info("epoch %d/%d lr %.5f loss %.4f acc %.2f%% arch_loss %.4f (%.1fs)", epoch + 1, epochs, row["lr"],
                    row["train_loss"], row["train_acc"], row["arch_loss"], row["seconds"])
        logger.info("genotype %s", genotype.to_dict())
        if main:
            save_checkpoint(ckpt_path, _checkpoint_state(cfg, model, method, device, epoch, history, skipped))
        if ctrl_c.requested:  # it came during the epoch's last step: stop at its checkpoint
            raise KeyboardInterrupt
    ctrl_c.armed = False  # from here (evaluation, plots) Ctrl-C stops at once
    if writer is not None:
        writer.close()

    test_acc = evaluate(model, data.test, device)  # every rank evaluates the whole (equal) supernet
    logger.info("held-out accuracy of the supernet: %.2f%% (%d images)", test_acc, data.test.num_samples)
    logger.info("final genotype: %s", genotype.to_dict())
    barrier()  # rank 0's last checkpoint is written before any rank returns (and leaves the group)
    arch = [t.detach().cpu().clone() for t in model.arch_parameters()]
    return SearchResult(genotype=genotype, run_dir=run_dir, test_acc=test_acc, history=history, arch=arch)
