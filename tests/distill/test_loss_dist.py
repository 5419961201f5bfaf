"""DIST (Huang et al. 2022) as a registered logit-level loss: golden values, invariants, and use by name."""

import math

import numpy as np
import pytest
import torch

from modelpress.core.errors import ConfigError
from modelpress.distill import DistillationObjective, DistillConfig
from modelpress.distill.loss_dist import DISTConfig, DISTLoss, dist_loss
from modelpress.distill.losses import (
    get_logit_loss,
    logit_loss_names,
    make_logit_loss,
    mixed_distillation_loss,
)
from modelpress.distill.teachers import ModuleTeacher


def test_golden_value_by_hand():
    # Y_s = [[.75, .25], [.25, .75]], Y_t = [[.25, .75], [.25, .75]] at tau = 1.
    # rows: rho = -1 then +1, so L_inter = 1 - 0 = 1; columns: the teacher's are constant, rho = 0, L_intra = 1.
    zs = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]])
    zt = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    assert dist_loss(zs, zt).item() == pytest.approx(2.0, abs=1e-6)
    assert dist_loss(zs, zt, inter_weight=1.0, intra_weight=2.0).item() == pytest.approx(3.0, abs=1e-6)


def test_golden_value_against_numpy_corrcoef():
    zs = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0]])
    zt = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, -1.0, 2.0]])
    tau = 2.0

    def softmax(z):
        e = np.exp(z / tau)
        return e / e.sum(1, keepdims=True)

    ys, yt = softmax(zs), softmax(zt)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(3)])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(3)])
    expected = tau**2 * (inter + 2.0 * intra)  # 2.1414785654... in float64
    got = DISTLoss(DISTConfig(temperature=tau, intra_weight=2.0))(
        {"logits": torch.tensor(zs, dtype=torch.float32)}, {"logits": torch.tensor(zt, dtype=torch.float32)}, None)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(2.1414785654, abs=1e-9)


def test_zero_when_equal_and_invariant_to_teacher_confidence_scale():
    torch.manual_seed(0)
    zs, zt = torch.randn(16, 5), torch.randn(16, 5)
    assert dist_loss(zs, zs, 2.0).abs().item() < 1e-5
    # a per-row shift of the logits leaves the softmax, hence the loss, unchanged
    torch.testing.assert_close(dist_loss(zs, zt + 3.0, 2.0), dist_loss(zs, zt, 2.0))
    assert dist_loss(zs, zt, 2.0).item() > 0


def test_gradient_reaches_the_student():
    zs = torch.randn(8, 4, requires_grad=True)
    dist_loss(zs, torch.randn(8, 4), 1.0).backward()
    assert zs.grad is not None and zs.grad.abs().sum() > 0


def test_registered_after_the_classics_and_usable_by_name():
    names = logit_loss_names()
    assert names[:2] == ("hinton", "logits") and "dist" in names
    assert get_logit_loss("dist").config is DISTConfig
    config = DistillConfig(method="dist", temperature=3.0, alpha=0.5)
    assert config.method == "dist"
    loss = make_logit_loss("dist", temperature=3.0)
    assert isinstance(loss, DISTLoss) and loss.config.temperature == 3.0


def test_objective_with_dist_is_the_blend_of_dist_and_cross_entropy():
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    objective = DistillationObjective(ModuleTeacher(teacher), DistillConfig(method="dist", temperature=2.0, alpha=0.7))
    with torch.no_grad():
        expected = 0.7 * dist_loss(student(x), teacher(x), 2.0) + 0.3 * torch.nn.functional.cross_entropy(student(x), y)
    torch.testing.assert_close(objective(student, x, y, None).detach(), expected)
    torch.testing.assert_close(
        mixed_distillation_loss(student(x), teacher(x), y, alpha=0.7, temperature=2.0, method="dist").detach(), expected)


def test_bad_options_are_refused_with_the_field_named():
    with pytest.raises(ConfigError, match="intra_weight"):
        DISTConfig(intra_weight=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        make_logit_loss("dist", temperature=0.0)
