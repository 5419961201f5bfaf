import torch
import torch.nn.functional as F
import pytest

from modelpress.distill import logit_regression_loss, mixed_distillation_loss, soft_target_loss


def test_kd_loss_is_zero_when_student_and_teacher_agree():
    z = torch.randn(16, 10)
    assert soft_target_loss(z, z, temperature=4.0).abs() < 1e-6
    assert soft_target_loss(z, z + 3.0, temperature=2.0).abs() < 1e-6  # a per-row shift changes nothing
    assert logit_regression_loss(z, z) == 0
    assert mixed_distillation_loss(z, z, torch.zeros(16).long(), alpha=1.0, temperature=3.0).abs() < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0, 8.0])
def test_kd_gradient_is_T_times_softmax_difference(temperature):
    zs = torch.randn(8, 5, requires_grad=True)
    zt = torch.randn(8, 5)
    soft_target_loss(zs, zt, temperature).backward()
    expected = temperature * (F.softmax(zs / temperature, 1) - F.softmax(zt / temperature, 1)) / 8
    torch.testing.assert_close(zs.grad, expected)


def test_T_squared_makes_the_gradient_scale_independent_of_temperature():
    # Hinton et al. Sec 2.1: for large T and zero-mean logits, q_T - p_T -> (z_s - z_t) / (C T), so the
    # gradient T (q_T - p_T) / B of the T^2-scaled loss tends to (z_s - z_t) / (C B), whatever T is.
    zs = torch.randn(4, 10)
    zs = zs - zs.mean(1, keepdim=True)
    zt = torch.randn(4, 10)
    zt = zt - zt.mean(1, keepdim=True)
    for T in (50.0, 200.0):
        student = zs.clone().requires_grad_()
        soft_target_loss(student, zt, T).backward()
        torch.testing.assert_close(student.grad, (zs - zt) / (10 * 4), rtol=0.05, atol=1e-4)


def test_mixed_loss_blends_soft_and_hard_terms():
    zs, zt, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    soft, hard = soft_target_loss(zs, zt, 3.0), F.cross_entropy(zs, y)
    torch.testing.assert_close(mixed_distillation_loss(zs, zt, y, alpha=0.7, temperature=3.0), 0.7 * soft + 0.3 * hard)
    torch.testing.assert_close(mixed_distillation_loss(zs, zt, y, alpha=0.0, temperature=3.0), hard)
    torch.testing.assert_close(mixed_distillation_loss(zs, zt, y, alpha=0.5, method="logits"),
                               0.5 * logit_regression_loss(zs, zt) + 0.5 * hard)


def test_logit_regression_golden_value():
    zs = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    zt = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # 0.5 * mean(4, 25) = 7.25
    assert logit_regression_loss(zs, zt).item() == pytest.approx(7.25)
