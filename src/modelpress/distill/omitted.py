"""The "omitted class" experiment (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network", Sec. 3).

Distil on a transfer set with every example of one class removed: the student learns about that class
only from the teacher's soft targets on *other* examples (a 2 that looks a bit like a 3). Its output
bias for the class is then too low, because it never had to predict it; raising that one bias (Hinton
et al. added 3.5 to the 3's) recovers most of the class: the seeds report 98.6% of the test 3s correct.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from modelpress.core.errors import ConfigError, DataError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill.core import DistillConfig, distill
from modelpress.distill.teachers import Teacher, TeacherStore, as_teacher
from modelpress.measure.metrics import predict_logits


def without_class(splits: DataSplits, cls: int) -> DataSplits:
    """A copy of ``splits`` whose train split has no example of class ``cls``.

    Validation and test are unchanged: they are where we measure how well the student knows the class
    it never saw. ``num_classes`` is unchanged too (the student keeps an output for ``cls``). Loader
    indices address the new, shorter train split; ``info["omitted_class"]`` records ``cls``.

    Raises:
        ConfigError: ``cls`` is not in ``[0, num_classes)``.
        DataError: every training example is of class ``cls``.
    """
    _check_class(cls, splits.num_classes)
    keep = splits.y_train != cls  # (N,)
    if not bool(keep.any()):
        raise DataError(f"every training example is of class {cls}: removing it leaves no training data")
    return replace(splits, x_train=splits.x_train[keep], y_train=splits.y_train[keep],
                   info={**splits.info, "omitted_class": int(cls)})


def final_linear(model: nn.Module, num_classes: int | None = None) -> nn.Linear:
    """The output layer: the last ``nn.Linear`` in module order with ``num_classes`` outputs.

    Args:
        model: a classifier.
        num_classes: its class count; default ``model.modelpress_spec.num_classes`` when the model came
            from the zoo, else the last Linear's ``out_features``.

    Raises:
        ShapeError: no such Linear, or it has no bias.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if num_classes is None:
        spec = getattr(model, "modelpress_spec", None)
        num_classes = spec.num_classes if spec is not None else (linears[-1].out_features if linears else None)
    matching = [m for m in linears if m.out_features == num_classes]
    if not matching:
        raise ShapeError(f"the model has no nn.Linear layer with {num_classes} outputs, so its class biases cannot be found")
    if matching[-1].bias is None:
        raise ShapeError("cannot correct the bias of a model whose last layer has no bias")
    return matching[-1]


def fit_class_bias(model: nn.Module, cls: int, x: torch.Tensor, y: torch.Tensor, *,
                   grid: Sequence[float] | torch.Tensor | None = None) -> float:
    """The offset to add to class ``cls``'s output bias that maximises accuracy on ``(x, y)``.

    Hinton et al. (2015, Sec. 3) raised the bias of the omitted 3 by 3.5, chosen by hand. Here the model
    runs once; adding ``b`` to the bias adds ``b`` to column ``cls`` of the logits, so every grid point
    is scored on those logits. The omitted class is under-predicted, so the default grid,
    ``0, 0.1, ..., 10``, has no negative offsets; give ``grid`` for others. Ties go to the smallest offset.

    Args:
        model: classifier with logits ``(B, C)``.
        cls: the class whose bias to fit.
        x, y: inputs ``(N, *input_shape)`` and labels ``(N,)``, which should contain class ``cls``.
        grid: candidate offsets, 1-D.

    Returns:
        The best offset.

    Raises:
        ShapeError: ``x`` and ``y`` differ in length.
        DataError: no examples.
        ConfigError: ``cls`` outside the model's classes, or an empty / non-finite grid.
    """
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError("no examples to fit the bias on")
    grid = torch.linspace(0.0, 10.0, 101) if grid is None else torch.as_tensor(grid, dtype=torch.float32).flatten()
    if grid.numel() == 0 or not bool(torch.isfinite(grid).all()):
        raise ConfigError(f"grid must be a non-empty list of finite offsets; got {grid.tolist()}")
    logits = predict_logits(model, x)  # (N, C)
    _check_class(cls, logits.shape[1])
    grid = grid.sort().values  # (G,) ascending, so the first best is the smallest
    others = logits.clone()
    others[:, cls] = float("-inf")
    best_other, other_arg = others.max(dim=1)  # (N,) strongest competitor of cls and its index
    shifted = logits[:, cls][None, :] + grid[:, None]  # (G, N)
    # argmax takes the first of equal maxima, so a tie goes to cls only when cls has the lower index
    picks_cls = (shifted > best_other) | ((shifted == best_other) & (cls < other_arg))  # (G, N)
    correct = torch.where(picks_cls, y[None, :] == cls, (y == other_arg)[None, :])  # (G, N)
    accuracy = correct.float().mean(dim=1)  # (G,)
    return float(grid[int(accuracy.argmax())])


@torch.no_grad()
def apply_class_bias_(model: nn.Module, cls: int, offset: float) -> nn.Module:
    """Add ``offset`` to the output bias of class ``cls`` in place; returns ``model``.

    Raises:
        ShapeError: see :func:`final_linear`.
        ConfigError: ``cls`` outside the output layer.
    """
    layer = final_linear(model)
    _check_class(cls, layer.out_features)
    layer.bias[cls] += float(offset)
    return model


def omitted_class_report(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cls: int) -> dict:
    """How the model does on class ``cls`` and overall.

    Returns:
        ``{"class", "n_class", "class_correct", "class_accuracy", "errors", "accuracy", "n"}``;
        ``class_accuracy`` is NaN when ``y`` has no example of ``cls``.
    """
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    pred = predict_logits(model, x).argmax(dim=1)  # (N,)
    of_class = y == cls
    n_class, class_correct = int(of_class.sum()), int((pred[of_class] == cls).sum())
    errors, n = int((pred != y).sum()), int(y.shape[0])
    return {
        "class": int(cls),
        "n_class": n_class,
        "class_correct": class_correct,
        "class_accuracy": class_correct / n_class if n_class else float("nan"),
        "errors": errors,
        "accuracy": (n - errors) / n if n else float("nan"),
        "n": n,
    }


class _ReindexedTeacher(Teacher):
    """Maps indices of the reduced train split back to the full split's, for a stored teacher."""

    def __init__(self, inner: Teacher, kept: torch.Tensor) -> None:
        self.inner, self.kept = inner, kept
        self.num_classes = getattr(inner, "num_classes", None)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x, None if idx is None else self.kept[idx])


def omitted_class_experiment(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module] | Teacher | TeacherStore,
    splits: DataSplits,
    cls: int,
    config: DistillConfig = DistillConfig(),
    *,
    validation: str = "val",
    grid: Sequence[float] | torch.Tensor | None = None,
    checkpoint_path=None,
    resume: bool = False,
    progress: bool | None = None,
) -> dict:
    """Hinton et al. 2015, Sec. 3: distil without class ``cls``, then correct its bias.

    The student is distilled on :func:`without_class`; its validation split lacks ``cls`` too, so no
    example of the class informs training, not even the choice of best epoch. The paper tuned the bias
    by hand; here :func:`fit_class_bias` fits it on the ``validation`` split (which contains the class),
    keeping the test split untouched for the reports.

    Args:
        student: trained in place.
        teacher: anything :func:`~modelpress.distill.distill` takes; a stored teacher's rows must follow
            the full train split (they are re-indexed to the reduced one).
        splits: the full data.
        cls: the class to omit.
        config: distillation settings.
        validation: ``"val"`` (default) or ``"train"``: where the bias offset is fitted.

    Returns:
        ``{"before": report, "after": report, "bias_offset": float, "class": cls}``, reports from
        :func:`omitted_class_report` on the test split.

    Raises:
        ConfigError: bad ``cls`` or ``validation``.
        DataError: the validation split has no example of ``cls``.
    """
    if validation not in ("val", "train"):
        raise ConfigError(f"validation must be one of val, train; got {validation!r}")
    _check_class(cls, splits.num_classes)
    x_fit, y_fit = splits.split(validation)
    if not bool((y_fit == cls).any()):
        raise DataError(f"the {validation} split has no example of class {cls} to fit its bias on")
    reduced = without_class(splits, cls)
    keep_val = reduced.y_val != cls
    reduced = replace(reduced, x_val=reduced.x_val[keep_val], y_val=reduced.y_val[keep_val])
    kept = (splits.y_train != cls).nonzero().flatten()  # (N',) full-split index of each kept example
    distill(student, _ReindexedTeacher(as_teacher(teacher), kept), reduced, config,
            checkpoint_path=checkpoint_path, resume=resume, progress=progress)
    before = omitted_class_report(student, splits.x_test, splits.y_test, cls)
    offset = fit_class_bias(student, cls, x_fit, y_fit, grid=grid)
    apply_class_bias_(student, cls, offset)
    after = omitted_class_report(student, splits.x_test, splits.y_test, cls)
    return {"before": before, "after": after, "bias_offset": offset, "class": int(cls)}


def _check_class(cls: int, num_classes: int) -> None:
    try:  # any integer type (Python, NumPy, 0-d tensor), but not a bool or a float
        value = None if isinstance(cls, bool) else operator.index(cls)
    except TypeError:
        value = None
    if value is None or not 0 <= value < num_classes:
        raise ConfigError(f"cls must be a class id in [0, {num_classes}); got {cls!r}")
