"""A fitted tree as a JSON file that loads without pickle and predicts with NumPy alone.

The file holds the node arrays, the class labels, the feature names and the category codes. It
also holds a format name, a version, and a SHA-256 of its content, so a foreign, truncated or
edited file is refused with a clear error. The file is written atomically. :class:`TreeFile`
predicts by walking all rows down the tree level by level.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelFileError, ShapeError
from modelpress.core.io import atomic_write

__all__ = ["TREE_FORMAT", "TREE_VERSION", "TreeFile", "load_tree", "save_tree"]

TREE_FORMAT = "modelpress-tree"
TREE_VERSION = 1


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_tree(model, path: str | os.PathLike[str], *, feature_names=None, categories: dict[int, list[str]] | None = None) -> Path:
    """Write a fitted tree classifier (``BornAgainTreeClassifier`` or ``DecisionTreeClassifier``) as JSON.

    Args:
        model: the fitted estimator; its ``classes_`` become the file's labels.
        path: the ``.json`` file.
        feature_names: ``F`` names (default ``x0 ...``).
        categories: ``{feature index: category names}`` of integer-coded nominal features.
    """
    inner = getattr(model, "tree_model_", model)
    tree = inner.tree_
    # The born-again tree is trained on class indices; its leaves' columns index the outer classes_.
    outer = np.asarray(model.classes_)
    leaf_classes = outer[inner.classes_.astype(int)] if inner is not model else outer
    proba = tree.value[:, 0, :] / tree.value[:, 0, :].sum(axis=1, keepdims=True)
    names = [f"x{j}" for j in range(tree.n_features)] if feature_names is None else [str(n) for n in feature_names]
    if len(names) != tree.n_features:
        raise ShapeError(f"{len(names)} feature names for a tree over {tree.n_features} features")
    payload = {
        "classes": [c.item() if hasattr(c, "item") else c for c in leaf_classes],
        "feature_names": names,
        "categories": {str(j): list(v) for j, v in (categories or {}).items()},
        "left": tree.children_left.tolist(), "right": tree.children_right.tolist(),
        "feature": tree.feature.tolist(), "threshold": tree.threshold.tolist(), "proba": proba.tolist(),
    }
    document = {"format": TREE_FORMAT, "version": TREE_VERSION, "sha256": _digest(payload), "tree": payload}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(document))
    return Path(path)


@dataclass
class TreeFile:
    """A tree read back from JSON: ``predict`` / ``predict_proba`` on float rows ``(N, F)``."""

    classes: np.ndarray
    feature_names: list[str]
    categories: dict[int, list[str]]
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    proba: np.ndarray

    @property
    def node_count(self) -> int:
        return len(self.left)

    def leaf_of(self, x: np.ndarray) -> np.ndarray:
        """Leaf node id ``(N,)`` reached by each row (scikit-learn's rule: go left when ``x <= threshold``)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ShapeError(f"the tree takes rows of {len(self.feature_names)} features; got shape {x.shape}")
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        while True:
            inside = self.left[node] != -1
            if not inside.any():
                return node
            at = node[inside]
            goes_left = x[rows[inside], self.feature[at]] <= self.threshold[at]
            node[inside] = np.where(goes_left, self.left[at], self.right[at])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.proba[self.leaf_of(x)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.predict_proba(x).argmax(axis=1)]


def load_tree(path: str | os.PathLike[str]) -> TreeFile:
    """Read a tree written by :func:`save_tree`.

    Raises:
        ModelFileError: not a modelpress tree file, an unknown version, a failed checksum, or
        inconsistent node arrays.
    """
    source = Path(path)
    try:
        document = json.loads(source.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"no tree file at {source}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{source} is not a tree file (not JSON: {err}); truncated or foreign?") from None
    if not isinstance(document, dict) or document.get("format") != TREE_FORMAT:
        raise ModelFileError(f"{source} is not a modelpress tree file")
    if document.get("version") != TREE_VERSION:
        raise ModelFileError(f"{source} has tree format version {document.get('version')}; this modelpress reads {TREE_VERSION}")
    payload = document.get("tree")
    required = {"classes", "feature_names", "categories", "left", "right", "feature", "threshold", "proba"}
    if not isinstance(payload, dict) or not required <= payload.keys():
        raise ModelFileError(f"{source}: the tree section is missing or incomplete")
    if _digest(payload) != document.get("sha256"):
        raise ModelFileError(f"{source}: checksum mismatch; the file was changed or damaged")
    left, right = np.asarray(payload["left"], dtype=np.int64), np.asarray(payload["right"], dtype=np.int64)
    feature = np.asarray(payload["feature"], dtype=np.int64)
    proba = np.asarray(payload["proba"], dtype=np.float64)
    n, width = len(left), len(payload["feature_names"])
    internal = left != -1
    ids = np.arange(n)
    # Children come after their parent in scikit-learn's node order; requiring it also rules out cycles.
    if (len(right) != n or len(feature) != n or len(payload["threshold"]) != n or proba.shape != (n, len(payload["classes"]))
            or (left[internal] >= n).any() or (right[internal] >= n).any() or (left[internal] <= ids[internal]).any()
            or (right[internal] <= ids[internal]).any()
            or (feature[internal] < 0).any() or (feature[internal] >= width).any()):
        raise ModelFileError(f"{source}: inconsistent node arrays")
    return TreeFile(classes=np.asarray(payload["classes"]), feature_names=list(payload["feature_names"]),
                    categories={int(j): list(v) for j, v in payload["categories"].items()}, left=left, right=right,
                    feature=feature, threshold=np.asarray(payload["threshold"], dtype=np.float64), proba=proba)
