"""Distillation losses behind one signature, ``loss(student_io, teacher_io, targets) -> Tensor``, and one registry.

An *io* is what a model produced for a batch: a mapping (or :class:`ModelIO`) with at least
``"logits"`` ``(B, C)`` and optionally named features (torchdistill's ``io_dict``). Any per-row shift
of the teacher's logits, e.g. log-probabilities, gives the same soft targets.

Logit-level losses (the *teacher term* that :func:`mix_hard_labels` blends with the hard labels) are
registered by name; ``DistillConfig(method=NAME)`` selects one. Each is a :class:`LogitLossSpec`: a
frozen options config declared with :func:`~modelpress.core.options.opt` (so the CLI and recipes can
derive flags from it) and a ``make(config) -> loss``. ``hinton`` and ``logits`` are defined here; any
further built-in lives in its own module ``modelpress/distill/loss_<name>.py`` that defines one
module-level ``LOSS = LogitLossSpec(...)``. The registry lists those modules by that file-name
convention (:func:`builtin_loss_modules`) and imports them lazily, on the first look-up: importing a
loss module registers nothing by itself, and adding a loss is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import build, check_declared, flat_fields, opt
from modelpress.core.registry import Registry

__all__ = [
    "DistillLoss",
    "LogitLossSpec",
    "LogitRegressionConfig",
    "LogitRegressionLoss",
    "LossName",
    "ModelIO",
    "SoftTargetConfig",
    "SoftTargetLoss",
    "as_io",
    "builtin_loss_modules",
    "get_logit_loss",
    "io_logits",
    "logit_loss_names",
    "logit_regression_loss",
    "loss_name",
    "make_logit_loss",
    "mix_hard_labels",
    "mixed_distillation_loss",
    "soft_target_loss",
]


# ---------------------------------------------------------------------------------------------- the signature


@dataclass(frozen=True)
class ModelIO:
    """What one model produced for a batch: ``logits`` ``(B, C)`` and optional named ``features``.

    Read like a mapping: ``io["logits"]``, ``io["layer3"]`` (a feature), ``"layer3" in io``.
    """

    logits: torch.Tensor | None = None
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "logits" and self.logits is not None:
            return self.logits
        if key in self.features:
            return self.features[key]
        raise ShapeError(f"the model output has no {key!r}; it has: {', '.join(self.keys()) or 'nothing'}")

    def __contains__(self, key: object) -> bool:
        return (key == "logits" and self.logits is not None) or key in self.features

    def keys(self) -> list[str]:
        """``logits`` (when present) then the feature names."""
        return (["logits"] if self.logits is not None else []) + list(self.features)


IO = ModelIO | Mapping[str, torch.Tensor] | torch.Tensor


def as_io(value: IO) -> ModelIO | Mapping[str, torch.Tensor]:
    """``value`` as an io: a bare tensor is taken as the logits; mappings and :class:`ModelIO` pass through."""
    return ModelIO(logits=value) if isinstance(value, torch.Tensor) else value


def io_logits(io: IO) -> torch.Tensor:
    """The ``"logits"`` of an io (or the tensor itself).

    Raises:
        ShapeError: the io has no logits.
    """
    io = as_io(io)
    if "logits" not in io:
        raise ShapeError("a logit-level loss needs the model output's 'logits'")
    return io["logits"]


class DistillLoss(Protocol):
    """The one signature of every distillation loss, logit- or feature-level (torchdistill's)."""

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------- pure tensor functions


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``T^2 * KL(p_T || q_T)`` averaged over the batch, where ``p_T = softmax(z_t / T)`` and
    ``q_T = softmax(z_s / T)``. The KL differs from the paper's cross-entropy ``-sum p log q`` only by
    the teacher's entropy, a constant, so gradients are identical; KL is zero when the two agree.
    The gradient with respect to the student logits is ``T (q_T - p_T) / B``; since soft-target
    gradients shrink as ``1/T^2`` (Hinton et al., Sec. 2), the ``T^2`` factor keeps their size
    comparable to the hard-label term when T changes.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``, no gradient needed.
        temperature: T > 0; 1 gives ordinary probabilities, larger T softer ones.

    Returns:
        Scalar loss (nats).
    """
    log_q = F.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, C)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


def logit_regression_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Ba & Caruana (2014), "Do Deep Nets Really Need to be Deep?": regress the teacher's logits.

    ``1/(2B) * sum_b ||z_s(b) - z_t(b)||^2``. Hinton et al. show this is the high-temperature limit
    of :func:`soft_target_loss` when logits are zero-mean per example.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``.

    Returns:
        Scalar loss.
    """
    return 0.5 * (student_logits - teacher_logits).pow(2).sum(dim=-1).mean()


def mix_hard_labels(teacher_term: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
                    alpha: float) -> torch.Tensor:
    """The seeds' ``L(lambda) = lambda * L_teacher + (1 - lambda) * CE(q_1, y)``, with ``alpha`` as lambda.

    Args:
        teacher_term: the logit-level loss's value (scalar).
        student_logits: ``(B, C)``.
        labels: hard labels ``(B,)`` int64.
        alpha: weight of the teacher term in [0, 1]; 1 ignores the labels (CE is then not computed).

    Returns:
        Scalar loss.
    """
    if alpha >= 1.0:
        return teacher_term
    return alpha * teacher_term + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


# ------------------------------------------------------------------------------ the two classic loss classes


@dataclass(frozen=True)
class SoftTargetConfig:
    """Options of Hinton's soft-target loss."""

    temperature: float = opt(4.0, lo=0, lo_open=True, tunable=True, help="softmax temperature T of the soft targets")

    def __post_init__(self) -> None:
        check_declared(self)


class SoftTargetLoss:
    """Hinton, Vinyals & Dean (2015): ``T^2 KL(softmax(z_t/T) || softmax(z_s/T))`` (:func:`soft_target_loss`)."""

    def __init__(self, config: SoftTargetConfig = SoftTargetConfig()) -> None:
        self.config = config

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        return soft_target_loss(io_logits(student_io), io_logits(teacher_io), self.config.temperature)


@dataclass(frozen=True)
class LogitRegressionConfig:
    """Ba & Caruana's logit regression has no options of its own (the temperature does not apply)."""


class LogitRegressionLoss:
    """Ba & Caruana (2014): ``1/(2B) sum_b ||z_s(b) - z_t(b)||^2`` (:func:`logit_regression_loss`)."""

    def __init__(self, config: LogitRegressionConfig = LogitRegressionConfig()) -> None:
        self.config = config

    def __call__(self, student_io: IO, teacher_io: IO, targets: torch.Tensor | None = None) -> torch.Tensor:
        return logit_regression_loss(io_logits(student_io), io_logits(teacher_io))


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class LogitLossSpec:
    """One registered logit-level loss.

    Args:
        name: what ``DistillConfig(method=...)`` and ``--method`` call it.
        config: its frozen options dataclass (fields declared with ``opt``; may have none).
        make: ``config -> loss`` with the one signature :class:`DistillLoss`.
        summary: one line for ``--help`` and listings (paper and formula).
    """

    name: str
    config: type
    make: Callable[[Any], DistillLoss]
    summary: str = ""


_LOSSES: Registry[LogitLossSpec] = Registry("logit-level loss")
_ORDER: list[str] = []  # registration order, for messages (Registry.names() sorts)
_LOADED = False
_PREFIX = "loss_"


def _register(spec: LogitLossSpec) -> None:
    if not isinstance(spec, LogitLossSpec):
        raise ConfigError(f"a logit-level loss must be a LogitLossSpec; got {type(spec).__name__}")
    _LOSSES.register(spec.name)(spec)
    _ORDER.append(spec.name)


_register(LogitLossSpec("hinton", SoftTargetConfig, SoftTargetLoss,
                        "soft targets at temperature T (Hinton et al. 2015)"))
_register(LogitLossSpec("logits", LogitRegressionConfig, LogitRegressionLoss,
                        "L2 regression on logits (Ba & Caruana 2014)"))


def builtin_loss_modules() -> tuple[str, ...]:
    """The built-in loss modules: every ``modelpress/distill/loss_<name>.py``, sorted by file name."""
    here = str(Path(__file__).parent)
    names = sorted(m.name for m in pkgutil.iter_modules([here]) if m.name.startswith(_PREFIX))
    return tuple(f"{__package__}.{name}" for name in names)


def _load_builtins() -> None:
    """Import the built-in loss modules once and register each one's ``LOSS``."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True  # set first: a failing module must not be retried (and re-registered) on every look-up
    for module_name in builtin_loss_modules():
        spec = getattr(importlib.import_module(module_name), "LOSS", None)
        if spec is None:
            raise ConfigError(f"loss module {module_name} defines no LOSS = LogitLossSpec(...)")
        _register(spec)


def logit_loss_names() -> tuple[str, ...]:
    """The registered logit-level losses, in registration order: ``hinton``, ``logits``, then the rest."""
    _load_builtins()
    return tuple(_ORDER)


def get_logit_loss(name: str) -> LogitLossSpec:
    """The spec registered as ``name``.

    Raises:
        ConfigError: ``method must be one of hinton, logits, ...; got 'x'``.
    """
    names = logit_loss_names()
    if name not in _LOSSES:
        raise ConfigError(f"method must be one of {', '.join(names)}; got {name!r}")
    return _LOSSES.get(name)


def make_logit_loss(name: str, **shared: Any) -> DistillLoss:
    """The loss ``name`` with its options taken from ``shared`` where it declares them, defaults elsewhere.

    ``shared`` holds the values a distillation run sets for every loss (``temperature=...``); a loss
    that does not declare an option (logit regression has no temperature) ignores it.

    Raises:
        ConfigError: unknown ``name``, or a value the loss's config refuses.
    """
    spec = get_logit_loss(name)
    declared = {item.name for item in flat_fields(spec.config)}
    config = build(spec.config, {k: v for k, v in shared.items() if k in declared}, where=f"{name}: ")
    return spec.make(config)


@lru_cache(maxsize=64)
def _shared_loss(name: str, temperature: float) -> DistillLoss:
    # losses are stateless given their config, and this is called once per batch
    return make_logit_loss(name, temperature=temperature)


class LossName(str):
    """A registered logit-level loss's name (a ``str``); ``.value`` keeps code written for the old enum working."""

    @property
    def value(self) -> str:
        return str(self)


def loss_name(value: Any, field_name: str = "method") -> LossName:
    """``value`` (a name, or an Enum member whose value is one) checked against the registry.

    Raises:
        ConfigError: ``method must be one of hinton, logits, ...; got 'x'``.
    """
    names = logit_loss_names()
    name = value.value if isinstance(value, Enum) else value
    if not isinstance(name, str) or name not in names:
        raise ConfigError(f"{field_name} must be one of {', '.join(names)}; got {value!r}")
    return LossName(name)


def mixed_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float = 1.0,
    method: str = "hinton",
) -> torch.Tensor:
    """``alpha * L_method + (1 - alpha) * CE(q_1, y)``: a registered logit-level loss blended with hard labels.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``.
        labels: hard labels ``(B,)`` int64.
        alpha: weight of the teacher term in [0, 1]; 1 ignores labels, 0 ignores the teacher.
        temperature: softmax temperature, for the losses that declare one (``hinton``).
        method: a name from :func:`logit_loss_names` (``"hinton"`` soft targets, ``"logits"`` regression, ...).

    Raises:
        ConfigError: ``method`` is not registered.
    """
    loss = _shared_loss(str(method), temperature)
    teacher_term = loss(ModelIO(logits=student_logits), ModelIO(logits=teacher_logits), labels)
    return mix_hard_labels(teacher_term, student_logits, labels, alpha)
