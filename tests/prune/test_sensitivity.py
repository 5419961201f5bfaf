import pytest
import torch

from modelpress.core.errors import ConfigError
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.prune import PruneConfig, prune_
from modelpress.prune.sensitivity import SensitivityScan, allocate_sparsity, layer_sensitivity
from modelpress.train import TrainConfig, train


@pytest.fixture
def trained(tiny_splits):
    splits = tiny_splits
    torch.manual_seed(0)
    model = build_model("mlp:32-16", splits.input_shape, splits.num_classes)
    train(model, splits, TrainConfig(epochs=6, lr=0.05, batch_size=32), progress=False)
    return model, splits


def test_the_scan_is_what_pruning_one_layer_gives_and_leaves_the_model_alone(trained):
    model, splits = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scan = layer_sensitivity(model, splits.x_val, splits.y_val, sparsities=[0.5, 0.9, 0.99])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert scan.layers == {"net.1": 64 * 32, "net.3": 32 * 16, "net.5": 16 * 4}
    assert scan.reference_error == pytest.approx(100 * (1 - evaluate_accuracy(model, splits.x_val, splits.y_val).accuracy))
    for name, sparsity in (("net.1", 0.9), ("net.3", 0.5)):
        pruned = build_model("mlp:32-16", splits.input_shape, splits.num_classes)
        pruned.load_state_dict(model.state_dict())
        prune_(pruned, PruneConfig(sparsity=0.0, layer_sparsity={name: sparsity}))
        error = 100 * (1 - evaluate_accuracy(pruned, splits.x_val, splits.y_val).accuracy)
        assert scan.errors[name][sparsity] == pytest.approx(error)
    assert scan.errors["net.5"][0.99] > scan.reference_error  # one weight of 64 left cannot separate 4 classes
    assert [row["layer"] for row in scan.rows()] == ["net.1", "net.3", "net.5"]


def test_scanning_refuses_unknown_layers_bad_fractions_and_masked_models(trained):
    model, splits = trained
    with pytest.raises(ConfigError, match="no prunable layer named"):
        layer_sensitivity(model, splits.x_val, splits.y_val, layers=["net.9"])
    with pytest.raises(ConfigError, match=r"fractions in \[0, 1\)"):
        layer_sensitivity(model, splits.x_val, splits.y_val, sparsities=[0.5, 1.0])
    masked = build_model("mlp:32-16", splits.input_shape, splits.num_classes)
    prune_(masked, PruneConfig(sparsity=0.5))
    with pytest.raises(ConfigError, match="make_permanent_"):
        layer_sensitivity(masked, splits.x_val, splits.y_val)


def _scan():
    # a big layer that barely cares, a small sensitive one, a mid one in between
    grid = [0.5, 0.8, 0.9, 0.95]
    return SensitivityScan(
        reference_error=10.0, layers={"big": 10_000, "small": 100, "mid": 1_000},
        errors={"big": dict(zip(grid, [10.0, 10.1, 10.5, 12.0])),
                "small": dict(zip(grid, [12.0, 20.0, 40.0, 60.0])),
                "mid": dict(zip(grid, [10.2, 11.0, 13.0, 16.0]))})


def _kept(scan, allocation):
    return sum(round(scan.layers[n] * (1 - s)) for n, s in allocation.items())


def test_allocation_keeps_weights_where_they_buy_the_most_accuracy():
    scan = _scan()
    allocation = allocate_sparsity(scan, 2_000)
    assert 1_980 <= _kept(scan, allocation) <= 2_000  # between scanned points the budget is spent, not rounded away
    # the 100 sensitive weights stay dense; the tolerant big layer gives up the most
    assert allocation["small"] == 0.0 and allocation["big"] > 0.8 > allocation["mid"] > 0.0
    # a looser budget never prunes any layer harder
    looser = allocate_sparsity(scan, 4_000)
    assert all(looser[n] <= allocation[n] for n in allocation)
    assert looser["mid"] == 0.0 and _kept(scan, looser) <= 4_000


def test_allocation_within_every_budget_or_a_clear_error():
    scan = _scan()
    for budget in (600, 1_000, 3_000, 20_000):
        assert _kept(scan, allocate_sparsity(scan, budget)) <= budget
    assert allocate_sparsity(scan, 20_000) == {"big": 0.0, "small": 0.0, "mid": 0.0}  # everything fits dense
    with pytest.raises(ConfigError, match="highest sparsities keep 555 weights"):
        allocate_sparsity(scan, 500)
