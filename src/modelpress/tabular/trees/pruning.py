"""Every subtree of CART's cost-complexity path, scored from one fitted tree.

Breiman & Shang choose, from the pruning sequence of the born-again tree, the subtree with the
lowest error on the training set. Refitting scikit-learn's tree at each ``ccp_alpha`` would cost
one full tree fit per subtree, and a tree grown on 20k synthetic rows has hundreds of subtrees.
So the weakest-link sequence is computed once here, with the same risk as scikit-learn (node
impurity x weighted share of samples). It records the ``ccp_alpha`` at which each internal node
becomes a leaf. The prediction of every subtree then follows from each row's root-to-leaf path: a
row stops at the first node on its path that is already a leaf at that alpha.
"""

from __future__ import annotations

import numpy as np

__all__ = ["leaf_alphas", "subtree_errors"]

FULL_TREE = -np.inf  # the alpha that prunes nothing: only the grown tree's own leaves stop a row


def _preorder(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] != -1:
            stack += [right[node], left[node]]
    return np.array(order)


def leaf_alphas(tree) -> np.ndarray:
    """``(nodes,)``: the cost-complexity alpha at which each node becomes a leaf.

    Args:
        tree: a fitted scikit-learn ``Tree`` (``DecisionTreeClassifier(...).tree_``).

    Returns:
        float64 array; ``-inf`` for the grown tree's leaves. Internal nodes get the running maximum
        of the weakest-link alphas at the step they are pruned (or their ancestor is). This is the
        rule by which scikit-learn stops pruning at ``ccp_alpha``: pruning stops at the first step
        whose alpha exceeds it.
    """
    left, right = tree.children_left, tree.children_right
    internal = left != -1
    weight = tree.weighted_n_node_samples
    risk = weight * tree.impurity / weight[0]
    parent = np.full(tree.node_count, -1)
    parent[left[internal]] = np.flatnonzero(internal)
    parent[right[internal]] = np.flatnonzero(internal)
    order = _preorder(left, right)
    position = np.empty(tree.node_count, dtype=int)
    position[order] = np.arange(tree.node_count)
    branch_risk, leaves, size = risk.copy(), np.ones(tree.node_count), np.ones(tree.node_count, dtype=int)
    for node in order[::-1]:
        if internal[node]:
            branch_risk[node] = branch_risk[left[node]] + branch_risk[right[node]]
            leaves[node] = leaves[left[node]] + leaves[right[node]]
            size[node] = 1 + size[left[node]] + size[right[node]]

    alphas = np.full(tree.node_count, FULL_TREE)
    alive, current = internal.copy(), FULL_TREE
    while alive.any():
        gain = np.where(alive, (risk - branch_risk) / np.maximum(leaves - 1, 1), np.inf)
        weakest = int(np.argmin(gain))
        current = max(current, float(gain[weakest]))
        subtree = order[position[weakest]:position[weakest] + size[weakest]]
        alphas[subtree[alive[subtree]]] = current
        alive[subtree] = False
        risk_change, leaf_change = risk[weakest] - branch_risk[weakest], leaves[weakest] - 1
        node = parent[weakest]
        while node != -1:
            branch_risk[node] += risk_change
            leaves[node] -= leaf_change
            node = parent[node]
        branch_risk[weakest], leaves[weakest] = risk[weakest], 1
    return alphas


def subtree_errors(model, x: np.ndarray, y: np.ndarray, alphas: np.ndarray, node_alphas: np.ndarray,
                   chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Error rate and leaf count of the subtree pruned at each of ``alphas``.

    Args:
        model: the fitted ``DecisionTreeClassifier`` (grown, not pruned).
        x, y: rows ``(N, F)`` and their labels ``(N,)``, in the label space of ``model.classes_``.
        alphas: ``(A,)`` pruning strengths; ``-inf`` is the grown tree.
        node_alphas: :func:`leaf_alphas` of ``model.tree_``.
        chunk: alphas evaluated at once (memory ``N x depth x chunk``).

    Returns:
        ``errors (A,)`` in [0, 1] and ``leaves (A,)``.
    """
    tree = model.tree_
    paths = model.decision_path(x).tocsr()
    depth = np.diff(paths.indptr).max()
    nodes = np.empty((len(x), depth), dtype=int)
    for row in range(len(x)):
        on_path = paths.indices[paths.indptr[row]:paths.indptr[row + 1]]
        # Node ids are in depth order only for depth-first growth, and max_leaf_nodes grows best-first.
        on_path = on_path[np.argsort(-tree.n_node_samples[on_path], kind="stable")]
        nodes[row, :len(on_path)] = on_path
        nodes[row, len(on_path):] = on_path[-1]
    stop_alpha = node_alphas[nodes]
    node_class = tree.value[:, 0, :].argmax(axis=1)
    alphas = np.asarray(alphas, dtype=np.float64)
    errors = np.empty(len(alphas))
    for start in range(0, len(alphas), chunk):
        block = np.asarray(alphas[start:start + chunk])
        stops = stop_alpha[:, :, None] <= block[None, None, :]
        first = stops.argmax(axis=1)
        reached = np.take_along_axis(nodes, first, axis=1)
        errors[start:start + chunk] = (model.classes_[node_class[reached]] != y[:, None]).mean(axis=0)
    # A node is a leaf of the subtree at alpha when it is a leaf by then (its own alpha <= alpha) and
    # no ancestor was one before it (every ancestor's alpha > alpha).
    ancestors = _ancestor_min(tree, node_alphas)
    valid = node_alphas < ancestors
    own, above = np.sort(node_alphas[valid]), np.sort(ancestors[valid])
    leaves = np.searchsorted(own, alphas, side="right") - np.searchsorted(above, alphas, side="right")
    return errors, leaves


def _ancestor_min(tree, node_alphas: np.ndarray) -> np.ndarray:
    """``(nodes,)``: the smallest alpha among each node's strict ancestors (``inf`` at the root)."""
    left, right = tree.children_left, tree.children_right
    result = np.full(tree.node_count, np.inf)
    for node in _preorder(left, right):
        if left[node] != -1:
            result[left[node]] = result[right[node]] = min(result[node], node_alphas[node])
    return result
