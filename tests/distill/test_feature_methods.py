"""FitNets hints (hints.py), attention transfer (attention.py) and FSP (fsp.py) on tiny data and models."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill import DistillConfig, DistillationObjective, build_teacher_store
from modelpress.distill.attention import (
    AttentionConfig,
    AttentionTransferObjective,
    attention_transfer,
)
from modelpress.distill.features import match_layers
from modelpress.distill.fsp import (
    FSPConfig,
    FSPObjective,
    default_fsp_pairs,
    fsp_distill,
)
from modelpress.distill.hints import (
    HintConfig,
    HintRegressor,
    LinearAlphaAnneal,
    annealed_alpha,
    fit_hints,
    fitnets,
)
from modelpress.distill.teachers import ModuleTeacher
from modelpress.models import build_model
from modelpress.train import TrainConfig, load_checkpoint, train

SHAPE, CLASSES = (1, 12, 12), 4


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class blobs: a fixed random pattern per class plus unit noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLASSES, *SHAPE, generator=torch.Generator().manual_seed(1234)) * 1.5
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return centers[y] + torch.randn(n, *SHAPE, generator=g), y


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = _blobs(128, 0), _blobs(64, 1), _blobs(64, 2)
    return DataSplits("blobs", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=CLASSES)


def _student(seed: int = 0) -> nn.Sequential:
    """Layers: "1" (4, 12, 12), "2" (4, 6, 6), "4" (8, 6, 6), "5" (8, 3, 3), "7" logits."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 9, CLASSES),
    )


def _teacher() -> nn.Module:
    """cnn:4-8: features.0 (4, 12, 12), .1 pool (4, 6, 6), .2 (8, 6, 6), .3 pool (8, 3, 3)."""
    torch.manual_seed(123)
    return build_model("cnn:4-8", SHAPE, CLASSES)


def _state(model: nn.Module) -> dict:
    return copy.deepcopy(model.state_dict())


def _same(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


STAGE = TrainConfig(epochs=3, batch_size=32, lr=0.05, weight_decay=1e-3, seed=1)


# --- FitNets ----------------------------------------------------------------------------------------


def test_hint_regressor_maps_to_the_hint_shape():
    conv = HintRegressor((4, 12, 12), (8, 6, 6))
    assert conv.layer.kernel_size == (7, 7) and conv(torch.randn(2, 4, 12, 12)).shape == (2, 8, 6, 6)
    same = HintRegressor((4, 6, 6), (8, 6, 6))
    assert same.layer.kernel_size == (1, 1) and same(torch.randn(2, 4, 6, 6)).shape == (2, 8, 6, 6)
    assert isinstance(HintRegressor((16,), (32,)).layer, nn.Linear)
    flat = HintRegressor((4, 3, 3), (10,), relu=True)
    out = flat(torch.randn(5, 4, 3, 3))
    assert out.shape == (5, 10) and (out >= 0).all()
    with pytest.raises(ShapeError, match="smaller than the hint"):
        HintRegressor((4, 6, 6), (8, 12, 12))
    with pytest.raises(ShapeError, match="expects features"):
        conv(torch.randn(2, 4, 10, 10))


@pytest.mark.parametrize("kwargs,field", [
    ({"student_layer": ""}, "student_layer"),
    ({"stage1": TrainConfig(patience=2)}, "stage1.patience"),
    ({"kd": TrainConfig()}, "kd"),
])
def test_hint_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        HintConfig(**({"student_layer": "1", "teacher_layer": "features.2"} | kwargs))


def test_annealed_alpha_is_linear_from_start_to_zero():
    assert [annealed_alpha(e, 5, 0.8) for e in range(5)] == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.0])
    assert annealed_alpha(0, 1, 0.7) == 0.7
    objective = DistillationObjective(ModuleTeacher(_teacher()), DistillConfig(alpha=0.9))
    LinearAlphaAnneal(objective, 0.9, 4).on_epoch_start(3, None)
    assert objective.alpha == 0.0
    # alpha 0 is plain cross-entropy on the labels
    student, x, y = _student(), torch.randn(6, *SHAPE), torch.randint(0, CLASSES, (6,))
    torch.testing.assert_close(objective(student, x, y, None), F.cross_entropy(student(x), y))


def test_fit_hints_lowers_the_hint_loss_and_trains_only_up_to_the_guided_layer(splits):
    student, teacher = _student(), _teacher()
    before, teacher_before = _state(student), _state(teacher)
    config = HintConfig("1", "features.2", stage1=STAGE)
    result, objective = fit_hints(student, teacher, splits, config, progress=False)
    after = _state(student)
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]
    assert result.best_epoch is None  # no validation in the hint stage: nothing "restored"
    assert objective.regressor.layer.kernel_size == (7, 7)  # 12x12 guided -> 6x6 hint
    assert not _same(before, after, ["0.weight"])  # up to the guided layer: trained
    assert _same(before, after, ["3.weight", "3.bias", "7.weight", "7.bias"])  # after it: untouched by decay/momentum
    assert all(p.requires_grad for p in student.parameters())  # freezing undone
    assert _same(teacher_before, _state(teacher))


def test_fitnets_runs_both_stages_and_leaves_the_teacher_unchanged(splits):
    student, teacher = _student(), _teacher()
    teacher_before = _state(teacher)
    kd = DistillConfig(alpha=0.5, temperature=2.0, train=TrainConfig(epochs=2, batch_size=32, lr=0.05))
    out = fitnets(student, teacher, splits, HintConfig("1", "features.2", stage1=STAGE, kd=kd), progress=False)
    assert out.student is student and not student.training
    assert out.hint_result.epochs_run == 3 and out.distill_result.epochs_run == 2
    assert "val_accuracy" in out.distill_result.history[-1]
    assert _same(teacher_before, _state(teacher))


class _CrashAt:
    """Raises at the n-th on_epoch_end call, counted over all stages (after that epoch's checkpoint)."""

    def __init__(self, n):
        self.n, self.calls = n, 0

    def on_epoch_end(self, epoch, model, metrics):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt


def test_fitnets_resumed_in_stage_two_gives_the_same_weights(splits, tmp_path):
    kd = DistillConfig(alpha=0.5, temperature=2.0, train=TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=2))
    config = HintConfig("1", "features.2", stage1=TrainConfig(epochs=2, batch_size=32, lr=0.05), kd=kd)
    full = fitnets(_student(), _teacher(), splits, config, progress=False).student

    ckpt = tmp_path / "fit.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fitnets(_student(), _teacher(), splits, config, checkpoint_path=ckpt, progress=False, callbacks=[_CrashAt(3)])
    assert load_checkpoint(f"{ckpt}.stage1")["epoch"] == 2 and load_checkpoint(f"{ckpt}.stage2")["epoch"] == 1
    resumed_run = fitnets(_student(seed=99), _teacher(), splits, config, checkpoint_path=ckpt, resume=True, progress=False)
    resumed = resumed_run.student
    assert resumed_run.distill_result.resumed_from_epoch == 1
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_feature_methods_refuse_mismatched_classes_and_non_module_teachers(splits):
    config = HintConfig("1", "features.2", stage1=STAGE)
    with pytest.raises(ShapeError, match="class-count mismatch"):
        fitnets(_student(), build_model("cnn:4-8", SHAPE, CLASSES + 1), splits, config, progress=False)
    store = build_teacher_store(torch.randn(len(splits.y_train), CLASSES))
    with pytest.raises(ConfigError, match="nn.Module"):
        attention_transfer(_student(), store, splits, AttentionConfig(), progress=False)
    with pytest.raises(ConfigError, match="'nope'"):
        fitnets(_student(), _teacher(), splits, HintConfig("nope", "features.2", stage1=STAGE), progress=False)


# --- attention transfer -----------------------------------------------------------------------------


def test_attention_transfer_lowers_the_attention_loss_with_automatic_pairs(splits):
    student, teacher = _student(), _teacher()
    teacher_before = _state(teacher)
    x = splits.x_train[:64]
    pairs = match_layers(student, teacher, x)
    assert pairs == [("1", "features.0"), ("4", "features.2"), ("5", "features.3")]
    probe = AttentionTransferObjective(teacher, AttentionConfig(pairs=tuple(pairs)))
    with torch.no_grad():
        start = probe.transfer_losses(student, x)[0]
    # restore_best off: the assertion is about what the AT objective did, not which epoch validated best
    train_config = TrainConfig(epochs=3, batch_size=32, lr=0.01, restore_best=False)
    config = AttentionConfig(beta=1000.0, kd=DistillConfig(alpha=0.0, train=train_config))
    out = attention_transfer(student, teacher, splits, config, progress=False)
    with torch.no_grad():
        end = probe.transfer_losses(student, x)[0]
    assert out.pairs == tuple(pairs)
    assert end < 0.5 * start
    assert _same(teacher_before, _state(teacher))


def test_attention_objective_is_ce_plus_half_beta_times_at_and_kd_when_alpha_is_positive():
    student, teacher = _student(), _teacher()
    x, y = torch.randn(8, *SHAPE), torch.randint(0, CLASSES, (8,))
    pairs = (("4", "features.2"),)
    plain = AttentionTransferObjective(teacher, AttentionConfig(pairs=pairs, beta=0.0))
    torch.testing.assert_close(plain(student, x, y, None), F.cross_entropy(student(x), y))
    with_at = AttentionTransferObjective(teacher, AttentionConfig(pairs=pairs, beta=10.0))
    at = with_at.transfer_losses(student, x)[0]
    loss = with_at(student, x, y, None)
    torch.testing.assert_close(loss, F.cross_entropy(student(x), y) + 5.0 * at)
    loss.backward()
    assert student[3].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    with_kd = AttentionTransferObjective(teacher, AttentionConfig(pairs=pairs, beta=0.0, kd=DistillConfig(alpha=1.0)))
    assert not torch.allclose(with_kd(student, x, y, None), plain(student, x, y, None))


@pytest.mark.parametrize("kwargs,field", [
    ({"pairs": (("1",),)}, "pairs"),
    ({"pairs": (("1", ""),)}, "pairs"),
    ({"beta": -1.0}, "beta"),
    ({"p": 0.0}, "p must"),
])
def test_attention_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        AttentionConfig(**kwargs)


def test_attention_transfer_refuses_layers_without_spatial_maps(splits):
    config = AttentionConfig(pairs=(("6", "features.2"),), kd=DistillConfig(alpha=0.0, train=TrainConfig(epochs=1)))
    with pytest.raises(ShapeError, match="4-D"):
        attention_transfer(_student(), _teacher(), splits, config, progress=False)


# --- FSP --------------------------------------------------------------------------------------------


FSP_PAIRS = {"student_pairs": (("2", "4"),), "teacher_pairs": (("features.1", "features.2"),)}  # both 4x8 matrices
# the FSP loss is quartic in the weights: plain SGD at lr 0.05 blows up and kills the student (its loss then
# sits at ||G_t||^2, about 2/3 of the start here), so the stage clips gradients
FSP_STAGE = TrainConfig(epochs=3, batch_size=32, lr=0.05, grad_clip=1.0, seed=1)


def test_fsp_stage_one_lowers_the_fsp_loss(splits):
    student, teacher = _student(), _teacher()
    objective = FSPObjective(teacher, FSPConfig(**FSP_PAIRS))
    x = splits.x_train[:64]
    with torch.no_grad():
        start = objective(student, x)
    train(student, splits.loader("train", 32, shuffle=True), FSP_STAGE, objective=objective, progress=False)
    with torch.no_grad():
        end = objective(student, x)
    assert end < 0.3 * start  # a collapsed student (all-zero features) would stay near 0.67 * start


def test_fsp_distill_runs_both_stages_and_keeps_the_teacher(splits):
    student, teacher = _student(), _teacher()
    teacher_before = _state(teacher)
    config = FSPConfig(**FSP_PAIRS, stage1=FSP_STAGE, stage2=TrainConfig(epochs=2, batch_size=32, lr=0.05))
    out = fsp_distill(student, teacher, splits, config, progress=False)
    assert out.fsp_result.history[0]["train_loss"] > out.fsp_result.history[-1]["train_loss"]
    assert out.distill_result.epochs_run == 2 and "val_accuracy" in out.distill_result.history[0]
    assert _same(teacher_before, _state(teacher))


def test_fsp_refuses_channel_mismatch_naming_the_layers(splits):
    config = FSPConfig(student_pairs=(("1", "2"),), teacher_pairs=(("features.1", "features.2"),), stage1=STAGE)
    with pytest.raises(ShapeError, match=r"'1', '2'.*'features\.1', 'features\.2'"):
        fsp_distill(_student(), _teacher(), splits, config, progress=False)


@pytest.mark.parametrize("kwargs,field", [
    ({"student_pairs": (("2", "4"), ("1", "1"))}, "same length"),
    ({"weights": (1.0, 2.0)}, "weights"),
    ({"weights": (-1.0,)}, "weights"),
    ({"stage1": TrainConfig(patience=1)}, "stage1.patience"),
])
def test_fsp_config_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        FSPConfig(**(FSP_PAIRS | kwargs))


def test_default_fsp_pairs_take_the_first_and_last_layer_of_each_stage():
    teacher = build_model("vgg_mini:4", (1, 28, 28), 10)
    assert default_fsp_pairs(teacher, torch.randn(2, 1, 28, 28)) == [
        ("features.0", "features.1"), ("features.2", "features.4"), ("features.5", "features.7"), ("features.8", "features.10"),
    ]
