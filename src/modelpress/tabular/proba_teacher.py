"""Any classifier as a teacher for tabular data: ``predict_proba`` objects, lists of them, ``nn.Module``.

The image-side teachers in :mod:`modelpress.distill.teachers` map tensors to logits. Tabular
teachers are mostly scikit-learn ensembles in production, so this adapter works on NumPy rows
``(N, F)`` and returns class probabilities ``(N, C)`` in the column order of the classes the
student was given. Columns are matched by class label, never by position alone, because a
teacher fitted on differently ordered or differently typed labels would otherwise teach the
wrong class silently.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError

__all__ = ["BUILTIN_TEACHERS", "ProbaTeacher", "as_proba_teacher", "fit_teacher", "make_builtin_teacher"]

BUILTIN_TEACHERS = ("random_forest", "gradient_boosting")
LOG_FLOOR = 1e-6  # probabilities of exactly 0 (common in forests) would give -inf logits


def make_builtin_teacher(name: str, random_state: int | None):
    """An unfitted ensemble by name: ``random_forest`` (500 trees) or ``gradient_boosting`` (histogram GBM)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

    if name == "random_forest":
        return RandomForestClassifier(n_estimators=500, random_state=random_state, n_jobs=1)
    if name == "gradient_boosting":
        return HistGradientBoostingClassifier(random_state=random_state)
    raise ConfigError(f"unknown teacher {name!r}; built in: {', '.join(BUILTIN_TEACHERS)}, or pass an estimator")


def _is_fitted(estimator: Any) -> bool:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    except TypeError:  # not an estimator sklearn recognises: trust that it is ready to predict
        return True
    return True


def fit_teacher(teacher: Any, x: np.ndarray, y: np.ndarray, random_state: int | None):
    """Return a teacher ready to predict, fitting a copy on ``(x, y)`` where it is not fitted yet.

    Args:
        teacher: a built-in name, a fitted or unfitted estimator with ``predict_proba``, an
            ``nn.Module`` (used as trained), or a list / tuple of these (each resolved alike).
        x, y: the training rows ``(N, F)`` and labels ``(N,)``, used only for unfitted teachers.
        random_state: seeds built-in teachers.

    Returns:
        The same structure with every member ready; the caller's estimators are never refitted
        in place (unfitted ones are cloned first, as scikit-learn's meta-estimators do).
    """
    from sklearn.base import clone

    if isinstance(teacher, (list, tuple)):
        if not teacher:
            raise ConfigError("the teacher list is empty")
        return [fit_teacher(member, x, y, random_state) for member in teacher]
    if isinstance(teacher, str):
        return make_builtin_teacher(teacher, random_state).fit(x, y)
    if isinstance(teacher, nn.Module):
        return teacher
    if not hasattr(teacher, "predict_proba"):
        raise ConfigError(f"a teacher needs predict_proba (or must be an nn.Module); {type(teacher).__name__} has none")
    return teacher if _is_fitted(teacher) else clone(teacher).fit(x, y)


class ProbaTeacher:
    """A weighted mixture of classifiers: ``p(y|x) = sum_m w_m p_m(y|x)`` over ``classes``.

    Args:
        members: fitted objects with ``predict_proba`` and/or trained ``nn.Module``s mapping float32
            ``(B, F)`` to logits ``(B, C)``.
        classes: the student's class labels ``(C,)``, sorted as ``np.unique`` sorts them.
        weights: non-negative mixture weights (normalised); uniform by default.

    Raises:
        ShapeError: a member knows different classes, or an ``nn.Module`` has the wrong number of outputs
            (checked on first use).
    """

    def __init__(self, members: Sequence[Any], classes: np.ndarray, weights: Sequence[float] | None = None) -> None:
        self.members = list(members)
        self.classes = np.asarray(classes)
        given = np.ones(len(self.members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if given.shape != (len(self.members),) or (given < 0).any() or given.sum() <= 0:
            raise ConfigError(f"teacher weights must be {len(self.members)} non-negative numbers, not all 0; got {weights}")
        self.weights = given / given.sum()
        self._columns = [self._column_order(member) for member in self.members]

    def _column_order(self, member: Any) -> np.ndarray | None:
        known = getattr(member, "classes_", None)
        if known is None or isinstance(member, nn.Module):
            return None
        known = np.asarray(known)
        if len(known) != len(self.classes) or set(known.tolist()) != set(self.classes.tolist()):
            raise ShapeError(f"teacher {type(member).__name__} knows classes {known.tolist()} "
                             f"but the data has classes {self.classes.tolist()}")
        return np.array([int(np.flatnonzero(known == label)[0]) for label in self.classes])

    def _member_proba(self, member: Any, columns: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        if isinstance(member, nn.Module):
            member.eval()
            with torch.no_grad():
                logits = member(torch.as_tensor(x, dtype=torch.float32))
            if logits.ndim != 2 or logits.shape[1] != len(self.classes):
                raise ShapeError(f"teacher module returns shape {tuple(logits.shape)} for {len(x)} rows; "
                                 f"expected ({len(x)}, {len(self.classes)}) for the data's classes")
            return torch.softmax(logits.double(), dim=1).numpy()
        proba = np.asarray(member.predict_proba(x), dtype=np.float64)
        return proba if columns is None else proba[:, columns]

    def predict_proba(self, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Mixture probabilities ``(N, C)`` for rows ``x`` ``(N, F)``, in batches to bound memory."""
        x = np.asarray(x)
        chunks = []
        for start in range(0, len(x), batch_size):
            rows = x[start:start + batch_size]
            chunks.append(sum(w * self._member_proba(m, c, rows) for m, c, w in zip(self.members, self._columns, self.weights)))
        return np.concatenate(chunks) if chunks else np.empty((0, len(self.classes)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The mixture's most probable class label ``(N,)``."""
        return self.classes[self.predict_proba(x).argmax(axis=1)]

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Centred log-probabilities ``(N, C)``: the logits of the mixture, defined up to a per-row constant."""
        log_p = np.log(np.clip(self.predict_proba(x), LOG_FLOOR, None))
        return log_p - log_p.mean(axis=1, keepdims=True)


def as_proba_teacher(teacher: Any, classes: np.ndarray, weights: Sequence[float] | None = None) -> ProbaTeacher:
    """Wrap a ready teacher (one member or a list, see :func:`fit_teacher`) as a :class:`ProbaTeacher`."""
    if isinstance(teacher, ProbaTeacher):
        return teacher
    members = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    return ProbaTeacher(members, classes, weights)
