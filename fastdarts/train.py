"""Retraining a derived genotype from scratch (quark0/darts ``train.py``)."""

from __future__ import annotations

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
from fastdarts.config import TrainConfig, to_dict
from fastdarts.data import build_train_data
from fastdarts.determinism import deterministic_mode
from fastdarts.genotype import load_genotype
from fastdarts.search import evaluate, get_logger, interrupted_message, trim_metrics_csv
from fastdarts.spaces import build_network
from fastdarts.validate import check_run_dir, validate_train_config

# Config keys a resumed retraining must share with its checkpoint (see fastdarts.search.RESUME_KEYS).
RESUME_KEYS = ("genotype", "C", "layers", "auxiliary", "auxiliary_weight", "drop_path_prob", "seed", "lr", "lr_min",
               "momentum", "weight_decay", "grad_clip", "data.name", "data.batch_size", "data.image_size",
               "data.augment", "data.cutout")


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
    genotype = load_genotype(cfg.genotype)
    if resume and not cfg.run_dir:
        raise ValueError("resume=True needs run_dir= pointing at the run to continue")
    run_dir = cfg.run_dir or os.path.join("runs", f"train-{time.strftime('%Y%m%d-%H%M%S')}")
    check_run_dir(run_dir, resume=resume, checkpoint=CHECKPOINT)
    with deterministic_mode(cfg.deterministic, device):
        try:
            return _train(cfg, genotype, run_dir, device, resume)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(run_dir, cfg.epochs, "train")) from None


def _train(cfg: TrainConfig, genotype, run_dir: str, device: torch.device, resume: bool) -> TrainResult:
    ckpt_path = os.path.join(run_dir, CHECKPOINT)
    torch.manual_seed(cfg.seed)
    data = build_train_data(cfg.data, cfg.seed)
    model = build_network(genotype, cfg.C, data.num_classes, cfg.layers, auxiliary=cfg.auxiliary,
                          in_channels=data.in_channels).to(device)
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
    logger = get_logger(run_dir)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    if resume:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"] + 1
    logger.info("training %s: %.2fM parameters, %d epochs, run dir %s", cfg.genotype, params / 1e6, cfg.epochs, run_dir)
    csv_path = os.path.join(run_dir, "metrics.csv")
    if not resume or not os.path.isfile(csv_path):
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "lr", "train_loss", "train_acc", "test_acc", "seconds"])
    else:
        trim_metrics_csv(csv_path, start)
    test_acc = 0.0
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        lr = cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        model.train()
        data.train.set_epoch(epoch)
        total_loss = correct = count = 0
        for x, y in tqdm(data.train, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}; last good checkpoint: {ckpt_path}")
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            total_loss += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            count += y.numel()
        test_acc = evaluate(model, data.test, device)
        with open(csv_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch, lr, total_loss / count, 100.0 * correct / count, test_acc, time.time() - t0])
        logger.info("epoch %d/%d lr %.5f loss %.4f train %.2f%% test %.2f%%", epoch + 1, cfg.epochs, lr,
                    total_loss / count, 100.0 * correct / count, test_acc)
        save_checkpoint(ckpt_path, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "rng": torch.get_rng_state(), "config": to_dict(cfg)})
    return TrainResult(run_dir=run_dir, test_acc=test_acc, params=params)
