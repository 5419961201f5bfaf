"""Invariants of structured pruning: channels really go (parameters and FLOPs drop), removing channels
that carry nothing leaves outputs unchanged, every consumer is fixed (the model still runs, on every
zoo architecture), the change saves and loads, and what cannot be pruned safely is refused with a reason."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.measure import count_params
from modelpress.models import build_model, load_model, save_model
from modelpress.models.surgery import replay_surgery
from modelpress.prune import (
    PruneConfig,
    StructuredConfig,
    prune_,
    replay_resize,
    structured_prune,
    trace_channels,
)
from modelpress.prune.channel_scores import filter_norms, keep_count, keep_indices, taylor_importance, zero_fraction
from modelpress.train import TrainConfig, train

ZOO = ["mlp:64-32", "lenet300_100", "lenet5", "vgg_mini:8", "mobilenetv2_tiny", "cnn:8-16", "shallow_cnn:8-32"]
SHAPE = (1, 16, 16)


def _model(spec: str, shape=SHAPE, classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model(spec, shape, classes).eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---- pure scores ---------------------------------------------------------------------------------

def test_filter_norms_are_per_output_unit():
    w = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    assert filter_norms(w, 1).tolist() == [7.0, 1.0]
    assert filter_norms(w, 2).tolist() == [5.0, 1.0]
    assert filter_norms(torch.ones(3, 2, 2, 2), 1).tolist() == [8.0, 8.0, 8.0]


def test_zero_fraction_counts_per_channel_over_batch_and_positions():
    a = torch.zeros(2, 3, 2, 2)  # (B, C, H, W)
    a[:, 1] = 1.0
    a[0, 2] = 1.0
    assert zero_fraction(a).tolist() == [1.0, 0.0, 0.5]


def test_taylor_importance_is_abs_sum_of_activation_times_gradient():
    a = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # (B, C)
    g = torch.tensor([[1.0, 1.0], [-1.0, 2.0]])
    assert taylor_importance(a, g).tolist() == [2.0, 0.0]  # |1 - 3|, |2 - 2|


def test_keep_count_rounds_up_and_respects_the_minimum():
    assert keep_count(16, 8) == 8
    assert keep_count(16, 11, round_to=4) == 8  # 5 survivors rounded up to a multiple of 4
    assert keep_count(10, 9, round_to=4) == 4
    assert keep_count(6, 5, round_to=4) == 4
    assert keep_count(8, 8, min_channels=3) == 3
    assert keep_count(2, 0, min_channels=5) == 2  # never more than there are


def test_keep_indices_keeps_the_highest_scores_in_channel_order_and_earlier_ties():
    assert keep_indices(torch.tensor([0.5, 3.0, 0.1, 2.0]), 2).tolist() == [1, 3]
    assert keep_indices(torch.ones(4), 2).tolist() == [0, 1]


# ---- config --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"amount": 1.0}, "amount"), ({"amount": -0.1}, "amount"), ({"criterion": "l3"}, "criterion"),
    ({"round_to": 0}, "round_to"), ({"min_channels": 0}, "min_channels"), ({"layers": "features"}, "layers"),
    ({"ignore": [3]}, "ignore"), ({"data_examples": 0}, "data_examples"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        StructuredConfig(**kwargs)


def test_config_coerces_names_and_lists():
    config = StructuredConfig(criterion="taylor", layers=["a"], ignore=["b"])
    assert config.criterion.value == "taylor" and config.layers == ("a",) and config.ignore == ("b",)
    assert "l1, l2, apoz, taylor" in str(pytest.raises(ConfigError, StructuredConfig, criterion="x").value)


# ---- the channel graph ---------------------------------------------------------------------------

def test_residual_adds_and_depthwise_convs_join_one_group():
    graph = trace_channels(_model("mobilenetv2_tiny"), torch.zeros(1, *SHAPE))
    by_name = {g.name: g for g in graph.groups}
    stem = by_name["features.0.0"]  # block 1 (t=1) has a skip: its projection shares the stem's channels
    assert stem.producers == ["features.0.0", "features.1.block.1.0"] and stem.prunable
    assert stem.carriers == ["features.1.block.0.0"]  # its depthwise conv shrinks its groups with it
    assert "features.1.block.0.1" in stem.norms and "features.1.block.1.1" in stem.norms
    assert not by_name["classifier"].prunable and "output" in by_name["classifier"].reasons[0]


def test_flatten_maps_each_channel_to_its_positions():
    graph = trace_channels(_model("vgg_mini:8"), torch.zeros(1, *SHAPE))
    last = {g.name: g for g in graph.groups}["features.10.0"]
    assert last.consumers == [("classifier.1", 4)]  # 16x16 -> 2x2 after three poolings


class Branchy(nn.Module):
    """Two branches concatenated, then a grouped conv: both must be refused, the stem may be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.b1, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.gconv = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.cat([self.b1(x), self.b2(x)], dim=1)  # (B, 8, H, W)
        x = F.max_pool2d(F.relu(self.gconv(x)), 2)
        return self.head(x.mean((2, 3)))


def test_concatenation_and_grouped_convs_are_skipped_with_a_reason():
    model = Branchy().eval()
    x = torch.randn(2, 1, 8, 8)
    report = structured_prune(model, StructuredConfig(amount=0.5), x[:1])
    reasons = {row["group"]: row["reason"] for row in report.skipped}
    assert "cat" in reasons["b1"] and "cat" in reasons["b2"]
    assert "grouped convolution" in reasons["gconv"]
    assert model.stem.out_channels == 4 and model.b1.in_channels == 4 and model.b2.in_channels == 4
    assert model.b1.out_channels == 4 and model.gconv.out_channels == 8
    assert model(x).shape == (2, 3)
    with pytest.raises(ConfigError, match="b1 cannot be pruned safely: .*cat"):
        structured_prune(Branchy(), StructuredConfig(layers=("b1",)), x[:1])


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


def test_untraceable_model_is_refused_naming_the_class():
    with pytest.raises(ConfigError, match="Untraceable.*control flow"):
        structured_prune(Untraceable(), StructuredConfig(), torch.zeros(1, 4))


def test_example_input_of_the_wrong_shape_is_a_shape_error():
    with pytest.raises(ShapeError, match="does not fit"):
        trace_channels(_model("cnn:8-16"), torch.zeros(1, 3, 16, 16))


def test_masked_model_must_be_made_permanent_first():
    model = _model("mlp:64-32")
    prune_(model, PruneConfig(sparsity=0.5))
    with pytest.raises(ConfigError, match="make it permanent"):
        structured_prune(model, StructuredConfig(), torch.zeros(1, *SHAPE))


# ---- exactness and shrinking ---------------------------------------------------------------------

@torch.no_grad()
def _silence(model: nn.Module, amount: float) -> None:
    """Zero, in each prunable group, the channels that l1 at ``amount`` will remove: their producer
    filters, biases and BatchNorm scale/shift, so those channels are exactly 0 everywhere."""
    modules = dict(model.named_modules())
    for group in trace_channels(model, torch.zeros(1, *model.modelpress_spec.input_shape)).prunable():
        drop = torch.arange(group.channels - keep_count(group.channels, round(amount * group.channels)))
        for name in group.producers + group.norms:
            modules[name].weight[drop] = 0
            if modules[name].bias is not None:
                modules[name].bias[drop] = 0


@pytest.mark.parametrize("spec", ["mlp:64-32", "vgg_mini:8", "mobilenetv2_tiny"])
def test_removing_silent_channels_leaves_outputs_unchanged(spec):
    model = _model(spec)
    _silence(model, 0.5)
    x = torch.randn(6, *SHAPE)
    before = _outputs(model, x)
    report = structured_prune(model, StructuredConfig(amount=0.5, criterion="l1"), x[:1])
    assert report.params_after < report.params_before
    torch.testing.assert_close(_outputs(model, x), before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec", ZOO)
def test_every_zoo_model_shrinks_runs_and_round_trips(spec, tmp_path):
    model = _model(spec)
    x = torch.randn(3, *SHAPE)
    report = structured_prune(model, StructuredConfig(amount=0.5), x[:1])
    assert count_params(model) == report.params_after < 0.6 * report.params_before
    assert report.flops_after < 0.6 * report.flops_before
    assert _outputs(model, x).shape == (3, 4)
    assert all(row["after"] == row["before"] - round(0.5 * row["before"]) for row in report.layers)
    save_model(model, tmp_path / "m.mpk")
    torch.testing.assert_close(_outputs(load_model(tmp_path / "m.mpk"), x), _outputs(model, x), atol=0, rtol=0)


def test_pruning_twice_round_trips(tmp_path):
    model = _model("mobilenetv2_tiny")
    x = torch.randn(2, *SHAPE)
    structured_prune(model, StructuredConfig(amount=0.5), x[:1])
    second = structured_prune(model, StructuredConfig(amount=0.25, round_to=2), x[:1])
    assert second.params_after < second.params_before
    assert len(model.modelpress_spec.surgery) == 2
    save_model(model, tmp_path / "m.mpk")
    torch.testing.assert_close(_outputs(load_model(tmp_path / "m.mpk"), x), _outputs(model, x), atol=0, rtol=0)


def test_layers_ignore_and_round_to_select_what_shrinks():
    model = _model("vgg_mini:8")
    report = structured_prune(model, StructuredConfig(amount=0.6, layers=("features",), ignore=("features.0.0",),
                                                      round_to=4), torch.zeros(1, *SHAPE))
    assert model.features[0][0].out_channels == 8  # ignored
    assert model.classifier[1].out_features == 256  # not named in layers
    outs = [row["after"] for row in report.layers if row["dim"] == "out"]
    assert outs and all(n % 4 == 0 for n in outs)
    assert {row["reason"] for row in report.skipped} >= {"ignored", "not named in layers"}
    with pytest.raises(ConfigError, match="unknown modules.*features.0.0"):
        structured_prune(model, StructuredConfig(layers=("nope",)), torch.zeros(1, *SHAPE))


def test_a_parent_name_skips_what_cannot_be_pruned_but_an_exact_name_is_refused():
    model = _model("vgg_mini:8")
    report = structured_prune(model, StructuredConfig(layers=("classifier",)), torch.zeros(1, *SHAPE))
    assert model.classifier[1].out_features == 128 and model.classifier[4].out_features == 4
    assert any(row["group"] == "classifier.4" and "output" in row["reason"] for row in report.skipped)
    with pytest.raises(ConfigError, match="classifier.4 cannot be pruned safely: .*class count"):
        structured_prune(model, StructuredConfig(layers=("classifier.4",)), torch.zeros(1, *SHAPE))


def test_global_ranking_takes_channels_where_they_matter_least():
    model = _model("mlp:64-32")
    with torch.no_grad():
        model.net[1].weight[:40] *= 1e-3  # 40 of 64 first-layer units are nearly silent
    report = structured_prune(model, StructuredConfig(amount=0.25, global_ranking=True), torch.zeros(1, *SHAPE))
    assert model.net[1].out_features == 64 - 24 and model.net[3].out_features == 32  # 25% of 96 = 24, all from net.1
    assert report.params_after < report.params_before


def test_nothing_to_remove_changes_nothing():
    model = _model("cnn:8-16")
    report = structured_prune(model, StructuredConfig(amount=0.0), torch.zeros(1, *SHAPE))
    assert report.layers == () and report.params_after == report.params_before
    assert model.modelpress_spec.surgery == ()


# ---- data criteria -------------------------------------------------------------------------------

def _dead_channel_model() -> nn.Module:
    model = _model("cnn:8-16", (1, 8, 8))
    with torch.no_grad():
        model.features[0][1].bias[3] = -100.0  # channel 3 never passes its ReLU
    return model


@pytest.mark.parametrize("criterion", ["apoz", "taylor"])
def test_data_criteria_remove_a_dead_channel_first(criterion, tiny_splits):
    model = _dead_channel_model()
    old = model.features[0][0].weight.detach().clone()
    structured_prune(model, StructuredConfig(amount=0.125, criterion=criterion, layers=("features.0.0",)),
                     tiny_splits.x_train[:1], tiny_splits)
    new = model.features[0][0].weight
    kept = [i for i in range(8) if any(torch.equal(old[i], row) for row in new)]
    assert kept == [0, 1, 2, 4, 5, 6, 7]


def test_data_criteria_need_data_and_taylor_needs_labels(tiny_splits):
    with pytest.raises(ConfigError, match="pass data"):
        structured_prune(_model("cnn:8-16", (1, 8, 8)), StructuredConfig(criterion="apoz"), tiny_splits.x_train[:1])
    with pytest.raises(ConfigError, match="labelled"):
        structured_prune(_model("cnn:8-16", (1, 8, 8)), StructuredConfig(criterion="taylor"),
                         tiny_splits.x_train[:1], tiny_splits.x_train)
    model = _model("cnn:8-16", (1, 8, 8))  # a loader of (x, y, index) batches works too
    report = structured_prune(model, StructuredConfig(criterion="taylor", data_examples=64), tiny_splits.x_train[:1],
                              tiny_splits.loader("train", 32))
    assert report.params_after < report.params_before


def test_pruned_model_fine_tunes(tiny_splits):
    model = _model("cnn:8-16", (1, 8, 8))
    train(model, tiny_splits, TrainConfig(epochs=2, batch_size=64, lr=0.05), progress=False)
    structured_prune(model, StructuredConfig(amount=0.5, criterion="l2"), tiny_splits.x_train[:1])
    result = train(model, tiny_splits, TrainConfig(epochs=3, batch_size=64, lr=0.02, restore_best=False), progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]


# ---- replay --------------------------------------------------------------------------------------

def test_replay_refuses_a_record_that_does_not_fit():
    model = _model("cnn:8-16")
    with pytest.raises(ValueError, match="do not fit layer features.0.1"):
        replay_resize(model, {"features.0.1": {"in_channels": 1, "out_channels": 4, "groups": 1}})
    with pytest.raises(ModelFileError, match="cannot redo"):
        replay_surgery(model, [{"kind": "resize", "shapes": {"nope": {"num_features": 3}}}])
