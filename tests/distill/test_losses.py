import math

import pytest
import torch
import torch.nn.functional as F

from modelpress.distill import (
    logit_regression_loss,
    mixed_distillation_loss,
    soft_target_loss,
)


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
    torch.manual_seed(2)  # the 1/T^2 remainder at T = 50 exceeds the tolerance for about half of all draws
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


def test_registry_lists_the_classics_first_and_refuses_unknown_names_listing_them():
    from modelpress.core.errors import ConfigError
    from modelpress.distill.losses import (
        builtin_loss_modules,
        get_logit_loss,
        logit_loss_names,
    )

    names = logit_loss_names()
    assert names[:2] == ("hinton", "logits") and len(set(names)) == len(names)
    assert all(m.rsplit(".", 1)[1].startswith("loss_") for m in builtin_loss_modules())
    with pytest.raises(ConfigError, match="^method must be one of hinton, logits.*got 'nope'"):
        get_logit_loss("nope")
    with pytest.raises(ConfigError, match="^method must be one of hinton, logits"):
        mixed_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2).long(), alpha=0.5, method="nope")


def test_registered_losses_take_one_signature_and_match_the_functions():
    from modelpress.distill.losses import ModelIO, SoftTargetConfig, make_logit_loss

    torch.manual_seed(0)
    zs, zt, y = torch.randn(5, 4), torch.randn(5, 4), torch.randint(0, 4, (5,))
    hinton = make_logit_loss("hinton", temperature=3.0)
    assert hinton.config == SoftTargetConfig(temperature=3.0)
    # bit-identical to the pure function, whether the io is a ModelIO, a dict or a bare tensor
    assert torch.equal(hinton(ModelIO(logits=zs), ModelIO(logits=zt), y), soft_target_loss(zs, zt, 3.0))
    assert torch.equal(hinton({"logits": zs}, zt, None), soft_target_loss(zs, zt, 3.0))
    # logit regression declares no temperature, so the shared value is ignored
    assert torch.equal(make_logit_loss("logits", temperature=3.0)(zs, zt, y), logit_regression_loss(zs, zt))


def test_soft_target_golden_value():
    # T = 1: p = (1/2, 1/2), q = softmax(0, ln 3) = (1/4, 3/4); KL(p || q) = 1/2 ln 2 + 1/2 ln(2/3)
    zs = torch.tensor([[0.0, math.log(3.0)]])
    zt = torch.zeros(1, 2)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert soft_target_loss(zs, zt, 1.0).item() == pytest.approx(expected, abs=1e-7)


def test_model_io_names_its_contents_when_a_key_is_missing():
    from modelpress.core.errors import ShapeError
    from modelpress.distill.losses import ModelIO, io_logits

    io = ModelIO(logits=torch.zeros(1, 2), features={"layer1": torch.ones(1, 3)})
    assert io.keys() == ["logits", "layer1"] and "layer1" in io and torch.equal(io["layer1"], torch.ones(1, 3))
    with pytest.raises(ShapeError, match="no 'layer9'; it has: logits, layer1"):
        io["layer9"]
    with pytest.raises(ShapeError, match="needs the model output's 'logits'"):
        io_logits(ModelIO(features={"layer1": torch.ones(1)}))


def test_distill_config_method_accepts_names_and_the_old_enum():
    from modelpress.core.options import from_dict, to_dict
    from modelpress.distill import DistillConfig, DistillMethod

    config = DistillConfig(method=DistillMethod.LOGITS)
    assert config.method == "logits" and config.method.value == "logits" and config.method == DistillMethod.LOGITS
    assert type(to_dict(config)["method"]) is not DistillMethod
    assert from_dict(DistillConfig, to_dict(config)) == config


def test_feature_losses_take_the_same_signature_and_match_the_functions():
    from modelpress.distill.feature_losses import (
        FEATURE_LOSSES,
        AttentionLossConfig,
        AttentionTransferLoss,
        FSPLoss,
        FSPLossConfig,
        HintLoss,
        HintLossConfig,
        attention_transfer_loss,
        fsp_loss,
        fsp_matrix,
        hint_loss,
    )
    from modelpress.distill.losses import ModelIO

    torch.manual_seed(0)
    s = {"a": torch.randn(2, 3, 4, 4), "b": torch.randn(2, 5, 4, 4)}
    t = {"x": torch.randn(2, 3, 8, 8), "y": torch.randn(2, 5, 4, 4)}
    s_io, t_io = ModelIO(logits=torch.zeros(2, 3), features=s), t  # an io may be a ModelIO or a plain dict
    hint = HintLoss(HintLossConfig(student="b", teacher="y"))(s_io, t_io, None)
    assert torch.equal(hint, hint_loss(s["b"], t["y"]))
    at = AttentionTransferLoss(AttentionLossConfig(student_layers=["a", "b"], teacher_layers=["x", "y"], beta=10.0))
    expected = 5.0 * (attention_transfer_loss(s["a"], t["x"]) + attention_transfer_loss(s["b"], t["y"]))
    torch.testing.assert_close(at(s_io, t_io, None), expected)
    fsp = FSPLoss(FSPLossConfig(student_pairs=("a:b",), teacher_pairs=("x:y",)))
    torch.testing.assert_close(fsp(s_io, t_io, None), fsp_loss([fsp_matrix(s["a"], s["b"])], [fsp_matrix(t["x"], t["y"])]))
    assert FEATURE_LOSSES.get("fsp") == (FSPLossConfig, FSPLoss)


def test_feature_loss_configs_refuse_bad_layers_naming_the_field():
    from modelpress.core.errors import ConfigError
    from modelpress.distill.feature_losses import (
        AttentionLossConfig,
        FSPLossConfig,
        HintLossConfig,
    )

    with pytest.raises(ConfigError, match="same, non-zero number"):
        AttentionLossConfig(student_layers=("a",), teacher_layers=())
    with pytest.raises(ConfigError, match="teacher_pairs entries must be 'first_layer:second_layer'"):
        FSPLossConfig(student_pairs=("a:b",), teacher_pairs=("xy",))
    with pytest.raises(ConfigError, match="^student must be"):
        HintLossConfig(teacher="y")
