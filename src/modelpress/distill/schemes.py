"""Distillation schemes built from :func:`~modelpress.distill.core.distill` calls: born-again
generations, self-compression and teacher-assistant chains.

Each stage of a scheme is one ``distill()`` run with its own training checkpoint
(``checkpoint_dir/<stage>.ckpt``); a finished stage also leaves its model beside it
(``<stage>.mpk`` for zoo models, ``<stage>.safetensors`` otherwise), so a resumed scheme skips the
stages already done and continues the interrupted one where its checkpoint ended.
(Early-stopped KD needs no scheme: it is ``DistillConfig(kd_epochs=...)``.)
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from modelpress.core.errors import ConfigError, ModelFileError
from modelpress.core.io import atomic_write
from modelpress.data.base import DataSplits
from modelpress.distill.core import DistillConfig, distill
from modelpress.distill.teachers import precompute_teacher
from modelpress.models import build_from_spec, save_model
from modelpress.models.ensemble import EnsembleModel
from modelpress.train import TrainResult

StageData = DataSplits | DataLoader


@dataclass
class BornAgainResult:
    """The generations of a born-again run.

    Attributes:
        generations: BAN-1 .. BAN-K, trained, in eval mode (the given teacher, generation 0, is not included).
        teacher: the given teacher, unchanged.
        histories: the :class:`~modelpress.train.TrainResult` of each generation, in order.
    """

    generations: list[nn.Module]
    teacher: nn.Module
    histories: list[TrainResult]

    def ensemble(self, k: int | None = None, include_teacher: bool = False) -> EnsembleModel:
        """The Ens*k of Furlanello et al.: the mixture of the first ``k`` generations' probabilities.

        Args:
            k: how many generations, from BAN-1 on; ``None`` takes all.
            include_teacher: also put the teacher in (they do so for one row of their Table 1).

        Returns:
            An :class:`~modelpress.models.ensemble.EnsembleModel` over the same module objects
            (not copies), logits ``(B, C)`` = log of the mean member probability.

        Raises:
            ConfigError: ``k`` is not between 1 and the number of generations.
        """
        count = len(self.generations)
        k = count if k is None else k
        if not 1 <= k <= count:
            raise ConfigError(f"k must be between 1 and {count} (the number of generations); got {k}")
        return EnsembleModel(([self.teacher] if include_teacher else []) + self.generations[:k])


@dataclass
class TeacherAssistantResult:
    """A teacher-assistant chain: the trained assistants in order, the student, and one history per stage
    (assistants first, the student's last)."""

    student: nn.Module
    assistants: list[nn.Module]
    histories: list[TrainResult]


def born_again(
    teacher: nn.Module,
    data: StageData,
    config: DistillConfig,
    *,
    generations: int = 3,
    make_student: Callable[[], nn.Module] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    precompute: bool = True,
) -> BornAgainResult:
    """Born-again networks (Furlanello et al. 2018, "Born-Again Neural Networks").

    Generation ``k`` has the teacher's architecture, starts from fresh weights and minimises
    ``L(y, f(x, theta_k)) + L(f(x, theta_{k-1}), f(x, theta_k))`` (here the weighted form of
    ``config``: ``alpha * T^2 KL(p_T^{k-1} || q_T^k) + (1 - alpha) CE(q_1^k, y)``), where ``theta_0``
    is the given teacher. Generations often beat their teacher, and their ensemble more so.

    Args:
        teacher: trained generation 0, mapping ``(B, *input_shape)`` to logits ``(B, C)``; not modified.
        data: :class:`DataSplits` or a DataLoader of ``(x, y[, index])`` batches, passed to ``distill``.
        config: distillation settings used for every generation.
        generations: K >= 1 generations to train.
        make_student: builds one untrained student; called with the global RNG seeded to
            ``config.train.seed + k`` for generation ``k``. Default: rebuild the teacher's zoo spec, or
            else deep-copy the teacher and call ``reset_parameters()`` on every submodule.
        checkpoint_dir: holds ``gen{k}.ckpt`` (training) and the finished ``gen{k}.mpk`` /
            ``gen{k}.safetensors``; with ``resume=True`` finished generations are loaded, not retrained.
        resume: continue a run that wrote ``checkpoint_dir`` with the same settings.
        progress: passed to ``distill``.
        precompute: with ``DataSplits`` and no jitter, run each teacher once over the training split
            (:func:`~modelpress.distill.teachers.precompute_teacher`) instead of once per epoch.

    Returns:
        A :class:`BornAgainResult`; ``result.ensemble(k)`` is the ensemble of the first ``k`` generations.

    Raises:
        ConfigError: ``generations < 1``; a default student cannot be re-initialised; a checkpoint was
            written with other settings.
        ShapeError: a student disagrees with the teacher or the data on shapes or classes.
    """
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ConfigError(f"generations must be an integer >= 1; got {generations!r}")
    build = make_student or (lambda: _fresh_copy(teacher))
    models: list[nn.Module] = []
    histories: list[TrainResult] = []
    previous = teacher
    for k in range(1, generations + 1):
        student = build_seeded(build, config.train.seed + k)
        if any(student is m for m in (teacher, *models)):
            raise ConfigError("make_student must return a new module each call, not the teacher or an earlier generation")
        histories.append(_run_stage(student, previous, data, config, name=f"gen{k}", checkpoint_dir=checkpoint_dir,
                                    resume=resume, progress=progress, precompute=precompute))
        models.append(student)
        previous = student
    return BornAgainResult(models, teacher, histories)


def self_compress(teacher: nn.Module, data: StageData, config: DistillConfig | None = None, **kwargs) -> nn.Module:
    """Self-compression: train a model B identical to A, mimicking A (the seeds, after Geras et al. 2016,
    "Blending LSTMs into CNNs", who report B more accurate than A).

    One :func:`born_again` generation. The seeds use ``lambda = alpha = 0.5``, the default here
    (``DistillConfig(alpha=0.5)``); a given ``config`` is used as it is, whatever its alpha.

    Args:
        teacher: model A, trained; not modified.
        data: passed to ``distill``.
        config: defaults to ``DistillConfig(alpha=0.5)``.
        **kwargs: ``make_student``, ``checkpoint_dir``, ``resume``, ``progress``, ``precompute`` of :func:`born_again`.

    Returns:
        Model B, trained, in eval mode (:func:`born_again` with one generation also gives its history).
    """
    config = DistillConfig(alpha=0.5) if config is None else config
    return born_again(teacher, data, config, generations=1, **kwargs).generations[0]


def teacher_assistant_chain(
    teacher: nn.Module,
    assistants: Sequence[nn.Module],
    student: nn.Module,
    data: StageData,
    config: DistillConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
    precompute: bool = True,
) -> TeacherAssistantResult:
    """Teacher-assistant KD (Mirzadeh et al. 2020, "Improved Knowledge Distillation via Teacher Assistant").

    ``teacher -> assistants[0] -> ... -> assistants[-1] -> student``, each link one ``distill`` run
    with ``config``, so the capacity gap at each step is smaller than teacher-to-student. (The seeds
    quote Cho & Hariharan 2019 finding that intermediate sizes did not help their ImageNet
    students; measure both.) With no assistants this is plain KD.

    Args:
        teacher: trained, not modified.
        assistants: untrained models of intermediate size, trained in place in this order.
        student: untrained final model, trained in place.
        data, config, progress, precompute: as in :func:`born_again`.
        checkpoint_dir: holds ``assistant{i}.ckpt`` (from 1) and ``student.ckpt``, and each finished
            model; with ``resume=True`` finished stages are loaded, not retrained.
        resume: continue a run that wrote ``checkpoint_dir`` with the same settings.

    Returns:
        A :class:`TeacherAssistantResult` (the given assistant and student objects, trained).

    Raises:
        ConfigError: one module appears twice in the chain; a checkpoint was written with other settings.
        ShapeError: two neighbours in the chain disagree on shapes or classes.
    """
    chain = [teacher, *assistants, student]
    if len({id(m) for m in chain}) != len(chain):
        raise ConfigError("teacher, assistants and student must be distinct modules; one was given twice")
    names = [f"assistant{i}" for i in range(1, len(assistants) + 1)] + ["student"]
    histories = [
        _run_stage(pupil, tutor, data, config, name=name, checkpoint_dir=checkpoint_dir,
                   resume=resume, progress=progress, precompute=precompute)
        for tutor, pupil, name in zip(chain[:-1], chain[1:], names)
    ]
    return TeacherAssistantResult(student, list(assistants), histories)


def build_seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()`` under ``torch.manual_seed(seed)``, leaving the caller's global RNG as it was, so a
    scheme's k-th model starts from the same weights in every run (and in a resumed one)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _fresh_copy(teacher: nn.Module) -> nn.Module:
    """An untrained module of the teacher's architecture (see ``make_student`` of :func:`born_again`)."""
    spec = getattr(teacher, "modelpress_spec", None)
    if spec is not None:
        return build_from_spec(spec)
    for name, module in teacher.named_modules():
        # a pruning mask or shared-weight hook recomputes `weight` from other tensors, which
        # reset_parameters() would not reach: the copy would silently keep the teacher's weights
        if module._forward_pre_hooks or parametrize.is_parametrized(module):
            raise ConfigError(f"cannot re-initialise a copy of the teacher: module {name or 'root'} carries a "
                              "reparametrization (pruning mask or shared weights); make it permanent first or pass make_student")
        if not hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
            raise ConfigError(f"cannot re-initialise a copy of the teacher: module {name or 'root'} "
                              f"({type(module).__name__}) has parameters but no reset_parameters(); pass make_student")
    student = copy.deepcopy(teacher)
    for module in student.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return student.train()


def _run_stage(student: nn.Module, teacher: nn.Module, data: StageData, config: DistillConfig, *, name: str,
               checkpoint_dir, resume: bool, progress: bool | None, precompute: bool) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place), or load the stage if a resumed run finished it."""
    has_spec = getattr(student, "modelpress_spec", None) is not None
    done = Path(checkpoint_dir) / f"{name}{'.mpk' if has_spec else '.safetensors'}" if checkpoint_dir else None
    if resume and done is not None and done.is_file():
        result = _load_stage(student, done, config)
    else:
        source = teacher
        if precompute and isinstance(data, DataSplits) and not config.train.jitter:
            # the same logits distill() would ask for every epoch; jitter would change the inputs
            source = precompute_teacher(teacher, data.x_train)
        checkpoint = Path(checkpoint_dir) / f"{name}.ckpt" if checkpoint_dir else None
        result = distill(student, source, data, config, checkpoint_path=checkpoint, resume=resume, progress=progress).train
        if done is not None:
            _save_stage(student, done, config, result)
    return result


def _config_json(config: DistillConfig) -> dict:
    return {"method": config.method.value, "temperature": config.temperature, "alpha": config.alpha,
            "kd_epochs": config.kd_epochs, "train": config.train.to_json()}


def _save_stage(model: nn.Module, path: Path, config: DistillConfig, result: TrainResult) -> None:
    extra = {"distill_config": _config_json(config), "train_result": asdict(result)}
    if getattr(model, "modelpress_spec", None) is not None:
        save_model(model, path, extra=extra)  # an ordinary .mpk: `modelpress evaluate` opens it
        return
    # safetensors refuses shared or non-contiguous storage
    tensors = {key: t.detach().contiguous().clone() for key, t in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "modelpress-scheme-stage", "extra": json.dumps(extra)})


def _load_stage(model: nn.Module, path: Path, config: DistillConfig) -> TrainResult:
    """Load a finished stage into ``model`` (eval mode) and return its training history."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path))
        extra = json.loads(metadata.get("extra", "{}"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable finished stage: {err}; delete it to retrain the stage") from None
    if extra.get("distill_config") != _config_json(config) or "train_result" not in extra:
        raise ConfigError(f"{path} was written with a different distillation config; resume with the same "
                          "settings or delete the checkpoint folder to start over")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ConfigError(f"{path} holds a model of another architecture ({str(err).splitlines()[0]}); "
                          "resume with the same models") from None
    model.eval()
    return TrainResult(**extra["train_result"])
