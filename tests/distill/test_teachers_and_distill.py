import pytest
import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.distill import (
    DistillConfig,
    EnsembleTeacher,
    StoredTeacher,
    TeacherStore,
    build_teacher_store,
    distill,
    precompute_teacher,
)
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.train import TrainConfig, train


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_ensemble_is_the_weighted_mean_of_member_probabilities():
    a, b = torch.randn(1, 5), torch.randn(1, 5)
    teacher = EnsembleTeacher([_Fixed(a), _Fixed(b)], weights=[3.0, 1.0])
    probs = F.softmax(teacher(torch.zeros(2, 1)), dim=1)
    expected = 0.75 * F.softmax(a, 1) + 0.25 * F.softmax(b, 1)
    torch.testing.assert_close(probs, expected.expand(2, -1))
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    torch.testing.assert_close(teacher.weights.sum(), torch.tensor(1.0))
    averaged = EnsembleTeacher([_Fixed(a), _Fixed(b)], [1, 1], combine="logits")(torch.zeros(1, 1))
    torch.testing.assert_close(averaged, (a + b) / 2)


@pytest.mark.parametrize("weights", [[1.0], [-1.0, 2.0], [0.0, 0.0]])
def test_bad_ensemble_weights_are_refused(weights):
    with pytest.raises(ConfigError):
        EnsembleTeacher([_Fixed(torch.zeros(1, 3)), _Fixed(torch.zeros(1, 3))], weights)


def test_ensemble_members_with_different_class_counts_are_refused():
    teacher = EnsembleTeacher([_Fixed(torch.zeros(1, 3)), _Fixed(torch.zeros(1, 4))])
    with pytest.raises(ShapeError, match="disagree on the number of classes"):
        teacher(torch.zeros(2, 1))


def test_untruncated_store_is_exact():
    z = torch.randn(40, 7) * 3
    store = build_teacher_store(z)
    torch.testing.assert_close(store.dense_logits(torch.arange(40)), z)
    torch.testing.assert_close(store.dense_logits(torch.tensor([5, 5, 0])), z[[5, 5, 0]])


@pytest.mark.parametrize("mass,cap", [(0.99, None), (0.9, 3), (0.5, 1)])
def test_truncated_store_keeps_the_mass_asked_for(mass, cap):
    z = torch.randn(500, 20) * 4
    store = build_teacher_store(z, mass=mass, max_classes=cap)
    counts = store.offsets[1:] - store.offsets[:-1]
    kept = store.kept_mass()
    capped = counts == (cap or 20)
    assert (kept[~capped] >= mass - 1e-5).all()  # every uncapped row reaches the mass
    # and uses the fewest classes: dropping its smallest kept class would fall below the mass
    probs = F.softmax(z, 1).sort(1, descending=True).values
    fewer = probs.cumsum(1).gather(1, (counts - 2).clamp(min=0)[:, None]).squeeze(1)
    assert ((fewer < mass) | (counts == 1)).all()
    if cap:
        assert counts.max() <= cap
    dense = F.softmax(store.dense_logits(torch.arange(500)), 1)
    torch.testing.assert_close(dense.sum(1), torch.ones(500))
    assert (dense.argmax(1) == z.argmax(1)).all()
    assert store.nbytes() < z.numel() * 4 or cap is None


def test_store_round_trips_through_a_file_and_rejects_damage(tmp_path):
    store = build_teacher_store(torch.randn(30, 6), mass=0.95, half=True)
    store.save(tmp_path / "s.st")
    again = TeacherStore.load(tmp_path / "s.st")
    torch.testing.assert_close(again.dense_logits(torch.arange(30)), store.dense_logits(torch.arange(30)))
    (tmp_path / "bad.st").write_bytes((tmp_path / "s.st").read_bytes()[:50])
    with pytest.raises(ModelFileError):
        TeacherStore.load(tmp_path / "bad.st")


def test_stored_teacher_needs_indices_from_the_same_split():
    teacher = StoredTeacher(build_teacher_store(torch.randn(10, 3)))
    with pytest.raises(ConfigError, match="needs example indices"):
        teacher(torch.zeros(2, 1), None)
    with pytest.raises(ShapeError, match="outside the stored teacher outputs"):
        teacher(torch.zeros(2, 1), torch.tensor([3, 12]))


def _trained_teacher(splits):
    torch.manual_seed(0)
    teacher = build_model("mlp:64", splits.input_shape, splits.num_classes)
    train(teacher, splits, TrainConfig(epochs=6, batch_size=32), progress=False)
    return teacher


@pytest.mark.parametrize("method", ["hinton", "logits"])
def test_distilled_student_learns_from_module_and_stored_teachers(tiny_splits, method):
    teacher = _trained_teacher(tiny_splits)
    config = DistillConfig(method=method, temperature=3.0, alpha=1.0, train=TrainConfig(epochs=4, batch_size=32, lr=0.02))
    for source in (teacher, precompute_teacher(teacher, tiny_splits.x_train)):
        torch.manual_seed(1)
        student = build_model("mlp:16", tiny_splits.input_shape, tiny_splits.num_classes)
        distill(student, source, tiny_splits, config, progress=False)
        acc = evaluate_accuracy(student, tiny_splits.x_test, tiny_splits.y_test).accuracy
        assert acc > 0.85, (method, type(source).__name__, acc)  # alpha=1: learnt from the teacher alone


def test_module_and_stored_teacher_give_identical_students(tiny_splits):
    teacher = _trained_teacher(tiny_splits)
    config = DistillConfig(train=TrainConfig(epochs=2, batch_size=32))
    students = []
    for source in (teacher, precompute_teacher(teacher, tiny_splits.x_train)):
        torch.manual_seed(1)
        student = build_model("mlp:16", tiny_splits.input_shape, tiny_splits.num_classes)
        students.append(distill(student, source, tiny_splits, config, progress=False).student)
    for a, b in zip(students[0].parameters(), students[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_class_count_mismatch_between_teacher_and_student_is_refused(tiny_splits):
    teacher = build_model("mlp:8", tiny_splits.input_shape, tiny_splits.num_classes)
    student = build_model("mlp:8", tiny_splits.input_shape, tiny_splits.num_classes + 3)
    with pytest.raises(ShapeError, match="teacher predicts 4 classes but the student predicts 7"):
        distill(student, teacher, tiny_splits, DistillConfig(train=TrainConfig(epochs=1)), progress=False)


def test_distill_config_validation():
    with pytest.raises(ConfigError, match="alpha must be in"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="method must be one of hinton, logits"):
        DistillConfig(method="magic")
    with pytest.raises(ConfigError, match="temperature must be positive"):
        DistillConfig(temperature=0)
