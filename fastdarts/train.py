"""Retraining a derived genotype from scratch (quark0/darts ``cnn/train.py``, ``cnn/train_imagenet.py``).

Run directory layout::

    config.yaml        resolved configuration
    genotype.json      the genotype trained (a copy)
    train.log          log (also printed)
    metrics.csv        one row per epoch (lr, training loss and accuracy, held-out top-1 and top-5 accuracy)
    tb/                TensorBoard scalars
    checkpoint.pt      atomic, written each epoch; ``fastdarts train --resume RUN_DIR`` continues it
    model.pt           the final weights (a ``state_dict``)
    plots/curves.png   loss and accuracy per epoch
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from fastdarts.checkpoint import (
    CHECKPOINT,
    check_config_matches,
    check_kind,
    check_state_fits,
    load_checkpoint,
    save_checkpoint,
)
from fastdarts.config import STEMS, TrainConfig, to_dict
from fastdarts.data import build_train_data
from fastdarts.determinism import deterministic_mode
from fastdarts.genotype import load_genotype, save_genotype
from fastdarts.search import accuracies, get_logger, interrupted_message, trim_metrics_csv
from fastdarts.spaces import build_network
from fastdarts.spaces.imagenet import check_image_size
from fastdarts.validate import check_choice, check_run_dir, validate_train_config

# Config keys a resumed retraining must share with its checkpoint (see fastdarts.search.RESUME_KEYS).
RESUME_KEYS = ("genotype", "C", "layers", "auxiliary", "auxiliary_weight", "drop_path_prob", "seed", "lr", "lr_min",
               "momentum", "weight_decay", "grad_clip", "data.name", "data.batch_size", "data.image_size",
               "data.augment", "data.cutout", "lr_schedule", "lr_gamma", "lr_decay_period", "lr_schedule_offset",
               "label_smoothing", "stem", "data.color_jitter")
LR_SCHEDULES = ("cosine", "step")
MODEL_FILE = "model.pt"


def genotype_file(path: str) -> str:
    """The genotype JSON named by ``path``: the file itself, or ``path/genotype.json`` for a search run directory.

    Raises:
        FileNotFoundError: for a directory without ``genotype.json``.
    """
    if os.path.isdir(path):
        found = os.path.join(path, "genotype.json")
        if not os.path.isfile(found):
            raise FileNotFoundError(f"{path} is a directory without genotype.json: give a genotype JSON or the run "
                                    "directory of a fastdarts search")
        return found
    return path


def check_train_settings(cfg: TrainConfig) -> None:
    """Refuse a schedule or network this version cannot run (before any work starts).

    Raises:
        ValueError: for an unknown ``lr_schedule`` or ``stem``, or a ``lr_gamma`` outside (0, 1].
    """
    check_choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    check_choice("stem", cfg.stem, STEMS)
    if not 0.0 < cfg.lr_gamma <= 1.0:
        raise ValueError(f"lr_gamma must be in (0, 1], got {cfg.lr_gamma!r}")


def _default_run_dir(genotype: str) -> str:
    """``runs/train-<search run or genotype file name>-<time>``."""
    path = os.path.normpath(genotype)
    if os.path.isdir(path) or os.path.basename(path) == "genotype.json":
        name = os.path.basename(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    else:
        name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"train-{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under ``cfg.lr_schedule`` (see :class:`TrainConfig`)."""
    e = epoch + cfg.lr_schedule_offset
    if cfg.lr_schedule == "step":
        return cfg.lr * cfg.lr_gamma ** (e // cfg.lr_decay_period)
    e = min(e, cfg.epochs)
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * e / cfg.epochs)) / 2


@dataclass
class TrainResult:
    run_dir: str
    test_acc: float
    params: int


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train ``build_network(load_genotype(cfg.genotype))`` with SGD, cosine LR, drop path ramped
    linearly (p·epoch/epochs), an auxiliary head and gradient clipping; report held-out accuracy.

    Bad input (config, genotype file, data, checkpoint) raises before the run directory is
    touched; Ctrl-C raises KeyboardInterrupt saying how to resume (as :func:`fastdarts.search`).
    """
    device = validate_train_config(cfg)
    check_train_settings(cfg)
    genotype = load_genotype(genotype_file(cfg.genotype))
    if resume and not cfg.run_dir:
        raise ValueError("resume=True needs run_dir= pointing at the run to continue")
    run_dir = cfg.run_dir or _default_run_dir(cfg.genotype)
    check_run_dir(run_dir, resume=resume, checkpoint=CHECKPOINT)
    # cleanup: stops the data loaders' worker processes however the run ends.
    with deterministic_mode(cfg.deterministic, device), contextlib.ExitStack() as cleanup:
        try:
            return _train(cfg, genotype, run_dir, device, resume, cleanup)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(run_dir, cfg.epochs, "train")) from None


def _train(cfg: TrainConfig, genotype, run_dir: str, device: torch.device, resume: bool,
           cleanup: contextlib.ExitStack) -> TrainResult:
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    torch.manual_seed(cfg.seed)
    data = build_train_data(cfg.data, cfg.seed, device=device, channels_last=cfg.channels_last)
    cleanup.callback(data.close)
    if cfg.stem == "imagenet":
        check_image_size(data.image_size)
    model = build_network(genotype, cfg.C, data.num_classes, cfg.layers, auxiliary=cfg.auxiliary,
                          in_channels=data.in_channels, stem=cfg.stem).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)
    optimizer = torch.optim.SGD(model.parameters(), cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    start = 0
    if resume:
        state = load_checkpoint(ckpt_path)
        check_kind(state, "train", ckpt_path)
        check_config_matches(state, to_dict(cfg), RESUME_KEYS, ckpt_path)
        check_state_fits(model.state_dict(), state["model"], "model", ckpt_path)
    # Only now, with the genotype, the data and the checkpoint checked, is the run directory touched.
    os.makedirs(run_dir, exist_ok=True)
    logger = get_logger(run_dir, "train.log")
    save_genotype(genotype, os.path.join(run_dir, "genotype.json"))
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"] + 1
    logger.info("training %s: %.2fM parameters, %d epochs, run dir %s | data %s (%d/%d images, %d loader workers)",
                cfg.genotype, params / 1e6, cfg.epochs, run_dir, cfg.data.name, data.train.num_samples,
                data.test.num_samples, data.train.num_workers)
    csv_path = os.path.join(run_dir, "metrics.csv")
    if not resume or not os.path.isfile(csv_path):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "lr", "train_loss", "train_acc", "test_acc", "test_acc5", "seconds"])
    else:
        trim_metrics_csv(csv_path, start)
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(os.path.join(run_dir, "tb"))
    # top-1 and top-5 (train_imagenet.py reports both; top-k over at most the number of classes)
    ks = (1, min(5, data.num_classes))
    test_acc = accuracies(model, data.test, device, ks)[0] if start >= cfg.epochs else 0.0  # a finished run
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        lr = lr_at(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        model.train()
        data.train.set_epoch(epoch)
        total_loss = correct = count = 0
        for x, y in tqdm(data.train, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True):
            optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; last good checkpoint: {ckpt_path}")
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total_loss += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
        test_acc, test_acc5 = accuracies(model, data.test, device, ks)
        with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch, lr, total_loss / count, 100.0 * correct / count, test_acc, test_acc5,
                                    time.time() - t0])
        logger.info("epoch %d/%d lr %.5f loss %.4f train %.2f%% test %.2f%% (top-%d %.2f%%)", epoch + 1, cfg.epochs,
                    lr, total_loss / count, 100.0 * correct / count, test_acc, ks[1], test_acc5)
        for key, value in (("lr", lr), ("train_loss", total_loss / count), ("train_acc", 100.0 * correct / count),
                           ("test_acc", test_acc), ("test_acc5", test_acc5)):
            writer.add_scalar(f"train/{key}", value, epoch)
        save_checkpoint(ckpt_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "rng": torch.get_rng_state(), "config": to_dict(cfg)})
    writer.close()
    model_path = os.path.join(run_dir, MODEL_FILE)
    tmp = f"{model_path}.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, model_path)
    from fastdarts.viz import plot_run

    plots = plot_run(run_dir)
    logger.info("held-out accuracy %.2f%%; weights %s; plots %s", test_acc, model_path, ", ".join(plots))
    return TrainResult(run_dir=run_dir, test_acc=test_acc, params=params)
