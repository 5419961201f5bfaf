"""The omitted-class experiment (Hinton, Vinyals & Dean 2015, Sec. 3): remove a class, correct its bias."""

import pytest
import torch
from torch import nn

from modelpress.core.errors import ConfigError, DataError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill import DistillConfig, precompute_teacher
from modelpress.distill.omitted import (
    apply_class_bias_,
    final_linear,
    fit_class_bias,
    omitted_class_experiment,
    omitted_class_report,
    without_class,
)
from modelpress.models import build_model
from modelpress.train import TrainConfig, train


def blob_splits(num_classes=4, n_train=256, seed=0):
    centers = torch.randn(num_classes, 16, generator=torch.Generator().manual_seed(1234)) * 1.5

    def draw(n, s):
        g = torch.Generator().manual_seed(s)
        y = torch.randint(0, num_classes, (n,), generator=g)
        return centers[y] + torch.randn(n, 16, generator=g), y

    (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train, seed), draw(96, seed + 1), draw(128, seed + 2)
    return DataSplits("blobs", xtr, ytr, xva, yva, xte, yte, num_classes=num_classes)


def scorer(num_classes=5, shift=0.0, cls=2):
    """A model whose logits are its inputs, with ``shift`` added to class ``cls`` through its bias."""
    model = nn.Sequential(nn.Linear(num_classes, num_classes))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(num_classes))
        model[0].bias.zero_()
        model[0].bias[cls] = shift
    return model


def scored_data(n=400, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = torch.randn(n, num_classes, generator=g) + 3.0 * nn.functional.one_hot(y, num_classes)
    return x, y


def test_without_class_removes_only_that_class_from_train():
    splits = blob_splits()
    reduced = without_class(splits, 1)
    assert (reduced.y_train != 1).all() and len(reduced.y_train) == int((splits.y_train != 1).sum())
    torch.testing.assert_close(reduced.x_train, splits.x_train[splits.y_train != 1])
    assert reduced.x_val is splits.x_val and reduced.y_test is splits.y_test  # measured on, so kept
    assert reduced.num_classes == 4 and reduced.info["omitted_class"] == 1
    for x, y, idx in reduced.loader("train", 50, shuffle=True, seed=3):  # indices address the new split
        torch.testing.assert_close(x, reduced.x_train[idx])
        assert torch.equal(y, reduced.y_train[idx])


@pytest.mark.parametrize("cls", [-1, 4, 1.0, True])
def test_without_class_refuses_a_class_out_of_range(cls):
    with pytest.raises(ConfigError, match="cls must be a class id in \\[0, 4\\)"):
        without_class(blob_splits(), cls)


def test_without_class_refuses_to_leave_nothing():
    splits = blob_splits()
    only_zeros = DataSplits("z", splits.x_train[:5], torch.zeros(5, dtype=torch.long), splits.x_val, splits.y_val,
                            splits.x_test, splits.y_test, num_classes=4)
    with pytest.raises(DataError, match="no training data"):
        without_class(only_zeros, 0)


def test_fitted_offset_undoes_a_planted_bias_shift():
    x, y = scored_data()
    honest = omitted_class_report(scorer(), x, y, 2)
    shifted = scorer(shift=-4.0)
    broken = omitted_class_report(shifted, x, y, 2)
    assert broken["class_accuracy"] < 0.3 < 0.7 < honest["class_accuracy"]
    offset = fit_class_bias(shifted, 2, x, y)
    assert 2.5 <= offset <= 5.5
    apply_class_bias_(shifted, 2, offset)
    fixed = omitted_class_report(shifted, x, y, 2)
    assert fixed["accuracy"] >= honest["accuracy"]  # the fitted offset is at least as good as the true one
    assert fixed["class_accuracy"] > honest["class_accuracy"] - 0.1


def test_fit_matches_brute_force_and_breaks_ties_to_the_smallest_offset():
    x, y = scored_data(n=150, seed=4)
    grid = [4.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 6.0, 20.0]
    model = scorer(shift=-2.0)
    accuracies = {}
    for g in grid:  # re-run the model with each offset applied to its bias
        trial = apply_class_bias_(scorer(shift=-2.0), 2, g)
        accuracies[g] = omitted_class_report(trial, x, y, 2)["accuracy"]
    best = max(accuracies.values())
    assert fit_class_bias(model, 2, x, y, grid=grid) == min(g for g, a in accuracies.items() if a == best)
    plateau = [100.0, 50.0, 200.0]  # everything predicted as class 2: all tie
    assert fit_class_bias(model, 2, x, y, grid=plateau) == 50.0
    with pytest.raises(ConfigError, match="grid"):
        fit_class_bias(model, 2, x, y, grid=[])
    with pytest.raises(ConfigError, match="cls must be"):
        fit_class_bias(model, 5, x, y)


def test_apply_class_bias_changes_only_that_entry():
    torch.manual_seed(0)
    model = build_model("mlp:8-8", (6,), 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert apply_class_bias_(model, 3, 1.25) is model
    after = model.state_dict()
    for key in before:
        if key == "net.5.bias":
            assert after[key][3] == pytest.approx(float(before[key][3]) + 1.25)
            assert torch.equal(after[key][:3], before[key][:3])
        else:
            assert torch.equal(after[key], before[key]), key


def test_final_linear_finds_the_output_layer_or_explains_why_not():
    model = build_model("mlp:8-8", (6,), 4)
    assert final_linear(model) is model.net[5]
    assert final_linear(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 8)), num_classes=4) is not None
    with pytest.raises(ShapeError, match="no nn.Linear layer with 4 outputs"):
        final_linear(nn.Sequential(nn.Conv1d(1, 4, 1)), num_classes=4)
    with pytest.raises(ShapeError, match="no nn.Linear"):
        final_linear(nn.Sequential(nn.Flatten()))
    with pytest.raises(ShapeError, match="cannot correct the bias of a model whose last layer has no bias"):
        final_linear(nn.Sequential(nn.Linear(3, 4, bias=False)))


def test_report_counts_the_class_and_the_whole():
    model = scorer(num_classes=3, cls=0)
    x = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])
    report = omitted_class_report(model, x, y, 0)
    assert report == {"class": 0, "n_class": 2, "class_correct": 1, "class_accuracy": 0.5,
                      "errors": 2, "accuracy": 0.5, "n": 4}


@pytest.fixture(scope="module")
def teacher_and_data():
    splits = blob_splits()
    torch.manual_seed(0)
    teacher = build_model("mlp:32", splits.input_shape, 4)
    train(teacher, splits, TrainConfig(epochs=6, batch_size=32), progress=False)
    return teacher, splits


CONFIG = DistillConfig(temperature=4.0, alpha=1.0, train=TrainConfig(epochs=4, batch_size=32, lr=0.02))


def test_experiment_recovers_the_omitted_class_from_soft_targets(teacher_and_data):
    teacher, splits = teacher_and_data
    torch.manual_seed(1)
    student = build_model("mlp:16", splits.input_shape, 4)
    result = omitted_class_experiment(student, teacher, splits, 1, CONFIG, progress=False)
    before, after = result["before"], result["after"]
    assert result["class"] == 1 and before["n_class"] == after["n_class"] == int((splits.y_test == 1).sum())
    assert result["bias_offset"] >= 0
    # it never saw a 1 and does not predict one, yet the teacher's soft targets on other examples taught
    # it what a 1 looks like: raising one bias recovers the class
    assert before["class_accuracy"] < 0.5 < 0.8 < after["class_accuracy"]
    assert after["accuracy"] > before["accuracy"]


def test_a_stored_teacher_is_reindexed_to_the_reduced_split(teacher_and_data):
    teacher, splits = teacher_and_data
    results = []
    for source in (teacher, precompute_teacher(teacher, splits.x_train)):
        torch.manual_seed(1)
        student = build_model("mlp:16", splits.input_shape, 4)
        results.append(omitted_class_experiment(student, source, splits, 2, CONFIG, progress=False))
    assert results[0]["before"] == results[1]["before"]
    assert results[0]["bias_offset"] == pytest.approx(results[1]["bias_offset"])


def test_experiment_refuses_bad_arguments(teacher_and_data):
    teacher, splits = teacher_and_data
    student = build_model("mlp:16", splits.input_shape, 4)
    with pytest.raises(ConfigError, match="validation must be one of val, train"):
        omitted_class_experiment(student, teacher, splits, 1, CONFIG, validation="test")
    with pytest.raises(ConfigError, match="cls must be"):
        omitted_class_experiment(student, teacher, splits, 7, CONFIG)
