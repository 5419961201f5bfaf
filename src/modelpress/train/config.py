"""The typed, validated configuration of the one training loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from modelpress.core.config import coerce_enum
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

    epochs: int = 10
    batch_size: int = 128
    optimizer: OptimizerName = OptimizerName.SGD
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = Schedule.COSINE
    step_size: int = 10
    gamma: float = 0.5
    grad_clip: float | None = None
    max_norm: float | None = None
    patience: int | None = None
    restore_best: bool = True
    jitter: int = 0
    seed: int = 0
    grad_compression: GradCompression | None = None
    powersgd_rank: int = 1
    powersgd_start_iter: int = 10
    terngrad_clip: float | None = 2.5

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

    def _check_compression(self) -> None:
        for name, low in (("powersgd_rank", 1), ("powersgd_start_iter", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
        if self.terngrad_clip is not None and not self.terngrad_clip > 0:
            raise ConfigError(f"terngrad_clip must be positive (standard deviations) or None; got {self.terngrad_clip}")

    def to_json(self) -> dict:
        """Plain JSON types (enums as their string values)."""
        return {k: (v.value if isinstance(v, Enum) else v) for k, v in asdict(self).items()}
