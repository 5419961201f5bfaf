"""Depthwise-separable conversion: shapes kept, parameters and FLOPs drop by the MobileNets count, a
per-channel separable kernel is reproduced exactly once BatchNorm is calibrated, the teacher is left
alone, the student saves/loads and can be distilled from the original."""

import math

import pytest
import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.distill import DistillConfig, distill
from modelpress.factorize import (
    rank1_split,
    separable_conv,
    separable_student,
    to_depthwise_separable_,
)
from modelpress.factorize.separable import separable_weight
from modelpress.measure import count_flops, count_params
from modelpress.models import build_model, load_model, save_model
from modelpress.train import TrainConfig


def test_conversion_keeps_shapes_and_saves_the_expected_counts():
    torch.manual_seed(0)
    model = build_model("cnn:8-16-32", (3, 16, 16), 5)
    x = torch.randn(4, 3, 16, 16)
    out_before = model.eval()(x).shape
    params, flops = count_params(model), count_flops(model, (3, 16, 16))
    report = to_depthwise_separable_(model, example_input=x)
    assert report.layers == ["features.2.0", "features.4.0"]  # the first conv stays whole, as in MobileNets
    assert model(x).shape == out_before
    # Conv(cin, cout, 3, no bias) -> depthwise 9 cin + BN 2 cin + pointwise cin cout + bias cout
    saved = sum(cin * cout * 9 - (9 * cin + 2 * cin + cin * cout + cout) for cin, cout in ((8, 16), (16, 32)))
    assert report.params_after == params - saved == count_params(model)
    saved_flops = sum(2 * hw * (cin * cout * 9 - (9 * cin + cin * cout)) for cin, cout, hw in ((8, 16, 64), (16, 32, 16)))
    assert report.flops_before == flops and report.flops_after == flops - saved_flops
    assert [s["kind"] for s in model.modelpress_spec.surgery] == ["separable", "separable"]


def test_a_per_channel_separable_kernel_is_reproduced_exactly_after_calibration():
    torch.manual_seed(0)
    depthwise, pointwise = torch.randn(4, 1, 3, 3), torch.randn(6, 4, 1, 1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    with torch.no_grad():
        conv.weight.copy_(pointwise * depthwise.transpose(0, 1))  # K[o, i] = P[o, i] d_i
    d, p = rank1_split(conv.weight)
    assert torch.allclose(p * d.transpose(0, 1), conv.weight.double(), atol=1e-6)
    x = torch.randn(16, 4, 9, 9)
    calibrated = separable_conv(conv, x).eval()
    assert torch.allclose(calibrated(x), conv(x), atol=1e-4)  # the ReLU passes everything on these data
    plain = separable_conv(conv).eval()
    assert torch.allclose(separable_weight(plain), conv.weight.double(), atol=1e-6)
    assert not torch.allclose(plain(x), conv(x), atol=1e-2)  # uncalibrated, the ReLU clips


def test_the_teacher_is_untouched_and_the_student_round_trips(tmp_path):
    torch.manual_seed(0)
    teacher = build_model("vgg_mini:4", (1, 16, 16), 3)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randn(2, 1, 16, 16)
    student = separable_student(teacher, example_input=x)
    assert teacher.modelpress_spec.surgery == () and all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
    assert len(student.separable_report.rows) == 7 and count_params(student) < count_params(teacher)
    loaded = load_model(save_model(student, tmp_path / "sep.mpk"))
    assert torch.equal(loaded(x), student.eval()(x))


def test_refusals_name_the_layer():
    model = build_model("mobilenetv2_tiny", (1, 16, 16), 3)
    with pytest.raises(ConfigError, match="no standard convolution"):
        to_depthwise_separable_(model)  # its only full 3x3 conv is the first, kept whole
    with pytest.raises(ConfigError, match="'features.1.block.0.0'.*cannot become depthwise-separable"):
        to_depthwise_separable_(model, layers=["features.1.block.0.0"])  # a depthwise conv
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        to_depthwise_separable_(model, layers=["nope"])


def test_distilling_the_separable_student_from_its_teacher(tiny_splits):
    torch.manual_seed(0)
    teacher = build_model("cnn:8-16", (1, 8, 8), 4)
    student = separable_student(teacher, example_input=tiny_splits.x_train[:64])
    before = student.features[2][0][3].weight.detach().clone()
    config = DistillConfig(temperature=2.0, train=TrainConfig(epochs=2, batch_size=64, lr=0.02, restore_best=False))
    history = distill(student, teacher, tiny_splits, config, progress=False).train.history
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)
    assert not torch.equal(before, student.features[2][0][3].weight)
    assert isinstance(teacher.features[2][0], nn.Conv2d)
