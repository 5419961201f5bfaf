"""Distillation for tabular data, and everything else that needs scikit-learn.

- teachers: :class:`ProbaTeacher` makes any ``predict_proba`` object (a fitted forest, a list of them,
  a module) a distillation teacher, columns matched by class label (:mod:`.proba_teacher`)
- transfer sets: :func:`munge` / :func:`smear` synthetic rows near the training rows (:mod:`.synthetic`)
- ``MimicMLPClassifier`` (Bucila, Caruana & Niculescu-Mizil 2006): an MLP trained on a teacher's
  outputs over a transfer set, a scikit-learn estimator (:mod:`.mimic`)
- born-again trees, CART baselines, tree files (:mod:`modelpress.tabular.trees`)

``proba_teacher`` and ``synthetic`` need only NumPy; the estimators import scikit-learn, so they are
loaded on first use (``modelpress.tabular.MimicMLPClassifier``) rather than with this package.
"""

from modelpress.tabular.proba_teacher import (
    BUILTIN_TEACHERS,
    ProbaTeacher,
    as_proba_teacher,
    fit_teacher,
    make_builtin_teacher,
)
from modelpress.tabular.synthetic import (
    SYNTHETIC_METHODS,
    categorical_mask,
    make_synthetic,
    munge,
    smear,
)

__all__ = [
    "BUILTIN_TEACHERS",
    "SYNTHETIC_METHODS",
    "MimicMLPClassifier",
    "ProbaTeacher",
    "TabularMLP",
    "as_proba_teacher",
    "categorical_mask",
    "fit_teacher",
    "make_builtin_teacher",
    "make_synthetic",
    "munge",
    "smear",
]

_LAZY = {"MimicMLPClassifier": "modelpress.tabular.mimic", "TabularMLP": "modelpress.tabular.mimic"}


def __getattr__(name: str):
    # the estimators import scikit-learn at load time; a NumPy-only use of this package should not pay for that
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modelpress.tabular' has no attribute {name!r}")
