"""Feature taps (features.py) and feature-distillation losses (feature_losses.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.distill.feature_losses import (
    attention_map,
    attention_transfer_loss,
    fsp_loss,
    fsp_matrix,
    hint_loss,
)
from modelpress.distill.features import (
    FeatureTap,
    feature_shapes,
    forward_until,
    layer_names,
    match_layers,
    sequential_outputs,
)
from modelpress.models import build_model


def _cnn(classes: int = 10, side: int = 28) -> nn.Sequential:
    """A plain Sequential student: stages at side, side/2, side/4."""
    torch.manual_seed(0)
    q = side // 4
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * q * q, classes),
    )


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


# --- FeatureTap -----------------------------------------------------------------------------------


def test_tap_outputs_equal_the_manual_computation_and_the_model_output_is_unchanged():
    model, x = _cnn(), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected_conv = model[0](x)
        expected_stage2 = model[5](model[4](model[3](model[2](F.relu(expected_conv)))))
        plain = model(x)
        with FeatureTap(model, ["0", "5"]) as tap:
            out = model(x)
    torch.testing.assert_close(tap.outputs["0"], expected_conv)
    torch.testing.assert_close(tap.outputs["5"], expected_stage2)
    torch.testing.assert_close(out, plain)
    tap.clear()
    assert tap.outputs == {}


def test_hooks_are_removed_after_the_context_even_on_error_and_with_attach_remove():
    model = _cnn()
    with pytest.raises(RuntimeError):
        with FeatureTap(model, ["1", "4"]):
            assert not _no_hooks(model)
            model(torch.randn(2, 3, 28, 28))  # wrong channel count: the forward raises
    assert _no_hooks(model)
    tap = FeatureTap(model, ["1"]).attach()
    tap.attach()  # idempotent: still one hook
    assert len(model[1]._forward_hooks) == 1
    model(torch.randn(1, 1, 28, 28))
    tap.remove()
    assert _no_hooks(model) and tap.outputs["1"].shape == (1, 4, 28, 28)


def test_unknown_layer_name_raises_config_error_naming_it_and_suggesting_close_ones():
    teacher = build_model("vgg_mini:4", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"'features\.44'.*features\.4"):
        FeatureTap(teacher, ["features.44"])
    with pytest.raises(ConfigError, match="'nope'"):
        forward_until(teacher, torch.randn(1, 1, 28, 28), "nope")
    assert _no_hooks(teacher)


def test_inplace_relu_after_the_tapped_conv_is_seen_only_without_clone():
    """A conv followed by ReLU(inplace=True): the conv's returned tensor is overwritten by the ReLU."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True)), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        expected = model[0](x)
        assert (expected < 0).any()
        with FeatureTap(model, ["0"]) as cloned:
            model(x)
        with FeatureTap(model, ["0"], clone=False) as shared:
            model(x)
    torch.testing.assert_close(cloned.outputs["0"], expected)  # clone=True keeps the pre-ReLU values
    torch.testing.assert_close(shared.outputs["0"], expected.clamp(min=0))  # the documented hazard


def test_tapped_features_carry_gradients_unless_detached():
    model, x = _cnn(), torch.randn(2, 1, 28, 28)
    with FeatureTap(model, ["1"]) as live, FeatureTap(model, ["1"], detach=True) as frozen:
        model(x)
    assert not frozen.outputs["1"].requires_grad
    live.outputs["1"].sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert model[3].weight.grad is None  # after the tapped layer: no gradient from the tap


def test_forward_until_stops_after_the_layer_and_leaves_later_batchnorm_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    x = torch.randn(4, 1, 8, 8)
    out = forward_until(model.train(), x, "1")
    torch.testing.assert_close(out, F.relu(model[0](x)))
    assert torch.equal(model[3].running_mean, torch.zeros(2)) and int(model[3].num_batches_tracked) == 0
    assert _no_hooks(model)


def test_layer_names_and_feature_shapes():
    model = _cnn().train()
    assert layer_names(model) == [str(i) for i in range(8)]
    shapes = feature_shapes(model, torch.randn(2, 1, 28, 28))
    assert shapes == {"0": (4, 28, 28), "1": (4, 28, 28), "2": (4, 14, 14), "3": (8, 14, 14), "4": (8, 14, 14),
                      "5": (8, 7, 7), "6": (392,), "7": (10,)}
    assert model.training  # mode restored
    assert feature_shapes(model, torch.randn(1, 1, 28, 28), ["4"]) == {"4": (8, 14, 14)}


def test_match_layers_pairs_the_last_layer_of_each_shared_resolution():
    teacher = build_model("vgg_mini:4", (1, 28, 28), 10)
    x = torch.randn(2, 1, 28, 28)
    names = [n for n, _ in sequential_outputs(teacher, x)]
    assert names == [f"features.{i}" for i in range(11)]  # outermost Sequential children, not their insides
    pairs = match_layers(_cnn(), teacher, x)
    # 28x28: student ReLU "1" / teacher block "features.1"; 14x14: "4" / "features.4"; 7x7: pool "5" / "features.7"
    assert pairs == [("1", "features.1"), ("4", "features.4"), ("5", "features.7")]


def test_match_layers_without_a_shared_spatial_size_raises_shape_error():
    mlp = build_model("mlp:16", (1, 28, 28), 10)
    with pytest.raises(ShapeError, match="share no spatial size"):
        match_layers(mlp, build_model("vgg_mini:4", (1, 28, 28), 10), torch.randn(2, 1, 28, 28))


def test_sequential_outputs_falls_back_to_every_4d_output_without_sequentials():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv2(self.conv1(x)).mean((2, 3))

    assert sequential_outputs(Plain(), torch.randn(1, 1, 8, 8)) == [("conv1", (2, 8, 8)), ("conv2", (2, 4, 4))]


# --- losses -----------------------------------------------------------------------------------------


def test_attention_map_is_the_normalised_channel_sum_of_powers():
    a = torch.randn(3, 5, 4, 6)
    q = attention_map(a, p=2)
    assert q.shape == (3, 24)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(3))
    manual = a.pow(2).sum(1).flatten(1)
    torch.testing.assert_close(q, manual / manual.norm(dim=1, keepdim=True))
    q3 = attention_map(a, p=3)
    torch.testing.assert_close(q3, F.normalize(a.abs().pow(3).sum(1).flatten(1), dim=1))


def test_attention_transfer_loss_is_zero_for_identical_and_positive_differentiable_otherwise():
    t = torch.randn(2, 8, 6, 6)
    assert attention_transfer_loss(t.clone(), t) == 0
    s = torch.randn(2, 8, 6, 6, requires_grad=True)
    loss = attention_transfer_loss(s, t.detach())
    assert loss > 0
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    # golden: authors' code (at(x) - at(y)).pow(2).mean() with at = normalize(x.pow(2).mean(1).view(B, -1))
    at = lambda f: F.normalize(f.pow(2).mean(1).view(f.size(0), -1))
    torch.testing.assert_close(loss, (at(s) - at(t)).pow(2).mean())


def test_attention_transfer_loss_ignores_channel_count_and_scale():
    s = torch.randn(2, 4, 5, 5)
    t = 3.0 * s.repeat(1, 4, 1, 1)  # 16 channels, the same attention map
    assert attention_transfer_loss(s, t) < 1e-12
    assert attention_transfer_loss(s, torch.randn(2, 16, 5, 5)) > 0


def test_attention_transfer_pools_the_larger_map_and_refuses_unpoolable_sizes():
    s = torch.randn(2, 1, 8, 8)
    t = F.avg_pool2d(s.pow(2), 2).sqrt()  # (2, 1, 4, 4): its map is exactly the pooled student map
    assert attention_transfer_loss(s, t) < 1e-12
    assert attention_transfer_loss(t, s) < 1e-12
    with pytest.raises(ShapeError, match="cannot be pooled"):
        attention_transfer_loss(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 4, 8))
    with pytest.raises(ShapeError, match="4-D"):
        attention_transfer_loss(torch.randn(1, 8), torch.randn(1, 8))


def test_fsp_matrix_equals_an_explicit_reference():
    f1, f2 = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 4, 5)
    g = fsp_matrix(f1, f2)
    assert g.shape == (2, 3, 6)
    reference = torch.zeros(2, 3, 6)
    for b in range(2):
        for i in range(3):
            for j in range(6):
                reference[b, i, j] = (f1[b, i] * f2[b, j]).sum() / 20
    torch.testing.assert_close(g, reference)
    big = torch.randn(2, 6, 8, 10)
    torch.testing.assert_close(fsp_matrix(f1, big), fsp_matrix(f1, F.adaptive_avg_pool2d(big, (4, 5))))
    with pytest.raises(ShapeError, match="cannot be pooled"):
        fsp_matrix(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 4, 8))


def test_fsp_loss_matches_the_formula_and_names_mismatched_layers():
    gs = [torch.randn(4, 3, 5), torch.randn(4, 2, 2)]
    gt = [torch.randn(4, 3, 5), torch.randn(4, 2, 2)]
    assert fsp_loss(gt, [g.clone() for g in gt]) == 0
    expected = 0.5 * (gs[0] - gt[0]).pow(2).sum((1, 2)).mean() + 2.0 * (gs[1] - gt[1]).pow(2).sum((1, 2)).mean()
    torch.testing.assert_close(fsp_loss(gs, gt, [0.5, 2.0]), expected)
    normalised = (gs[0] - gt[0]).pow(2).sum((1, 2)).mean() / 15 + (gs[1] - gt[1]).pow(2).sum((1, 2)).mean() / 4
    torch.testing.assert_close(fsp_loss(gs, gt, normalize=True), normalised)
    with pytest.raises(ShapeError, match="layer_x"):
        fsp_loss([torch.randn(4, 3, 5)], [torch.randn(4, 3, 6)], names=["layer_x"])


def test_hint_loss_is_half_the_squared_error_summed_per_example():
    r, h = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(hint_loss(r, h), 0.5 * ((r - h) ** 2).sum() / 4)
    assert hint_loss(h.clone(), h) == 0
    with pytest.raises(ShapeError):
        hint_loss(torch.randn(4, 2, 3, 3), torch.randn(4, 2, 2, 2))
