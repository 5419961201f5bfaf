"""The ``tree`` stage: an ensemble (or an earlier stage's network) -> one born-again tree, a JSON file."""

from __future__ import annotations

import numpy as np
from torch import nn

from modelpress.measure.estimators import count_tree_nodes
from modelpress.recipes.context import StageContext, StageOutput
from modelpress.recipes.schema import TreeStage


def flat_rows(x) -> np.ndarray:
    """Examples ``(N, *input_shape)`` as float64 rows ``(N, F)``, what scikit-learn estimators take."""
    return x.reshape(len(x), -1).numpy().astype(np.float64)


def run_tree(options: TreeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Fit :class:`~modelpress.tabular.trees.BornAgainTreeClassifier` on the training split and save it with
    :func:`~modelpress.tabular.trees.save_tree`; the ensemble's own test accuracy and size are recorded beside it."""
    from modelpress.tabular.trees import BornAgainTreeClassifier, save_tree

    splits = ctx.splits
    if source is not None:  # a network takes (B, *input_shape); the tree hands it flat rows
        teacher = nn.Sequential(nn.Unflatten(1, tuple(splits.input_shape)), ctx.load(source).eval()).eval()
    else:
        teacher = options.ensemble
    tree = BornAgainTreeClassifier(teacher=teacher, synthetic=options.synthetic, n_synthetic=options.n_synthetic,
                                   max_depth=options.max_depth, max_leaf_nodes=options.max_leaf_nodes,
                                   min_samples_leaf=options.min_samples_leaf, prune=options.prune, random_state=ctx.seed)
    tree.fit(flat_rows(splits.x_train), splits.y_train.numpy())
    path = save_tree(tree, ctx.folder / "tree.json")
    x_test, y_test = flat_rows(splits.x_test), splits.y_test.numpy()
    fidelity = float(tree.fidelity_) if np.isfinite(tree.fidelity_) else None  # None: no synthetic rows to agree on
    info = {"teacher": source or options.ensemble, "fidelity": fidelity, "ccp_alpha": tree.ccp_alpha_,
            "n_synthetic": tree.n_synthetic_, "tree_nodes": tree.node_count_}
    if source is None:
        info |= {"ensemble_test_accuracy": float(np.mean(tree.teacher_.predict(x_test) == y_test)),
                 "ensemble_nodes": count_tree_nodes(tree.teacher_)}
    return StageOutput(path, tree, info=info)
