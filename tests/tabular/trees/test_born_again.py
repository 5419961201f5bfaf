"""Born-again trees: the pruning path scored from one tree equals scikit-learn's refits; the estimator; files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.tabular.trees import (
    BornAgainTreeClassifier,
    fit_cart,
    leaf_alphas,
    load_tree,
    save_tree,
    subtree_errors,
)
from modelpress.tabular.trees.pruning import FULL_TREE

SMALL = dict(teacher=RandomForestClassifier(n_estimators=10, random_state=0), n_synthetic=300, random_state=0)


@parametrize_with_checks([BornAgainTreeClassifier(**SMALL)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("max_leaf_nodes", [None, 30])  # depth-first and best-first growth number nodes differently
def test_every_subtree_matches_a_scikit_learn_refit(max_leaf_nodes):
    x, y = load_digits(return_X_y=True)
    grown = DecisionTreeClassifier(random_state=0, max_leaf_nodes=max_leaf_nodes).fit(x[:500], y[:500])
    node_alphas = leaf_alphas(grown.tree_)
    steps = np.concatenate([[FULL_TREE], np.unique(node_alphas[grown.tree_.children_left != -1])])
    reference = np.unique(grown.cost_complexity_pruning_path(x[:500], y[:500]).ccp_alphas)
    np.testing.assert_allclose(steps[1:][steps[1:] > 0], reference[reference > 0], rtol=1e-9)
    errors, leaves = subtree_errors(grown, x[500:], y[500:], steps, node_alphas)
    for k in range(0, len(steps), 3):
        following = steps[k + 1] if k + 1 < len(steps) else 2 * steps[k] + 1e-12
        alpha = 0.0 if k == 0 else (steps[k] + following) / 2
        refit = DecisionTreeClassifier(random_state=0, max_leaf_nodes=max_leaf_nodes, ccp_alpha=alpha).fit(x[:500], y[:500])
        assert refit.get_n_leaves() == leaves[k]
        assert np.mean(refit.predict(x[500:]) != y[500:]) == pytest.approx(errors[k], abs=1e-12)


def test_chosen_subtree_has_the_lowest_training_error_and_is_the_smallest_such():
    x, y = make_classification(300, 8, n_informative=5, random_state=0)
    model = BornAgainTreeClassifier(**SMALL).fit(x, y)
    errors = [step["train_error"] for step in model.pruning_path_]
    best = min(errors)
    assert np.mean(model.predict(x) != y) == pytest.approx(best)
    assert model.tree_model_.get_n_leaves() == min(s["leaves"] for s in model.pruning_path_ if s["train_error"] == best)
    assert 0.9 < model.fidelity_ <= 1.0


@pytest.mark.slow
def test_born_again_tree_beats_cart_on_breast_cancer():
    x, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:400], order[400:]
    cart = fit_cart(x[train], y[train], seed=0)
    born = BornAgainTreeClassifier(teacher="random_forest", n_synthetic=5000, random_state=0).fit(x[train], y[train])
    assert born.score(x[test], y[test]) > cart.score(x[test], y[test])


def test_limits_rules_and_string_classes():
    x, y = make_classification(200, 4, n_informative=3, n_redundant=0, random_state=1)
    labels = np.array(["no", "yes"])[y]
    model = BornAgainTreeClassifier(max_depth=3, **SMALL).fit(x, labels)
    assert model.tree_model_.get_depth() <= 3
    text = model.rules(["age", "income", "debt", "tenure"])
    assert "class: yes" in text and "class: no" in text
    assert any(f"|--- {name} <=" in text for name in ("age", "income", "debt", "tenure"))
    with pytest.raises(ConfigError, match="feature names"):
        model.rules(["just one"])
    with pytest.raises(ConfigError, match="prune"):
        BornAgainTreeClassifier(prune="cv").fit(x, y)


def test_tree_file_round_trip_and_damage(tmp_path):
    x, y = make_classification(200, 5, n_informative=3, n_redundant=0, n_classes=3, random_state=2)
    labels = np.array(["a", "b", "c"])[y]
    model = BornAgainTreeClassifier(**SMALL).fit(x, labels)
    path = save_tree(model, tmp_path / "tree.json", feature_names=list("vwxyz"), categories={4: ["red", "blue"]})
    loaded = load_tree(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_allclose(loaded.predict_proba(x), model.predict_proba(x))
    assert loaded.node_count == model.node_count_ and loaded.categories == {4: ["red", "blue"]}
    with pytest.raises(ShapeError, match="5 features"):
        loaded.predict(x[:, :3])

    document = json.loads(path.read_text())
    document["tree"]["threshold"][0] += 1.0
    (tmp_path / "edited.json").write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match="checksum"):
        load_tree(tmp_path / "edited.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:100])
    with pytest.raises(ModelFileError, match="not JSON"):
        load_tree(tmp_path / "cut.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a modelpress tree"):
        load_tree(tmp_path / "other.json")
    with pytest.raises(ModelFileError, match="no tree file"):
        load_tree(tmp_path / "absent.json")


def test_a_cycle_in_the_node_arrays_is_refused_even_with_a_valid_checksum(tmp_path):
    from modelpress.tabular.trees.io import _digest

    x, y = make_classification(100, 4, random_state=3)
    path = save_tree(BornAgainTreeClassifier(**SMALL).fit(x, y), tmp_path / "tree.json")
    document = json.loads(path.read_text())
    document["tree"]["left"][1 if document["tree"]["left"][1] != -1 else 0] = 0  # a child pointing back up
    document["sha256"] = _digest(document["tree"])
    path.write_text(json.dumps(document))
    with pytest.raises(ModelFileError, match="inconsistent"):
        load_tree(path)
