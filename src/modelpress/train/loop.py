"""The one training loop. Every method that retrains a model (distillation, fine-tuning after
pruning or quantization) calls :func:`train` with its own ``objective`` and ``callbacks``."""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modelpress.core.errors import ConfigError, TrainingDivergedError
from modelpress.data.base import DataSplits
from modelpress.data.transforms import RandomShift
from modelpress.train.checkpoint import load_checkpoint, save_checkpoint
from modelpress.train.config import OptimizerName, Schedule, TrainConfig


class Objective(Protocol):
    """A training loss: ``(model, x, y, idx) -> scalar``. ``idx`` holds the examples' indices in the
    training split (``None`` for loaders that do not yield them), so stored targets can be looked up.
    An objective that is an ``nn.Module`` has its parameters trained and checkpointed too."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor: ...


def cross_entropy_objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Plain supervised training: cross-entropy of the model's logits against hard labels."""
    return F.cross_entropy(model(x), y)


@dataclass
class TrainResult:
    """What a run did: per-epoch history, the best validation epoch, and whether it stopped early."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    stopped_early: bool = False
    resumed_from_epoch: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def _split_batch(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise ConfigError("training batches must be (x, y) or (x, y, index) tuples")
    return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)


def _make_optimizer(params: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0, weight_decay=config.weight_decay)
    if config.optimizer is OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    sched = torch.optim.lr_scheduler
    if config.schedule is Schedule.COSINE:
        return sched.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.schedule is Schedule.STEP:
        return sched.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule is Schedule.EXPONENTIAL:
        return sched.ExponentialLR(optimizer, gamma=config.gamma)
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)


@torch.no_grad()
def apply_max_norm_(model: nn.Module, max_norm: float) -> None:
    """Rescale each unit's incoming weights (rows of Linear, filters of Conv) to L2 norm <= ``max_norm``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            module.weight.renorm_(p=2, dim=0, maxnorm=max_norm)


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in loader:
        x, y, _ = _split_batch(batch)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += y.shape[0]
    model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def train(
    model: nn.Module,
    data: DataSplits | DataLoader,
    config: TrainConfig = TrainConfig(),
    *,
    objective: Objective = cross_entropy_objective,
    val_loader: DataLoader | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[object] = (),
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: any ``nn.Module`` mapping ``(B, *input_shape)`` to logits ``(B, C)``.
        data: a :class:`DataSplits` (train split shuffled by ``(seed, epoch)``, val split for early
            stopping) or a DataLoader of ``(x, y)`` / ``(x, y, index)`` batches.
        config: optimiser, schedule, regularisation, seed.
        objective: the loss, :func:`cross_entropy_objective` by default; distillation passes its own.
        val_loader: validation batches when ``data`` is a DataLoader.
        checkpoint_path: written atomically after every epoch; with ``resume=True`` an existing one is
            loaded and training continues to the same result as an uninterrupted run.
        callbacks: objects with any of ``on_epoch_start(epoch, model)``, ``on_batch_end(step, model)``,
            ``on_epoch_end(epoch, model, metrics)``; pruning masks and schedules hook in here.
        progress: show a progress bar; ``None`` shows one only on a terminal.
        log: receives one line per epoch (``None``: stderr when ``progress`` is on, silent otherwise).

    Returns:
        A :class:`TrainResult`; ``model`` holds the final (or best-validation) weights.

    Raises:
        TrainingDivergedError: the loss became NaN/inf; the last good checkpoint stays on disk.
        ConfigError: early stopping asked for without validation data, or a mismatched checkpoint.
    """
    show = _show_progress(progress)
    if log is None:
        log = (lambda line: print(line, file=sys.stderr)) if show else (lambda line: None)
    if isinstance(data, DataSplits):
        train_loader = data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
        val_loader = data.loader("val", 1024) if len(data.y_val) else None
    else:
        train_loader = data
    if config.patience is not None and val_loader is None:
        raise ConfigError("patience (early stopping) needs validation data")
    jitter = RandomShift(config.jitter) if config.jitter else None

    params = list(model.parameters())
    if isinstance(objective, nn.Module):
        params += [p for p in objective.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, config)
    scheduler = _make_scheduler(optimizer, config)
    result = TrainResult()
    best_state: dict | None = None
    bad_epochs = 0
    start_epoch = 0
    torch.manual_seed(config.seed)

    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        state = load_checkpoint(checkpoint_path)
        if json.loads(state["config"]) != config.to_json():
            raise ConfigError(f"checkpoint {checkpoint_path} was written with a different training config; "
                              "resume with the same settings or delete it to start over")
        model.load_state_dict(state["model"])
        if isinstance(objective, nn.Module):
            objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.history = list(state["history"])
        result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
        best_state, bad_epochs = state["best_state"], state["bad_epochs"]
        start_epoch = result.resumed_from_epoch = int(state["epoch"])
        log(f"resumed from {checkpoint_path} after epoch {start_epoch}")

    step = start_epoch * len(train_loader)
    for epoch in range(start_epoch, config.epochs):
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        jitter_gen = torch.Generator().manual_seed(config.seed * 7919 + epoch)
        for cb in callbacks:
            getattr(cb, "on_epoch_start", lambda *a: None)(epoch, model)
        model.train()
        started = time.perf_counter()
        loss_sum, seen = 0.0, 0
        bar = tqdm(train_loader, desc=f"{description} {epoch + 1}/{config.epochs}", leave=False, disable=not show, file=sys.stderr)
        for batch in bar:
            x, y, idx = _split_batch(batch)
            if jitter is not None:
                x = jitter(x, jitter_gen)
            loss = objective(model, x, y, idx)
            if not torch.isfinite(loss):
                where = f"{checkpoint_path} (epoch {epoch})" if checkpoint_path and epoch > 0 else "none written yet"
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower the learning rate "
                    f"(now {optimizer.param_groups[0]['lr']:.3g}). Last good checkpoint: {where}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if config.max_norm is not None:
                apply_max_norm_(model, config.max_norm)
            step += 1
            for cb in callbacks:
                getattr(cb, "on_batch_end", lambda *a: None)(step, model)
            loss_sum += loss.item() * y.shape[0]
            seen += y.shape[0]
            if show:
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        bar.close()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": lr}
        if val_loader is not None:
            metrics["val_loss"], metrics["val_accuracy"] = _validate(model, val_loader)
            if result.best_val_accuracy is None or metrics["val_accuracy"] > result.best_val_accuracy:
                result.best_epoch, result.best_val_accuracy = epoch + 1, metrics["val_accuracy"]
                best_state = copy.deepcopy(model.state_dict())
                bad_epochs = 0
            else:
                bad_epochs += 1
        metrics["seconds"] = time.perf_counter() - started
        result.history.append(metrics)
        log(_format_epoch(metrics, config.epochs))
        stop = config.patience is not None and bad_epochs >= config.patience
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(),
                "objective": objective.state_dict() if isinstance(objective, nn.Module) else {},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch + 1 if not stop else config.epochs,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "best_state": best_state,
                "bad_epochs": bad_epochs,
                "config": json.dumps(config.to_json()),
            })
        for cb in callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(epoch, model, metrics)
        if stop:
            result.stopped_early = True
            log(f"early stopping: no validation improvement for {config.patience} epochs")
            break

    if config.restore_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _format_epoch(metrics: dict, epochs: int) -> str:
    parts = [f"epoch {metrics['epoch']}/{epochs}", f"loss {metrics['train_loss']:.4f}"]
    if "val_accuracy" in metrics:
        parts.append(f"val acc {metrics['val_accuracy']:.4f}")
    parts.append(f"lr {metrics['lr']:.3g}")
    parts.append(f"{metrics['seconds']:.1f}s")
    return "  ".join(parts)
