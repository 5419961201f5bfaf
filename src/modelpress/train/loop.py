"""The one training loop. Every method that retrains a model (distillation, fine-tuning after
pruning or quantization) calls :func:`train` with its own ``objective`` and ``callbacks``."""

from __future__ import annotations

import copy
import json
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
from modelpress.distributed.context import on_every_rank
from modelpress.distributed.ddp import DataParallel
from modelpress.core.checkpoint import load_checkpoint, save_checkpoint
from modelpress.models.io import add_missing_masks
from modelpress.train.config import OptimizerName, Schedule, TrainConfig
from modelpress.train.device import move_, placed_on, resolve_device


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


def _split_batch(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise ConfigError("training batches must be (x, y) or (x, y, index) tuples")
    x, y, idx = batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    return move_(x, device), y.to(device), (idx.to(device) if idx is not None else None)  # x may be a dict of tensors


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
        # frozen layers (e.g. those past FitNets' guided layer in stage 1) must come out untouched
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and module.weight.requires_grad:
            module.weight.renorm_(p=2, dim=0, maxnorm=max_norm)


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in loader:
        x, y, _ = _split_batch(batch, device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        n += y.shape[0]
    model.train(was_training)
    return loss_sum / max(n, 1), correct / max(n, 1)


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def train(model: nn.Module, data: DataSplits | DataLoader, config: TrainConfig = TrainConfig(), *,
          objective: Objective = cross_entropy_objective, val_loader: DataLoader | None = None,
          checkpoint_path: str | os.PathLike[str] | None = None, resume: bool = False,
          callbacks: Sequence[object] = (), progress: bool | None = None, log: Callable[[str], None] | None = None,
          description: str = "train", data_parallel: bool = True,
          device: str | torch.device | None = None) -> TrainResult:
    """Train ``model`` in place.

    Args:
        model: any ``nn.Module`` mapping ``(B, *input_shape)`` to logits ``(B, C)``.
        data: a :class:`DataSplits` (train split shuffled by ``(seed, epoch)``, val split for early
            stopping) or a DataLoader of ``(x, y)`` / ``(x, y, index)`` batches.
        config: optimiser, schedule, regularisation, seed.
        objective: the loss, :func:`cross_entropy_objective` by default; distillation passes its own.
            One that defines callback hooks (below) gets them called as well.
        val_loader: validation batches when ``data`` is a DataLoader.
        checkpoint_path: written atomically after every epoch; with ``resume=True`` an existing one is
            loaded and training continues to the same result as an uninterrupted run.
        callbacks: objects with any of ``on_epoch_start(epoch, model)``, ``on_batch_end(step, model)``,
            ``on_epoch_end(epoch, model, metrics)``; pruning masks and schedules hook in here. One that
            changes the model until some step sets ``settles_at_step``; only later epochs can be "best".
        progress: show a progress bar; ``None`` shows one only on a terminal. ``False`` also silences
            the per-epoch lines.
        log: receives one line per epoch (``None``: stderr unless ``progress`` is ``False``).
        data_parallel: when launched on several processes (``torchrun``, or a process group the
            caller initialised), train one model together: DistributedDataParallel with
            ``config.grad_compression``, each rank on its shard of ``batch_size // world_size``
            examples per step, metrics averaged, rank 0 alone logging and checkpointing (see
            :mod:`modelpress.distributed.ddp`). ``False``: every process trains on its own, as in one
            process (codistillation). Without a launcher both are the single-process loop.
        device: where to train (``cpu``, ``cuda``, ``cuda:N``); ``None`` takes ``$MODELPRESS_DEVICE``,
            else the GPU when CUDA is available (under torchrun each rank its own, gradients then
            travelling over NCCL), else the CPU. The model, what the objective holds (teachers,
            stored outputs: :func:`~modelpress.train.device.move_`) and each batch go there; the
            model and objective are handed back on the model's original device.

    Returns:
        A :class:`TrainResult`; ``model`` holds the final (or best-validation) weights.

    Raises:
        TrainingDivergedError: the loss became NaN/inf; the last good checkpoint stays on disk.
        ConfigError: early stopping asked for without validation data, a mismatched checkpoint, or a
            device that is not there.
    """
    dp = DataParallel.launch() if data_parallel else None  # first: it assigns this rank's GPU
    device = resolve_device(device, model)
    with placed_on(device, model, objective, callbacks):  # and back where the caller had them
        plan = _plan(data, config, objective, val_loader, callbacks, progress, log, dp, checkpoint_path, description)
        run = _Run(model, objective, config, device)
        torch.manual_seed(config.seed)
        start_epoch = _start(run, plan, resume)
        _run_epochs(run, plan, start_epoch)
        if dp is not None:
            dp.close()
        if config.restore_best and run.best_state is not None:
            model.load_state_dict(run.best_state)
        model.eval()
        return run.result


@dataclass
class _Plan:
    """What :func:`train` settles before its first epoch: the batches, the callbacks and who reports."""

    train_loader: Iterable
    val_loader: DataLoader | None
    callbacks: tuple
    log: Callable[[str], None]
    show: bool
    dp: DataParallel | None
    checkpoint_path: str | os.PathLike[str] | None
    description: str


def _reporting(progress: bool | None, log: Callable[[str], None] | None, dp: DataParallel | None):
    """``(show a progress bar, epoch-line sink)``; under torchrun rank 0 alone reports."""
    show = _show_progress(progress)
    if log is None:  # epoch lines go to stderr even without a terminal (e.g. a log file), unless progress=False
        log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress is not False else (lambda line: None)
    if dp is not None and not dp.is_main:
        show, log = False, (lambda line: None)
    return show, log


def _plan(data, config: TrainConfig, objective: Objective, val_loader, callbacks, progress, log, dp,
          checkpoint_path, description: str) -> _Plan:
    """The loaders (sharded under torchrun), the callbacks (the objective's hooks first) and reporting.

    Raises:
        ConfigError: early stopping asked for without validation data.
    """
    show, log = _reporting(progress, log, dp)
    if isinstance(data, DataSplits):
        train_loader = data.loader("train", config.batch_size, shuffle=True, seed=config.seed)
        val_loader = data.loader("val", 1024) if len(data.y_val) else None
    else:
        train_loader = data
    if config.patience is not None and val_loader is None:
        raise ConfigError("patience (early stopping) needs validation data")
    if dp is not None:
        train_loader = dp.shard(train_loader, config.seed)
    elif config.grad_compression is not None:
        log(f"grad_compression={config.grad_compression.value} has no effect in a single process (launch with torchrun)")
    callbacks = tuple(callbacks)
    hooks = ("on_epoch_start", "on_batch_end", "on_epoch_end")
    if any(hasattr(objective, h) for h in hooks) and not any(cb is objective for cb in callbacks):
        callbacks = (objective, *callbacks)  # an objective that follows the epoch (e.g. early-stopped KD) is a callback too
    return _Plan(train_loader, val_loader, callbacks, log, show, dp, checkpoint_path, description)


def _start(run: _Run, plan: _Plan, resume: bool) -> int:
    """Restore a checkpoint when resuming, then wrap the model for DDP; returns the first epoch to run."""
    start_epoch = 0
    if resume and plan.checkpoint_path is not None and os.path.exists(plan.checkpoint_path):
        start_epoch = run.restore(plan.checkpoint_path)
        plan.log(f"resumed from {plan.checkpoint_path} after epoch {start_epoch}")
    if plan.dp is not None:  # after restoring, before any validation: DDP gives every rank rank 0's weights
        config = run.config
        run.loss_fn = plan.dp.wrap(run.model, run.objective, run.params, compression=config.grad_compression,
                                   seed=config.seed, powersgd_rank=config.powersgd_rank,
                                   powersgd_start_iter=config.powersgd_start_iter, terngrad_clip=config.terngrad_clip)
    return start_epoch


def _run_epochs(run: _Run, plan: _Plan, start_epoch: int) -> None:
    """Epochs ``start_epoch .. config.epochs - 1``, or until early stopping."""
    # a callback that still reshapes the model (e.g. gradual pruning) says until which step; earlier
    # epochs are not candidates for "best", or restoring them would undo its work
    settle_step = max((int(getattr(cb, "settles_at_step", 0)) for cb in plan.callbacks), default=0)
    if run.config.restore_best and plan.val_loader is not None and start_epoch == 0 and settle_step == 0:
        # the starting weights are a candidate too: retraining or fine-tuning (e.g. of shared
        # centroids at a too-high learning rate) must never hand back a model worse than it got
        run.track_best(-1, _validate(run.model, plan.val_loader, run.device)[1])
    for epoch in range(start_epoch, run.config.epochs):
        if _one_epoch(run, plan, epoch, settle_step):
            run.result.stopped_early = True
            plan.log(f"early stopping: no validation improvement for {run.config.patience} epochs")
            break


def _one_epoch(run: _Run, plan: _Plan, epoch: int, settle_step: int) -> bool:
    """Train, validate, record, checkpoint and call back for one epoch; returns whether to stop early."""
    config, model, dp = run.config, run.model, plan.dp
    for cb in plan.callbacks:
        getattr(cb, "on_epoch_start", lambda *a: None)(epoch, model)
    if dp is not None:
        dp.seed_epoch(config.seed, epoch)
    started = time.perf_counter()
    bar = tqdm(plan.train_loader, desc=f"{plan.description} {epoch + 1}/{config.epochs}", leave=False,
               disable=not plan.show, file=sys.stderr)
    metrics = run.train_epoch(epoch, bar, plan.callbacks, plan.checkpoint_path)
    bar.close()
    if plan.val_loader is not None:
        metrics["val_loss"], metrics["val_accuracy"] = _validate(model, plan.val_loader, run.device)
    if dp is not None:  # averaged, so every rank picks the same best epoch and stops together
        metrics = dp.reduce(metrics)
    if plan.val_loader is not None and run.step >= settle_step:
        run.track_best(epoch, metrics["val_accuracy"])
    metrics["seconds"] = time.perf_counter() - started
    run.result.history.append(metrics)
    plan.log(_format_epoch(metrics, config.epochs))
    stop = config.patience is not None and run.bad_epochs >= config.patience
    if plan.checkpoint_path is not None and (dp is None or dp.is_main):
        run.save(plan.checkpoint_path, finished=stop)
    for cb in plan.callbacks:
        getattr(cb, "on_epoch_end", lambda *a: None)(epoch, model, metrics)
    return stop


class _Run:
    """The mutable state of one training run: what a checkpoint holds and what resume restores."""

    def __init__(self, model: nn.Module, objective: Objective, config: TrainConfig, device: torch.device) -> None:
        self.model, self.objective, self.config, self.device = model, objective, config, device
        params = list(model.parameters())
        if isinstance(objective, nn.Module):  # e.g. a FitNets regressor trained with the student
            params += [p for p in objective.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = _make_optimizer(params, config)
        # DistributedDataParallel replaces this with its own forward (see train's data_parallel)
        self.loss_fn = lambda x, y, idx: objective(model, x, y, idx)
        self.scheduler = _make_scheduler(self.optimizer, config)
        self.jitter = RandomShift(config.jitter) if config.jitter else None
        self.result = TrainResult()
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.step = 0

    def train_epoch(self, epoch: int, batches, callbacks: Sequence[object], checkpoint_path) -> dict:
        """One pass over ``batches``; returns the epoch's mean training loss and learning rate."""
        sampler = getattr(getattr(batches, "iterable", batches), "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        jitter_gen = torch.Generator().manual_seed(self.config.seed * 7919 + epoch)
        self.model.train()
        loss_sum, seen = 0.0, 0
        for batch in batches:
            x, y, idx = _split_batch(batch, self.device)
            if self.jitter is not None:
                x = self.jitter(x, jitter_gen)
            loss = self.loss_fn(x, y, idx)
            finite = bool(torch.isfinite(loss))
            if not on_every_rank(finite):  # under torchrun every rank stops together, or the others would hang
                where = f"{checkpoint_path} (epoch {epoch})" if checkpoint_path and epoch > 0 else "none written yet"
                what = f"loss became {loss.item()}" if not finite else "another rank's loss became non-finite"
                raise TrainingDivergedError(
                    f"{what} at epoch {epoch + 1}, step {self.step}; lower the learning rate "
                    f"(now {self.optimizer.param_groups[0]['lr']:.3g}). Last good checkpoint: {where}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
            self.optimizer.step()
            if self.config.max_norm is not None:
                apply_max_norm_(self.model, self.config.max_norm)
            self.step += 1
            for cb in callbacks:
                getattr(cb, "on_batch_end", lambda *a: None)(self.step, self.model)
            loss_sum += loss.item() * y.shape[0]
            seen += y.shape[0]
            if hasattr(batches, "set_postfix") and not batches.disable:
                batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "lr": lr}

    def track_best(self, epoch: int, val_accuracy: float) -> None:
        """Remember the weights of the best validation epoch; count epochs without improvement."""
        if self.result.best_val_accuracy is None or val_accuracy > self.result.best_val_accuracy:
            self.result.best_epoch, self.result.best_val_accuracy = epoch + 1, val_accuracy
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1

    def save(self, path, *, finished: bool) -> None:
        """Write everything :meth:`restore` needs to continue exactly where this epoch ended."""
        spec = getattr(self.model, "modelpress_spec", None)
        save_checkpoint(path, {
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict() if isinstance(self.objective, nn.Module) else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": self.step,
            # an early-stopped run is complete: resuming it must not train further
            "epoch": self.config.epochs if finished else self.result.epochs_run,
            "history": self.result.history,
            "best_epoch": self.result.best_epoch,
            "best_val_accuracy": self.result.best_val_accuracy,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "config": json.dumps(self.config.to_json()),
            "spec": json.dumps(spec.to_json()) if spec else "",  # lets `evaluate` open a checkpoint
        })

    def restore(self, path) -> int:
        """Load a checkpoint written by :meth:`save`; returns the epoch to continue from."""
        state = load_checkpoint(path)
        # fields added since the checkpoint was written count at their defaults
        if {**TrainConfig().to_json(), **json.loads(state["config"])} != self.config.to_json():
            raise ConfigError(f"checkpoint {path} was written with a different training config; "
                              "resume with the same settings or delete it to start over")
        add_missing_masks(self.model, state["model"])
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ConfigError(f"checkpoint {path} holds a model of another shape or reparametrization "
                              f"({str(err).splitlines()[0]}); resume with the same model and method") from None
        if isinstance(self.objective, nn.Module):
            self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_state, self.bad_epochs = state["best_state"], state["bad_epochs"]
        self.result.history = list(state["history"])
        self.result.best_epoch, self.result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
        self.result.resumed_from_epoch = int(state["epoch"])
        self.result.stopped_early = len(self.result.history) < int(state["epoch"])
        return int(state["epoch"])


def _format_epoch(metrics: dict, epochs: int) -> str:
    parts = [f"epoch {metrics['epoch']}/{epochs}", f"loss {metrics['train_loss']:.4f}"]
    if "val_accuracy" in metrics:
        parts.append(f"val acc {metrics['val_accuracy']:.4f}")
    parts.append(f"lr {metrics['lr']:.3g}")
    parts.append(f"{metrics['seconds']:.1f}s")
    return "  ".join(parts)
