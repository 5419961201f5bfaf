"""``BornAgainTreeClassifier``: one CART tree that mimics an ensemble (Breiman & Shang, 1996).

An ensemble of hundreds of trees is accurate but cannot be read. Breiman & Shang grew a single
tree on synthetic data labelled by the ensemble. Then they picked, from the tree's
cost-complexity pruning sequence, the subtree with the lowest error on the real training set.
With far more (teacher-labelled) rows than the training set, the tree can split where the
ensemble's decision surface bends. A plain CART tree stops where its few training rows run out.

A scikit-learn estimator. The fitted tree is an ordinary ``DecisionTreeClassifier``
(``tree_model_``), so everything that reads sklearn trees reads it. :meth:`rules` prints it as
if/else text.

Departure from the paper: Breiman & Shang drew new synthetic rows at every node that ran short.
Here one large synthetic set (MUNGE or smearing) is drawn up front. ``n_synthetic`` plays the
role of their sampling budget.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.tree import DecisionTreeClassifier, export_text
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from modelpress.core.errors import ConfigError
from modelpress.tabular.synthetic import categorical_mask, teacher_transfer_set
from modelpress.tabular.trees.pruning import FULL_TREE, leaf_alphas, subtree_errors

__all__ = ["PRUNE_CHOICES", "BornAgainTreeClassifier"]

PRUNE_CHOICES = ("train", "none")


class BornAgainTreeClassifier(ClassifierMixin, BaseEstimator):
    """A single decision tree grown on real + synthetic rows labelled by a teacher, then pruned.

    Args:
        teacher: ``"random_forest"``, ``"gradient_boosting"``, an estimator with ``predict_proba``
            (fitted: used as is; unfitted: a clone is fitted on ``X, y``), an ``nn.Module``, or a
            list of these (probabilities averaged).
        synthetic, n_synthetic, p, s, scale, categorical_features: the synthetic rows, see
            :func:`modelpress.tabular.synthetic.make_synthetic`.
        max_depth, max_leaf_nodes, min_samples_leaf, criterion: CART growth limits, for a tree a
            person can read.
        prune: ``"train"``, the subtree of the cost-complexity path with the lowest error on the
            real training rows; ties go to the smaller tree. Every subtree on the path is scored, from
            one grown tree (:mod:`modelpress.tabular.trees.pruning`). Or ``"none"``.
        random_state: seeds the teacher, the synthetic rows and the tree.

    Attributes:
        classes_, n_features_in_, teacher_, tree_model_ (the fitted ``DecisionTreeClassifier``,
        trained on class indices), ccp_alpha_ (the pruning strength chosen), pruning_path_ (list of
        ``{"alpha", "leaves", "train_error"}``, one per subtree, the grown tree first), n_synthetic_, fidelity_ (share of
        the synthetic rows on which tree and teacher agree).
    """

    def __init__(self, teacher="random_forest", synthetic="munge", n_synthetic=20000, p=0.5, s=1.0, scale=0.1,
                 categorical_features=None, max_depth=None, max_leaf_nodes=None, min_samples_leaf=1, criterion="gini",
                 prune="train", random_state=None):
        self.teacher = teacher
        self.synthetic = synthetic
        self.n_synthetic = n_synthetic
        self.p = p
        self.s = s
        self.scale = scale
        self.categorical_features = categorical_features
        self.max_depth = max_depth
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.criterion = criterion
        self.prune = prune
        self.random_state = random_state

    def _tree(self, seed: int, alpha: float) -> DecisionTreeClassifier:
        return DecisionTreeClassifier(criterion=self.criterion, max_depth=self.max_depth, max_leaf_nodes=self.max_leaf_nodes,
                                      min_samples_leaf=self.min_samples_leaf, ccp_alpha=float(alpha), random_state=seed)

    def fit(self, X, y):
        """Fit the teacher if needed, label real + synthetic rows, grow and prune one tree; returns ``self``."""
        if self.prune not in PRUNE_CHOICES:
            raise ConfigError(f"prune must be one of {', '.join(PRUNE_CHOICES)}; got {self.prune!r}")
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ConfigError(f"a classifier needs at least two classes; y has only one class ({self.classes_[0]!r})")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        teacher, transfer = teacher_transfer_set(self, X, y, categorical_mask(self.categorical_features, X.shape[1]), seed)
        labels = teacher.predict_proba(transfer).argmax(axis=1)
        grown = self._tree(seed, 0.0).fit(transfer, labels)
        if self.prune == "none":
            self.ccp_alpha_, self.tree_model_ = 0.0, grown
            self.pruning_path_ = []
        else:
            self.ccp_alpha_, self.pruning_path_ = self._choose_subtree(grown, X, y_index)
            self.tree_model_ = grown if self.ccp_alpha_ == 0.0 else self._tree(seed, self.ccp_alpha_).fit(transfer, labels)
        synthetic_rows = slice(len(X), None)
        self.fidelity_ = float(np.mean(self.tree_model_.predict(transfer[synthetic_rows]) == labels[synthetic_rows])) \
            if self.n_synthetic_ else float("nan")
        return self

    @staticmethod
    def _choose_subtree(grown: DecisionTreeClassifier, x: np.ndarray, y_index: np.ndarray) -> tuple[float, list[dict]]:
        """The ``ccp_alpha`` of the subtree with the lowest error on ``(x, y_index)``, and the whole path.

        Ties go to the larger alpha, the smaller tree. The alpha returned lies halfway to the next
        step of the path, so refitting with it lands on that subtree despite rounding.
        """
        node_alphas = leaf_alphas(grown.tree_)
        steps = np.concatenate([[FULL_TREE], np.unique(node_alphas[grown.tree_.children_left != -1])])
        errors, leaves = subtree_errors(grown, x, y_index, steps, node_alphas)
        path = [{"alpha": max(float(a), 0.0), "leaves": int(n), "train_error": float(e)} for a, n, e in zip(steps, leaves, errors)]
        best = len(steps) - 1 - int(np.argmin(errors[::-1]))
        if best == 0:
            return 0.0, path
        following = steps[best + 1] if best + 1 < len(steps) else 2.0 * steps[best] + 1e-12
        return float((steps[best] + following) / 2.0), path

    def predict_proba(self, X) -> np.ndarray:
        """Leaf class frequencies ``(N, C)`` (of teacher labels), columns in ``classes_`` order."""
        check_is_fitted(self, "tree_model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        proba = np.zeros((len(X), len(self.classes_)))
        # A class the teacher never predicted has no column in the tree's own output.
        proba[:, self.tree_model_.classes_.astype(int)] = self.tree_model_.predict_proba(X)
        return proba

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``(N,)`` drawn from ``classes_``."""
        check_is_fitted(self, "tree_model_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @property
    def node_count_(self) -> int:
        """Nodes in the fitted tree (internal nodes and leaves)."""
        check_is_fitted(self, "tree_model_")
        return int(self.tree_model_.tree_.node_count)

    def rules(self, feature_names=None, decimals: int = 3) -> str:
        """The tree as indented if/else text, leaves naming the predicted class."""
        check_is_fitted(self, "tree_model_")
        names = None if feature_names is None else [str(n) for n in feature_names]
        if names is not None and len(names) != self.n_features_in_:
            raise ConfigError(f"{len(names)} feature names for a tree over {self.n_features_in_} features")
        text = export_text(self.tree_model_, feature_names=names, decimals=decimals,
                           class_names=[str(c) for c in self.classes_[self.tree_model_.classes_.astype(int)]])
        return text
