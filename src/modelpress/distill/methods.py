"""Every distillation method, declared once: name -> (config type, handler, what it needs).

A method's config (a frozen dataclass declared with :func:`~modelpress.core.options.opt` /
:func:`~modelpress.core.options.nested`) is the only place its options and their paper defaults live;
``modelpress distill --method NAME`` generates its flags from it and the recipe ``distill`` stage its
fields, and both call the method's handler, so Python, CLI and recipe runs with the same options give
the same config and the same weights.

Every handler has one signature::

    handler(student, teacher, data, config, *, checkpoint_path, resume, progress, callbacks, precompute)
        -> DistillOutcome

``student`` is a :data:`StudentBuilder` (``None`` for methods that train the teacher's own
architecture), ``teacher`` what the entry's ``teacher`` says ("outputs": a module, list, ensemble or
stored outputs; "model": one ``nn.Module``; "none": ``None``).

Example:
    >>> entry = METHODS.get("fitnets")
    >>> config = entry.build({"stage1_epochs": 1, "epochs": 2})
    >>> outcome = entry.handler(student_builder("cnn:16-32", (1, 28, 28), 10, seed=0), teacher, splits, config)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.core.options import (
    FlatField,
    build,
    check_declared,
    flat_fields,
    nested,
    opt,
)
from modelpress.core.registry import Registry
from modelpress.core.seed import seed_everything
from modelpress.data.base import DataSplits
from modelpress.distill.attention import AttentionConfig, attention_transfer
from modelpress.distill.core import DistillConfig, distill
from modelpress.distill.fsp import FSPConfig, fsp_distill
from modelpress.distill.hints import HintConfig, fitnets
from modelpress.distill.mutual import MutualConfig, mutual_learning
from modelpress.distill.omitted import omitted_class_experiment
from modelpress.distill.schemes import born_again, teacher_assistant_chain
from modelpress.distill.specialists import SpecialistConfig, train_specialists
from modelpress.train import TrainConfig, TrainResult

__all__ = ["METHODS", "AssistantConfig", "BornAgainConfig", "DistillOutcome", "MethodEntry", "OmittedClassConfig",
           "SelfConfig", "SideModel", "StudentBuilder", "logit_method_names", "scheme_dir", "student_builder",
           "with_seed"]

_KD_EXPOSED = ("temperature", "alpha", "train")  # the logit-level settings a scheme's distillations share


# ----- configs of the schemes that had none ------------------------------------------------------------

@dataclass(frozen=True)
class BornAgainConfig:
    """Born-again networks (Furlanello et al. 2018): ``generations`` students of the teacher's architecture,
    each taught by the one before; the teacher term alone (``alpha = 1``), as in the paper."""

    kd: DistillConfig = nested(DistillConfig, expose=_KD_EXPOSED, alpha=1.0)
    generations: int = opt(3, "integer", lo=1, help="born-again: generations")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class SelfConfig:
    """Self-compression (the seeds, after Geras et al. 2016): one model of the teacher's architecture
    mimicking it, at the seeds' ``lambda = alpha = 0.5``."""

    kd: DistillConfig = nested(DistillConfig, expose=_KD_EXPOSED, alpha=0.5)

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class AssistantConfig:
    """Teacher-assistant KD (Mirzadeh et al. 2020): ``teacher -> assistants... -> student``."""

    kd: DistillConfig = nested(DistillConfig, expose=_KD_EXPOSED)
    assistants: tuple[str, ...] = opt((), "texts", flag="assistant", metavar="ARCH",
                                      help="intermediate architecture(s), teacher side first; repeatable")

    def __post_init__(self) -> None:
        object.__setattr__(self, "assistants", tuple(self.assistants))
        if not self.assistants:
            raise ConfigError("method assistant needs at least one assistant architecture (--assistant ARCH, recipe "
                              "field 'assistants'), between teacher and student")
        check_declared(self)


@dataclass(frozen=True)
class OmittedClassConfig:
    """Hinton et al.'s omitted-class experiment (2015, Sec. 3): distil without any example of class
    ``omit_class``, then fit that class's output bias on validation data."""

    omit_class: int = opt(type="integer", lo=0, metavar="K", help="the class left out of the transfer set")
    kd: DistillConfig = nested(DistillConfig, expose=_KD_EXPOSED)

    def __post_init__(self) -> None:
        check_declared(self)


# ----- what a handler gets and gives ------------------------------------------------------------------

class StudentBuilder(Protocol):
    """``make(arch=None, *, outputs=None, seed_offset=0) -> nn.Module``: the student architecture (or
    ``arch``), for the data's classes (or ``outputs``), built after seeding with ``seed + seed_offset``
    (``outputs`` given: not seeded, the caller forks the RNG)."""

    def __call__(self, arch: str | None = None, *, outputs: int | None = None, seed_offset: int = 0) -> nn.Module: ...


def student_builder(arch: str | None, input_shape, num_classes: int, seed: int, **options) -> StudentBuilder:
    """A :class:`StudentBuilder` over the model zoo; ``options`` (dropout, ...) apply to ``arch`` alone.

    Raises:
        ConfigError: (when called) no architecture was given.
    """
    from modelpress.models import build_model

    def make(other: str | None = None, *, outputs: int | None = None, seed_offset: int = 0) -> nn.Module:
        if other is None and arch is None:
            raise ConfigError("this method needs a student architecture (e.g. mlp:800-800)")
        if outputs is None:
            seed_everything(seed + seed_offset)
        extra = options if other is None and outputs is None else {}
        return build_model(other or arch, input_shape, outputs or num_classes, **extra)

    return make


@dataclass(frozen=True)
class SideModel:
    """A model a method makes besides its result (a generation, an assistant, a peer, a specialist):
    ``tag`` names its file (``OUT.<tag>.mpk``), ``info`` is JSON recorded with it."""

    tag: str
    model: nn.Module
    info: dict = field(default_factory=dict)


@dataclass
class DistillOutcome:
    """What a method's handler returns.

    Attributes:
        model: the trained result (the student; the specialists' ensemble).
        train: the :class:`~modelpress.train.TrainResult` of its last training run (``None``: none ran).
        side_models: the other models made, in order.
        info: JSON figures to record (layers used, accuracies of ensembles, ...).
        stages: earlier runs' TrainResults by name (``hints``, ``fsp``, ``gen1``, ...).
    """

    model: nn.Module
    train: TrainResult | None
    side_models: tuple[SideModel, ...] = ()
    info: dict = field(default_factory=dict)
    stages: dict[str, TrainResult] = field(default_factory=dict)


Handler = Callable[..., DistillOutcome]


@dataclass(frozen=True)
class MethodEntry:
    """One registered method.

    Attributes:
        name: its ``--method`` / recipe ``method`` name.
        config: its config type (the declaration of its options).
        handler: see the module docstring.
        teacher: ``"outputs"`` (any module, list, ensemble or stored outputs), ``"model"`` (one module) or ``"none"``.
        student: ``"architecture"`` (built from one) or ``"teacher"`` (the teacher's own architecture).
        summary: one line for ``--help``.
        preset: config fields the method fixes (``logits``: the loss).
        skip: flat options of ``config`` the method does not offer.
    """

    name: str
    config: type
    handler: Handler
    teacher: str
    student: str
    summary: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    def fields(self) -> list[FlatField]:
        """The options a user sets (the seed is the command's or recipe's, never the method's)."""
        return [item for item in flat_fields(self.config) if item.name not in self.skip and item.name != "seed"]

    def build(self, values: Mapping[str, Any], *, where: str = "") -> Any:
        """The method's config from flat ``values`` (a ``seed`` is accepted); absent ones keep their defaults.

        Raises:
            ConfigError: an option the method does not offer, or a value its config refuses.
        """
        foreign = sorted(set(values) & set(self.skip))
        if foreign:
            owners = [name for name in METHODS if foreign[0] in {f.name for f in METHODS.get(name).fields()}]
            raise ConfigError(f"{where}{foreign[0]} is not an option of method {self.name}"
                              + (f" (it belongs to: {', '.join(owners)})" if owners else ""))
        config = build(self.config, values, where=where)
        return replace(config, **self.preset) if self.preset else config

    def default_config(self) -> Any:
        """The config of this method with every option at its declared default."""
        return self.build({})


METHODS: Registry[MethodEntry] = Registry("distillation method")


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add ``entry`` to :data:`METHODS` (a name used twice raises)."""
    return METHODS.register(entry.name)(entry)


# ----- helpers every handler shares ------------------------------------------------------------------

def with_seed(config: Any, seed: int) -> Any:
    """``config`` with every nested :class:`TrainConfig`'s seed set to ``seed`` (the run's one seed)."""
    if isinstance(config, TrainConfig):
        return replace(config, seed=seed)
    changes = {f.name: with_seed(getattr(config, f.name), seed) for f in fields(config)
               if is_dataclass(getattr(config, f.name)) and not isinstance(getattr(config, f.name), type)}
    return replace(config, **changes) if changes else config


def scheme_dir(checkpoint_path: str | os.PathLike[str] | None) -> Path | None:
    """Where a multi-model scheme keeps its stages beside ``checkpoint_path`` (``X.ckpt`` -> ``X.stages/``; a
    folder whose name does not match ``*.ckpt*``, which recipe runs delete as files)."""
    return None if checkpoint_path is None else Path(str(checkpoint_path).removesuffix(".ckpt") + ".stages")


def _test_accuracy(model: nn.Module, data) -> float | None:
    from modelpress.measure import evaluate_accuracy

    if not isinstance(data, DataSplits) or not len(data.y_test):
        return None
    return evaluate_accuracy(model, data.x_test, data.y_test).accuracy


def _need(student: StudentBuilder | None, name: str) -> StudentBuilder:
    if student is None:
        raise ConfigError(f"method {name} needs a student architecture (e.g. mlp:800-800)")
    return student


# ----- handlers -----------------------------------------------------------------------------------------

def _logit_level(student, teacher, data, config: DistillConfig, *, checkpoint_path=None, resume=False, progress=None,
                 callbacks=(), precompute=True) -> DistillOutcome:
    """hinton, logits (and every logit-level loss): one :func:`~modelpress.distill.distill` run."""
    result = distill(_need(student, str(config.method))(), teacher, data, config, checkpoint_path=checkpoint_path,
                     resume=resume, progress=progress, callbacks=callbacks)
    return DistillOutcome(result.student, result.train, info={"kd_epochs": config.kd_epochs})


def early_stopped_config(config: DistillConfig) -> DistillConfig:
    """Early-stopped KD (Cho & Hariharan 2019) without ``kd_epochs``: the teacher term for the first half."""
    return config if config.kd_epochs is not None else replace(config, kd_epochs=max(1, config.train.epochs // 2))


def _early_stopped(student, teacher, data, config: DistillConfig, **run) -> DistillOutcome:
    return _logit_level(student, teacher, data, early_stopped_config(config), **run)


def _fitnets(student, teacher, data, config: HintConfig, *, checkpoint_path=None, resume=False, progress=None,
             callbacks=(), precompute=True) -> DistillOutcome:
    result = fitnets(_need(student, "fitnets")(), teacher, data, config, checkpoint_path=checkpoint_path, resume=resume,
                     progress=progress, callbacks=callbacks)
    return DistillOutcome(result.student, result.distill_result, info={"layers": list(result.layers)},
                          stages={"hints": result.hint_result})


def _attention(student, teacher, data, config: AttentionConfig, *, checkpoint_path=None, resume=False, progress=None,
               callbacks=(), precompute=True) -> DistillOutcome:
    result = attention_transfer(_need(student, "attention")(), teacher, data, config, checkpoint_path=checkpoint_path,
                                resume=resume, progress=progress, callbacks=callbacks)
    return DistillOutcome(result.student, result.train, info={"layers": [list(p) for p in result.pairs]})


def _fsp(student, teacher, data, config: FSPConfig, *, checkpoint_path=None, resume=False, progress=None,
         callbacks=(), precompute=True) -> DistillOutcome:
    result = fsp_distill(_need(student, "fsp")(), teacher, data, config, checkpoint_path=checkpoint_path, resume=resume,
                         progress=progress, callbacks=callbacks)
    pairs = [[list(s), list(t)] for s, t in zip(config.student_pairs, config.teacher_pairs)]
    return DistillOutcome(result.student, result.distill_result, info={"fsp_pairs": pairs}, stages={"fsp": result.fsp_result})


def _generations(teacher, data, kd: DistillConfig, generations: int, *, checkpoint_path, resume, progress,
                 precompute) -> DistillOutcome:
    bans = born_again(teacher, data, kd, generations=generations, checkpoint_dir=scheme_dir(checkpoint_path),
                      resume=resume, progress=progress, precompute=precompute)
    side = tuple(SideModel(f"gen{k + 1}", model, {"generation": k + 1}) for k, model in enumerate(bans.generations[:-1]))
    info: dict = {"generation": generations}
    for k in range(2, generations + 1):
        info[f"ensemble_gen1-{k}"] = _test_accuracy(bans.ensemble(k), data)
    stages = {f"gen{k + 1}": history for k, history in enumerate(bans.histories)}
    return DistillOutcome(bans.generations[-1], bans.histories[-1], side, info, stages)


def _born_again(student, teacher, data, config: BornAgainConfig, *, checkpoint_path=None, resume=False, progress=None,
                callbacks=(), precompute=True) -> DistillOutcome:
    return _generations(teacher, data, config.kd, config.generations, checkpoint_path=checkpoint_path, resume=resume,
                        progress=progress, precompute=precompute)


def _self(student, teacher, data, config: SelfConfig, *, checkpoint_path=None, resume=False, progress=None,
          callbacks=(), precompute=True) -> DistillOutcome:
    outcome = _generations(teacher, data, config.kd, 1, checkpoint_path=checkpoint_path, resume=resume,
                           progress=progress, precompute=precompute)
    return replace(outcome, info={})


def _assistant(student, teacher, data, config: AssistantConfig, *, checkpoint_path=None, resume=False, progress=None,
               callbacks=(), precompute=True) -> DistillOutcome:
    make = _need(student, "assistant")
    assistants = [make(arch, seed_offset=1000 + k) for k, arch in enumerate(config.assistants)]
    chain = teacher_assistant_chain(teacher, assistants, make(), data, config.kd, checkpoint_dir=scheme_dir(checkpoint_path),
                                    resume=resume, progress=progress, precompute=precompute)
    side = tuple(SideModel(f"assistant{k + 1}", model, {"architecture": arch})
                 for k, (model, arch) in enumerate(zip(chain.assistants, config.assistants)))
    stages = {f"assistant{k + 1}": h for k, h in enumerate(chain.histories[:-1])}
    return DistillOutcome(chain.student, chain.histories[-1], side, {"assistants": list(config.assistants)}, stages)


def _mutual(student, teacher, data, config: MutualConfig, *, checkpoint_path=None, resume=False, progress=None,
            callbacks=(), precompute=True) -> DistillOutcome:
    make = _need(student, "mutual")
    peers = [make(seed_offset=k) for k in range(config.peers)]
    result = mutual_learning(peers, data, config, checkpoint_path=checkpoint_path, resume=resume, progress=progress)
    side = tuple(SideModel(f"peer{k + 1}", model, {"peer": k + 1}) for k, model in enumerate(result.peers[1:], start=1))
    steps = -(-len(data.y_train) // config.train.batch_size) if isinstance(data, DataSplits) else None
    info = {"peers": config.peers, "burn_in_steps": config.resolved(steps).burn_in_steps if steps else config.burn_in_steps,
            "cohort_accuracy": _test_accuracy(result.cohort, data)}
    return DistillOutcome(result.peers[0], result.history, side, info)


def _specialists(student, teacher, data, config: SpecialistConfig, *, checkpoint_path=None, resume=False,
                 progress=None, callbacks=(), precompute=True) -> DistillOutcome:
    make = _need(student, "specialists")
    ensemble = train_specialists(teacher, lambda outputs: make(outputs=outputs), data, config,
                                 checkpoint_dir=scheme_dir(checkpoint_path), resume=resume, progress=progress)
    side = tuple(SideModel(f"specialist{k + 1}", model, {"classes": list(classes), "dustbin": len(classes)})
                 for k, (model, classes) in enumerate(zip(ensemble.specialists, ensemble.class_sets)))
    info = {"top_k": config.top_k, "generalist_test_accuracy": _test_accuracy(teacher, data),
            "combined_test_accuracy": _test_accuracy(ensemble, data)}
    stages = {f"specialist{k + 1}": r for k, r in enumerate(ensemble.train_results)}
    return DistillOutcome(ensemble, None, side, info, stages)


def _omitted_class(student, teacher, data, config: OmittedClassConfig, *, checkpoint_path=None, resume=False,
                   progress=None, callbacks=(), precompute=True) -> DistillOutcome:
    if isinstance(data, DataSplits) and not config.omit_class < data.num_classes:
        raise ConfigError(f"omit_class must be a class index in [0, {data.num_classes}); got {config.omit_class}")
    model = _need(student, "omitted-class")()
    report = omitted_class_experiment(model, teacher, data, config.omit_class, config.kd, checkpoint_path=checkpoint_path,
                                      resume=resume, progress=progress)
    return DistillOutcome(model, None, info={"omitted_class": config.omit_class, "bias_offset": report["bias_offset"],
                                             "report": report})


# ----- the registry --------------------------------------------------------------------------------------

def logit_method_names() -> tuple[str, ...]:
    """Every logit-level loss registered in :mod:`modelpress.distill.losses` (``hinton``, ``logits``, ...)."""
    try:
        from modelpress.distill.losses import logit_loss_names
    except ImportError:  # the loss registry is not in this tree yet
        return ("hinton", "logits")
    return tuple(logit_loss_names())


def _register_builtins() -> None:
    for loss in logit_method_names():
        register_method(MethodEntry(loss, DistillConfig, _logit_level, "outputs", "architecture",
                                    f"logit-level KD with the {loss!r} loss (any teacher, ensemble or stored outputs)",
                                    preset={"method": loss}, skip=("kd_epochs",)))
    builtins = [
        ("early-stopped", DistillConfig, _early_stopped, "outputs", "architecture",
         "Hinton KD for the first kd_epochs epochs (default half), then labels only (Cho & Hariharan 2019)"),
        ("fitnets", HintConfig, _fitnets, "model", "architecture", "hint training, then annealed KD (Romero et al. 2015)"),
        ("attention", AttentionConfig, _attention, "model", "architecture", "attention transfer (Zagoruyko & Komodakis 2017)"),
        ("fsp", FSPConfig, _fsp, "model", "architecture", "flow-of-solution matrices, then labels (Yim et al. 2017)"),
        ("born-again", BornAgainConfig, _born_again, "model", "teacher",
         "generations of the teacher's architecture (Furlanello et al. 2018)"),
        ("self", SelfConfig, _self, "model", "teacher", "one copy of the teacher's architecture mimicking it (alpha 0.5)"),
        ("assistant", AssistantConfig, _assistant, "model", "architecture",
         "teacher -> assistant(s) -> student (Mirzadeh et al. 2020)"),
        ("mutual", MutualConfig, _mutual, "none", "architecture", "peers teach each other (Zhang et al. 2018; Anil et al. 2018)"),
        ("specialists", SpecialistConfig, _specialists, "model", "architecture",
         "specialists on confusable classes beside a generalist (Hinton et al. 2015, Sec. 5)"),
        ("omitted-class", OmittedClassConfig, _omitted_class, "model", "architecture",
         "distil without one class, then fit its bias (Hinton et al. 2015, Sec. 3)"),
    ]
    for name, config, handler, teacher, student, summary in builtins:
        register_method(MethodEntry(name, config, handler, teacher, student, summary))


_register_builtins()
