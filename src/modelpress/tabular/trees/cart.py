"""The baseline a born-again tree must beat: CART pruned by cross-validation, as Breiman et al. did."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

__all__ = ["fit_cart"]

MAX_ALPHAS = 60


def fit_cart(x: np.ndarray, y: np.ndarray, *, seed: int = 0, folds: int = 5, max_depth: int | None = None,
             max_leaf_nodes: int | None = None) -> DecisionTreeClassifier:
    """A CART tree on ``(x, y)`` whose ``ccp_alpha`` is chosen by stratified ``folds``-fold CV.

    The candidates are the alphas of the tree's own cost-complexity path on all of ``(x, y)``
    (at most ``MAX_ALPHAS``, by quantile), and CV accuracy picks one. With fewer rows per class than ``folds``, the fold count shrinks
    to fit.
    """
    tree = DecisionTreeClassifier(random_state=seed, max_depth=max_depth, max_leaf_nodes=max_leaf_nodes)
    alphas = np.unique(tree.cost_complexity_pruning_path(x, y).ccp_alphas)
    if len(alphas) > MAX_ALPHAS:  # each candidate costs `folds` fits; the dense small-alpha end matters most
        alphas = np.unique(np.quantile(alphas, np.linspace(0, 1, MAX_ALPHAS), method="nearest"))
    smallest_class = int(np.unique(y, return_counts=True)[1].min())
    k = max(2, min(folds, smallest_class))
    search = GridSearchCV(tree, {"ccp_alpha": alphas}, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    return search.fit(x, y).best_estimator_
