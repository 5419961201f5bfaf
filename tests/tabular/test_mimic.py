"""MimicMLPClassifier: scikit-learn's estimator checks, teachers of every kind, targets, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.tabular.mimic import MimicMLPClassifier
from modelpress.tabular.proba_teacher import ProbaTeacher, fit_teacher

SMALL = dict(hidden_layer_sizes=(16,), n_synthetic=200, max_epochs=15, batch_size=32, learning_rate=0.01, n_iter_no_change=5,
             random_state=0)


# The checks fit many times; a smaller transfer set and fewer, larger steps keep them to seconds.
CHECKED = MimicMLPClassifier(teacher=RandomForestClassifier(n_estimators=5, random_state=0), hidden_layer_sizes=(8,),
                             n_synthetic=100, max_epochs=10, batch_size=64, learning_rate=0.03, random_state=0)


@parametrize_with_checks([CHECKED])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    return train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)


@pytest.mark.slow
def test_mimic_of_a_forest_is_about_as_good_as_the_forest_and_agrees_with_it(cancer):
    x_tr, x_te, y_tr, y_te = cancer
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(x_tr, y_tr)
    mimic = MimicMLPClassifier(teacher=forest, n_synthetic=3000, max_epochs=40, random_state=0).fit(x_tr, y_tr)
    assert mimic.teacher_ is forest  # a fitted teacher is used as given, not refitted
    assert mimic.n_synthetic_ == 3000
    assert mimic.fidelity_ > 0.9
    assert mimic.score(x_te, y_te) >= forest.score(x_te, y_te) - 0.03
    proba = mimic.predict_proba(x_te)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_same_random_state_same_model():
    x, y = make_classification(200, 6, random_state=0)
    a = MimicMLPClassifier(teacher=LogisticRegression(), **SMALL).fit(x, y)
    b = MimicMLPClassifier(teacher=LogisticRegression(), **SMALL).fit(x, y)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


@pytest.mark.parametrize("target", ["proba", "logits", "labels"])
def test_every_target_learns(target):
    x, y = make_classification(300, 6, n_informative=4, random_state=1)
    model = MimicMLPClassifier(teacher=LogisticRegression(), target=target, temperature=2.0, **SMALL).fit(x, y)
    assert model.score(x, y) > 0.8


def test_string_labels_pipelines_and_lists_of_teachers():
    x, y = make_classification(240, 5, n_classes=3, n_informative=3, random_state=2)
    labels = np.array(["cat", "dog", "emu"])[y]
    teachers = [make_pipeline(StandardScaler(), LogisticRegression()), RandomForestClassifier(20, random_state=0)]
    model = MimicMLPClassifier(teacher=teachers, **SMALL).fit(x, labels)
    assert set(model.predict(x)) <= {"cat", "dog", "emu"}
    assert len(model.teacher_) == 2 and model.score(x, labels) > 0.7


def test_teacher_columns_follow_class_labels_not_positions():
    x = np.random.default_rng(0).normal(size=(50, 2))
    y = (x[:, 0] > 0).astype(int)
    forest = RandomForestClassifier(10, random_state=0).fit(x, y)
    flipped = ProbaTeacher([forest], classes=np.array([0, 1]))
    np.testing.assert_array_equal(flipped.predict_proba(x), forest.predict_proba(x))
    wrong = RandomForestClassifier(10, random_state=0).fit(x, y + 5)
    with pytest.raises(ShapeError, match="knows classes"):
        ProbaTeacher([wrong], classes=np.array([0, 1]))


def test_module_teacher_and_class_count_mismatch():
    x, y = make_classification(200, 4, random_state=3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    model = MimicMLPClassifier(teacher=net, **SMALL).fit(x, y)
    assert model.teacher_ is net
    three_way = nn.Linear(4, 3)
    with pytest.raises(ShapeError, match="expected"):
        MimicMLPClassifier(teacher=three_way, **SMALL).fit(x, y)


def test_no_teacher_is_the_labels_alone_baseline():
    x, y = make_classification(200, 4, random_state=4)
    model = MimicMLPClassifier(teacher=None, synthetic="none", **SMALL).fit(x, y)
    assert model.teacher_ is None and model.n_synthetic_ == 0 and model.score(x, y) > 0.8
    with pytest.raises(ConfigError, match="need a teacher"):
        MimicMLPClassifier(teacher=None, **SMALL).fit(x, y)


def test_categorical_columns_are_one_hot_inside_the_network():
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 3, size=300)
    x = np.column_stack([rng.normal(size=300), colour])
    y = (colour == 2).astype(int)  # only the category matters
    model = MimicMLPClassifier(teacher=RandomForestClassifier(20, random_state=0), categorical_features=[1], **SMALL)
    model.fit(x, y)
    assert model.module_.encode(torch.tensor(x[:2], dtype=torch.float32)).shape == (2, 1 + 3)
    assert model.score(x, y) > 0.95
    unseen = model.module_.encode(torch.tensor([[0.0, 7.0]]))  # an unseen category codes as all zeros
    assert unseen[0, 1:].sum() == 0


def test_bad_parameters_and_teachers_are_named():
    x, y = make_classification(60, 3, n_informative=2, n_redundant=0, random_state=6)
    with pytest.raises(ConfigError, match="target"):
        MimicMLPClassifier(target="ranks").fit(x, y)
    with pytest.raises(ConfigError, match="unknown teacher"):
        MimicMLPClassifier(teacher="xgboost", **SMALL).fit(x, y)
    with pytest.raises(ConfigError, match="predict_proba"):
        fit_teacher(object(), x, y, 0)
    with pytest.raises(ConfigError, match="one class"):
        MimicMLPClassifier(**SMALL).fit(x, np.zeros(len(x)))
