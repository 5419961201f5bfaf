"""The typed, validated configuration of the one training loop."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from modelpress.core.config import coerce_enum
from modelpress.core.options import check_declared, opt, to_dict
from modelpress.core.errors import ConfigError


class OptimizerName(str, Enum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class GradCompression(str, Enum):
    """How data-parallel ranks exchange gradients (only when launched on several processes)."""

    TERNGRAD = "terngrad"
    POWERSGD = "powersgd"


class Schedule(str, Enum):
    CONSTANT = "constant"
    STEP = "step"
    COSINE = "cosine"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, regularisation, early stopping and seed.

    Args:
        epochs: passes over the training split.
        batch_size: examples per step.
        optimizer: ``sgd`` (with ``momentum``, Nesterov), ``adam`` or ``adamw``.
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (decoupled for ``adamw``).
        schedule: ``constant``, ``step`` (x ``gamma`` every ``step_size`` epochs), ``cosine`` (to 0
            over ``epochs``) or ``exponential`` (x ``gamma`` per epoch).
        grad_clip: if set, rescale the gradient of all parameters together to global L2 norm at most
            this before each step (guards against the large early gradients of high-temperature KD
            and logit regression).
        max_norm: if set, after every step each unit's incoming weight vector is rescaled to L2 norm
            at most ``max_norm`` (Srivastava et al.'s max-norm constraint, used with dropout).
        patience: stop when validation accuracy has not improved for this many epochs, and restore
            the best weights; ``None`` trains all epochs (and still restores the best epoch if
            ``restore_best``).
        restore_best: end with the weights of the epoch with the best validation accuracy; the
            weights training started from count as epoch 0, so fine-tuning never ends worse.
        jitter: Hinton et al.'s input jitter: shift training images by up to this many pixels.
        seed: seeds shuffling, dropout and jitter; the same seed gives the same run.
        grad_compression: under ``torchrun`` (several processes, DistributedDataParallel): ``None``
            averages fp32 gradients by allreduce; ``terngrad`` sends stochastic ternary gradients
            (Wen et al. 2017, 2 bits per element); ``powersgd`` sends rank-``powersgd_rank`` factors
            (Vogels et al. 2019) after ``powersgd_start_iter`` plain steps. No effect in one process.
        powersgd_rank: rank of PowerSGD's low-rank approximation of each weight gradient.
        powersgd_start_iter: optimiser steps of plain allreduce before PowerSGD starts (>= 2: DDP
            rebuilds its buckets after the first step).
        terngrad_clip: TernGrad's gradient clipping, to ``c`` standard deviations of each layer's
            gradient before ternarizing (the paper's c = 2.5); ``None`` does not clip (unbiased).
    """

    epochs: int = opt(10, "integer", lo=1, tunable=True, help="passes over the training split")
    batch_size: int = opt(128, "integer", lo=1, tunable=True, help="examples per step")
    optimizer: OptimizerName = opt(OptimizerName.SGD, "choice", choices=OptimizerName, tunable=True)
    lr: float = opt(0.05, lo=0, lo_open=True, tunable=True, help="initial learning rate")
    momentum: float = opt(0.9, lo=0, hi=1, hi_open=True, tunable=True, help="SGD momentum")
    weight_decay: float = opt(0.0, lo=0, tunable=True, help="L2 penalty (decoupled for adamw)")
    schedule: Schedule = opt(Schedule.COSINE, "choice", choices=Schedule, tunable=True,
                             help="learning-rate schedule")
    step_size: int = opt(10, "integer", lo=1, expose=False)
    gamma: float = opt(0.5, lo=0, hi=1, lo_open=True, expose=False)
    grad_clip: float | None = opt(None, lo=0, lo_open=True, optional=True, tunable=True,
                                  help="clip the global gradient norm to this before each step")
    max_norm: float | None = opt(None, lo=0, lo_open=True, optional=True, tunable=True,
                                 help="max L2 norm of each unit's incoming weights")
    patience: int | None = opt(None, "integer", lo=1, optional=True, help="early stopping: epochs without validation gain")
    restore_best: bool = opt(True, "bool", expose=False)
    jitter: int = opt(0, "integer", lo=0, tunable=True, metavar="PIXELS", help="shift training images by up to PIXELS")
    seed: int = opt(0, "integer", lo=0, shared=True, help="seeds shuffling, dropout and jitter")
    grad_compression: GradCompression | None = opt(
        None, "choice", choices=GradCompression, optional=True, tunable=True,
        help="under torchrun: exchange ternary (TernGrad) or low-rank (PowerSGD) gradients, not fp32")
    powersgd_rank: int = opt(1, "integer", lo=1, tunable=True, help="rank of PowerSGD's gradient factors")
    powersgd_start_iter: int = opt(10, "integer", lo=2, expose=False)
    terngrad_clip: float | None = opt(2.5, lo=0, lo_open=True, optional=True, expose=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", coerce_enum(OptimizerName, self.optimizer, "optimizer"))
        if self.grad_compression is not None:
            object.__setattr__(self, "grad_compression",
                               coerce_enum(GradCompression, self.grad_compression, "grad_compression"))
        self._check_compression()
        object.__setattr__(self, "schedule", coerce_enum(Schedule, self.schedule, "schedule"))
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "step_size": self.step_size}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive; got {value!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(f"need weight_decay >= 0 and 0 <= momentum < 1; got {self.weight_decay}, {self.momentum}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1]; got {self.gamma}")
        for name in ("grad_clip", "max_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be positive or None; got {value}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1 or None; got {self.patience}")
        if self.jitter < 0:
            raise ConfigError(f"jitter must be >= 0 pixels; got {self.jitter}")
        check_declared(self)

    def _check_compression(self) -> None:
        for name, low in (("powersgd_rank", 1), ("powersgd_start_iter", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
        if self.terngrad_clip is not None and not self.terngrad_clip > 0:
            raise ConfigError(f"terngrad_clip must be positive (standard deviations) or None; got {self.terngrad_clip}")

    def to_json(self) -> dict:
        """Plain JSON types (enums as their string values)."""
        return to_dict(self)
