"""The bilevel search loop (thin): data, supernet, method steps, logging, checkpoints, genotypes.

Run directory layout::

    config.yaml        resolved configuration
    search.log         log (also printed)
    metrics.csv        one row per epoch
    tb/                TensorBoard scalars
    genotypes/epoch_NNN.json, genotype.json (latest)
    checkpoint.pt      atomic, loadable with torch.load(weights_only=True); written each epoch

A run resumed from its checkpoint continues bit for bit on CPU: every epoch's batches
depend only on (seed, epoch), and the checkpoint holds the RNG state, the weights, the
architecture tensors and the optimiser states.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import yaml
from tqdm import tqdm

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
from fastdarts.genotype import save_genotype
from fastdarts.methods import get_method
from fastdarts.spaces import build_supernet

log = logging.getLogger("fastdarts")

CHECKPOINT = "checkpoint.pt"


@dataclass
class SearchResult:
    genotype: object
    run_dir: str
    test_acc: float
    history: list = field(default_factory=list)


def get_logger(run_dir: str) -> logging.Logger:
    """The ``fastdarts`` logger, writing to ``run_dir/search.log`` and the console."""
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        if getattr(h, "_fastdarts", False):
            log.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.FileHandler(os.path.join(run_dir, "search.log")), logging.StreamHandler()):
        h.setFormatter(fmt)
        h._fastdarts = True
        log.addHandler(h)
    log.propagate = False
    return log


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def save_checkpoint(path: str, state: dict) -> None:
    """Write ``state`` atomically (temporary file + rename): a crash never leaves a torn checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt files
        raise RuntimeError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {err})") from err


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> float:
    """Top-1 accuracy (%) of ``model`` (logits or ``(logits, aux)``) on ``loader``, in eval mode."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        out = model(x.to(device))
        logits = out[0] if isinstance(out, tuple) else out
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


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


def _check_finite(metrics: dict, arch: list, epoch: int, step: int, run_dir: str) -> None:
    bad = [k for k, v in metrics.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    bad += [f"architecture tensor {i}" for i, a in enumerate(arch) if not torch.isfinite(a).all()]
    if bad:
        raise FloatingPointError(
            f"non-finite {', '.join(bad)} at epoch {epoch} step {step}; the run stopped and "
            f"{os.path.join(run_dir, CHECKPOINT)} holds the last good epoch (resume with --resume)")


def search(config=None, *, resume: bool = False) -> SearchResult:
    """Run an architecture search.

    Args:
        config: a :class:`~fastdarts.config.SearchConfig`, a dict of its fields, a YAML path,
            or None for the packaged default (DARTS on the embedded digits data).
        resume: continue from ``run_dir/checkpoint.pt`` (``run_dir`` must be set).

    Returns:
        :class:`SearchResult` with the final genotype, the run directory and the held-out
        top-1 accuracy (%) of the supernet.
    """
    # Method defaults fill what the config leaves at None (batch size, epochs, cells, optimisers).
    cfg = resolve_search_config(_coerce_config(config))
    check_search_config(cfg)
    method_cls = get_method(cfg.method)
    if resume and not cfg.run_dir:
        raise ValueError("resume=True needs run_dir= pointing at the run to continue")
    run_dir = cfg.run_dir or _default_run_dir(cfg)
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    if resume and not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"cannot resume: {ckpt_path} not found")
    if not resume and os.path.isfile(ckpt_path):
        raise FileExistsError(f"{run_dir} already holds a checkpoint; pass --resume to continue it "
                              f"or choose another run_dir=")
    os.makedirs(os.path.join(run_dir, "genotypes"), exist_ok=True)
    logger = get_logger(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # method_options: keys the method knows as hyper-parameters (its DEFAULTS) tune the method,
    # the others (e.g. PC-DARTS' k) configure its supernet.
    hyper_options = {k: v for k, v in cfg.method_options.items() if k in method_cls.DEFAULTS}
    net_options = {k: v for k, v in cfg.method_options.items() if k not in method_cls.DEFAULTS}
    hyper = method_cls.resolve_hyper({**to_dict(cfg.optim), "epochs": cfg.epochs, "layers": cfg.layers,
                                      "batch_size": cfg.data.batch_size, **hyper_options}, cfg.space)
    # DropNAS is single-level by construction; GAEA has it as an option (ERM).
    single_level = bool(hyper.get("single_level", method_cls.single_level))
    data = build_search_data(cfg.data, cfg.seed, single_level=single_level)
    model = build_supernet(cfg.space, cfg.method, cfg.C, data.num_classes, cfg.layers, supernet=cfg.supernet,
                           backend=cfg.backend, recompute=cfg.recompute, in_channels=data.in_channels,
                           **net_options).to(device)
    method = method_cls(model, hyper)
    epochs = hyper["epochs"]
    logger.info("run dir %s | method %s | space %s | data %s (%d/%d/%d images) | device %s | %d epochs",
                run_dir, cfg.method, cfg.space, cfg.data.name, data.train.num_samples, data.valid.num_samples,
                data.test.num_samples, device, epochs)
    logger.info("hyper-parameters: %s", hyper)

    start_epoch, history = 0, []
    if resume:
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        model.load_arch_state_dict(state["arch"])
        method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"])
        start_epoch, history = state["epoch"] + 1, list(state["history"])
        logger.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(run_dir, "tb"))
    csv_path = os.path.join(run_dir, "metrics.csv")
    fields = ["epoch", "lr", "train_loss", "train_acc", "arch_loss", "seconds", "genotype"]
    if not resume or not os.path.isfile(csv_path):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)

    genotype = model.genotype()
    arch = model.arch_parameters()
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        method.begin_epoch(epoch)
        model.train()
        data.train.set_epoch(epoch)
        sums = {"loss": 0.0, "arch_loss": 0.0, "correct": 0, "count": 0, "steps": 0, "arch_steps": 0}
        if method.valid_sampling == "random":
            valid_iter = data.valid.random_batches(epoch)
        else:
            valid_iter = iter(data.valid.iterate(epoch))
        bar = tqdm(data.train, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
        for step, (xt, yt) in enumerate(bar):
            try:
                xv, yv = next(valid_iter)
            except StopIteration:  # persistent iteration over a smaller validation split: start over
                valid_iter = iter(data.valid.iterate(epoch))
                xv, yv = next(valid_iter)
            batch_t = (xt.to(device, non_blocking=True), yt.to(device, non_blocking=True))
            batch_v = (xv.to(device, non_blocking=True), yv.to(device, non_blocking=True))
            metrics = method.step(batch_t, batch_v, step)
            _check_finite(metrics, arch, epoch, step, run_dir)
            sums["loss"] += metrics["loss"].item()
            sums["correct"] += int(metrics["correct"])
            sums["count"] += int(metrics["count"])
            sums["steps"] += 1
            if "arch_loss" in metrics:
                sums["arch_loss"] += metrics["arch_loss"].item()
                sums["arch_steps"] += 1
            bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.3f}")
        bar.close()
        genotype = model.genotype()
        row = {
            "epoch": epoch, "lr": method.lr,
            "train_loss": sums["loss"] / max(sums["steps"], 1),
            "train_acc": 100.0 * sums["correct"] / max(sums["count"], 1),
            "arch_loss": sums["arch_loss"] / sums["arch_steps"] if sums["arch_steps"] else math.nan,
            "seconds": time.time() - t0,
            "genotype": str(genotype.to_dict()),
        }
        history.append({k: v for k, v in row.items() if k != "genotype"})
        with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in fields])
        for k in ("lr", "train_loss", "train_acc", "arch_loss"):
            writer.add_scalar(f"search/{k}", row[k], epoch)
        save_genotype(genotype, os.path.join(run_dir, "genotypes", f"epoch_{epoch:03d}.json"))
        save_genotype(genotype, os.path.join(run_dir, "genotype.json"))
        logger.info("epoch %d/%d lr %.5f loss %.4f acc %.2f%% arch_loss %.4f (%.1fs)", epoch + 1, epochs, row["lr"],
                    row["train_loss"], row["train_acc"], row["arch_loss"], row["seconds"])
        logger.info("genotype %s", genotype.to_dict())
        state = {
            "epoch": epoch, "model": model.state_dict(), "arch": model.arch_state_dict(),
            "method": method.state_dict(), "rng": torch.get_rng_state(), "history": history,
            "config": to_dict(cfg),
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state()
        save_checkpoint(ckpt_path, state)
    writer.close()

    test_acc = evaluate(model, data.test, device)
    logger.info("held-out accuracy of the supernet: %.2f%% (%d images)", test_acc, data.test.num_samples)
    logger.info("final genotype: %s", genotype.to_dict())
    return SearchResult(genotype=genotype, run_dir=run_dir, test_acc=test_acc, history=history)
