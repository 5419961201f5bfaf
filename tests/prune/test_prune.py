"""Invariants of pruning: weight == orig * mask, masks compose, identity masks change nothing,
parameters survive so optimizers keep working, making masks permanent leaves outputs unchanged."""

import pytest
import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.models import build_model, load_model, save_model
from modelpress.prune import (
    GradualPruning,
    PruneConfig,
    activation_frequency,
    apply_masks_,
    effective_weight,
    capture_state,
    global_magnitude_masks,
    iterative_prune,
    lottery_ticket,
    magnitude_mask,
    make_permanent_,
    polynomial_sparsity,
    prune_,
    rewind_,
    sparsity_report,
    threshold_mask,
    unit_mask,
)
from modelpress.train import TrainConfig, load_checkpoint, train


def test_magnitude_mask_removes_the_smallest_weights():
    w = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.05, 1.0]])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [[0, 1, 0], [1, 0, 1]]
    assert magnitude_mask(w, 0.0).eq(1).all()
    with pytest.raises(ConfigError, match="sparsity must be in"):
        magnitude_mask(w, 1.0)


def test_threshold_mask_uses_quality_times_std_of_the_survivors():
    w = torch.tensor([0.0, 1.0, -1.0, 3.0, -3.0, 0.2])
    std = w[w != 0].std()
    assert threshold_mask(w, 1.0).tolist() == (w.abs() > std).float().tolist()
    assert threshold_mask(w, 0.0).tolist() == [0, 1, 1, 1, 1, 1]


def test_global_masks_share_one_threshold():
    masks = global_magnitude_masks({"a": torch.full((10,), 0.1), "b": torch.full((10,), 5.0)}, 0.5)
    assert masks["a"].sum() == 0 and masks["b"].sum() == 10


def test_unit_mask_removes_whole_rows():
    w = torch.randn(4, 3, 2, 2)
    mask = unit_mask(w, torch.tensor([0.9, 0.01, 0.5, 0.02]), 0.5)
    assert mask[1].sum() == 0 and mask[3].sum() == 0 and mask[0].eq(1).all() and mask[2].eq(1).all()


def test_polynomial_schedule_endpoints_and_shape():
    kw = dict(initial=0.0, final=0.9, start=100, end=1100)
    assert polynomial_sparsity(0, **kw) == 0.0 and polynomial_sparsity(100, **kw) == 0.0
    assert polynomial_sparsity(1100, **kw) == pytest.approx(0.9) and polynomial_sparsity(5000, **kw) == pytest.approx(0.9)
    mid = polynomial_sparsity(600, **kw)
    assert mid == pytest.approx(0.9 * (1 - 0.5**3))  # fast early, slow late


def _mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp:32-16", (1, 8, 8), 4)


def test_pruned_weight_is_orig_times_mask_and_params_survive():
    model = _mlp()
    layer = model.net[1]
    param_id = id(layer.weight)
    report = prune_(model, PruneConfig(sparsity=0.75))
    assert id(layer.weight_orig) == param_id  # an optimizer holding the parameter keeps working
    torch.testing.assert_close(layer.weight, layer.weight_orig * layer.weight_mask)
    assert report.kept_fraction == pytest.approx(0.25, abs=0.01)
    assert all(r["kept_percent"] == pytest.approx(25, abs=1) for r in report.rows)


def test_identity_mask_changes_nothing_forward_or_backward():
    a, b = _mlp(), _mlp()
    apply_masks_(b, {name: torch.ones_like(m.weight) for name, m in b.named_modules() if isinstance(m, nn.Linear)})
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x))
    a(x).sum().backward()
    b(x).sum().backward()
    torch.testing.assert_close(a.net[1].weight.grad, b.net[1].weight_orig.grad)


def test_masks_compose_and_pruned_weights_stay_pruned_through_retraining(tiny_splits):
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    prune_(model, PruneConfig(sparsity=0.5))
    first = model.net[1].weight_mask.clone()
    train(model, tiny_splits, TrainConfig(epochs=1, batch_size=32), progress=False)
    assert model.net[1].weight[first == 0].abs().sum() == 0
    prune_(model, PruneConfig(sparsity=0.8))
    second = model.net[1].weight_mask
    assert (second <= first).all() and sparsity_report(model).kept_fraction == pytest.approx(0.2, abs=0.01)


def test_make_permanent_keeps_outputs_and_saves_like_any_model(tmp_path):
    model = _mlp().eval()
    prune_(model, PruneConfig(criterion="global", sparsity=0.9))
    x = torch.randn(3, 1, 8, 8)
    before = model(x)
    make_permanent_(model)
    assert not hasattr(model.net[1], "weight_mask")
    torch.testing.assert_close(model(x), before)
    save_model(model, tmp_path / "p.mpk")
    loaded = load_model(tmp_path / "p.mpk")
    torch.testing.assert_close(loaded(x), before)
    assert sparsity_report(loaded).kept_fraction == pytest.approx(0.1, abs=0.01)


def test_layer_overrides_and_filters():
    model = _mlp()
    report = prune_(model, PruneConfig(sparsity=0.5, layer_sparsity={"net.1": 0.9}), filter_fn=lambda m, n: n != "net.5")
    kept = {r["layer"]: r["kept_percent"] for r in report.rows}
    assert kept == pytest.approx({"net.1": 10.0, "net.3": 50.0}, abs=1)
    with pytest.raises(ConfigError, match="unknown layers"):
        prune_(model, PruneConfig(layer_sparsity={"nope": 0.5}))
    with pytest.raises(ConfigError, match="criterion must be one of"):
        PruneConfig(criterion="random")


def test_activation_criterion_removes_rarely_active_units(tiny_splits):
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    freq = activation_frequency(model, tiny_splits.x_train)
    assert set(freq) == {"net.1", "net.3"} and freq["net.1"].shape == (32,)
    assert ((freq["net.1"] >= 0) & (freq["net.1"] <= 1)).all()
    prune_(model, PruneConfig(criterion="activation", sparsity=0.25), unit_scores=freq, filter_fn=lambda m, n: n == "net.1")
    dead_rows = (model.net[1].weight.abs().sum(1) == 0).nonzero().flatten()
    assert len(dead_rows) == 8
    assert freq["net.1"][dead_rows].max() <= freq["net.1"].sort().values[8]


def test_gradual_pruning_reaches_the_final_sparsity_during_training(tiny_splits):
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    steps = 3 * 8  # 3 epochs of 256/32 batches
    schedule = GradualPruning(0.8, start_step=2, end_step=steps - 4, every=3)
    result = train(model, tiny_splits, TrainConfig(epochs=3, batch_size=32), callbacks=[schedule], progress=False)
    assert schedule.history[-1] == (steps - 4, pytest.approx(0.8))
    sparsities = [s for _, s in schedule.history]
    assert sparsities == sorted(sparsities)
    assert sparsity_report(model).kept_fraction == pytest.approx(0.2, abs=0.01)
    assert result.best_val_accuracy > 0.5


def test_a_pruning_run_resumes_into_a_fresh_dense_model(tiny_splits, tmp_path):
    config = TrainConfig(epochs=2, batch_size=32)
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    prune_(model, PruneConfig(sparsity=0.6))
    train(model, tiny_splits, config, checkpoint_path=tmp_path / "c.ckpt", progress=False)
    fresh = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    train(fresh, tiny_splits, config, checkpoint_path=tmp_path / "c.ckpt", resume=True, progress=False)
    torch.testing.assert_close(effective_weight(fresh.net[1]), effective_weight(model.net[1]))
    assert "net.1.weight_mask" in load_checkpoint(tmp_path / "c.ckpt")["model"]


def test_iterative_pruning_and_lottery_ticket_rewinding(tiny_splits):
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    reports = iterative_prune(model, tiny_splits, [0.5, 0.8], TrainConfig(epochs=1, batch_size=32), progress=False)
    assert [round(r.kept_fraction, 2) for r in reports] == [0.5, 0.2]

    torch.manual_seed(0)
    ticket = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    init = capture_state(ticket)
    reports = lottery_ticket(ticket, tiny_splits, TrainConfig(epochs=2, batch_size=32), init, [0.5, 0.75], progress=False)
    assert round(reports[-1].kept_fraction, 2) == 0.25
    # the final ticket was rewound before its last training: re-rewinding gives init * mask exactly
    rewind_(ticket, init)
    ticket(tiny_splits.x_train[:1])  # the forward pre-hook recomputes weight = orig * mask
    torch.testing.assert_close(ticket.net[1].weight, init["net.1.weight"] * ticket.net[1].weight_mask)
