import pytest
import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.models import build_model, load_model, save_model
from modelpress.prune import PruneConfig, prune_
from modelpress.quantize import QuantizeConfig, assign, finalize_, init_centroids, kmeans_1d, quantize_
from modelpress.train import TrainConfig, train


def test_centroid_initialisations():
    values = torch.cat([torch.randn(1000) * 0.1, torch.tensor([-2.0, 2.0])])
    linear = init_centroids(values, 5, "linear")
    torch.testing.assert_close(linear, torch.linspace(-2.0, 2.0, 5))
    density = init_centroids(values, 5, "density")
    assert density.abs().max() < 0.2  # quantiles crowd where the weights are
    forgy = init_centroids(values, 5, "random", torch.Generator().manual_seed(0))
    assert all(bool((values == c).any()) for c in forgy)
    with pytest.raises(ConfigError, match="linear, density, random"):
        init_centroids(values, 5, "spectral")


def test_assign_picks_the_nearest_centroid_whatever_their_order():
    centroids = torch.tensor([1.0, -1.0, 0.0])
    assert assign(torch.tensor([-0.9, 0.2, 0.6, 5.0]), centroids).tolist() == [1, 2, 0, 0]


def test_kmeans_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([-1.0, 0.0, 2.0])
    values = truth[torch.randint(0, 3, (3000,), generator=g)] + 0.01 * torch.randn(3000, generator=g)
    centroids, labels = kmeans_1d(values, 3)
    torch.testing.assert_close(centroids.sort().values, truth, atol=0.01, rtol=0)
    assert ((centroids[labels] - values).abs() < 0.05).all()


def _tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp:32", (1, 8, 8), 4)


def test_quantized_layers_hold_at_most_2_to_the_bits_values_and_pruned_weights_stay_zero():
    model = _tiny()
    prune_(model, PruneConfig(sparsity=0.7))
    report = quantize_(model, QuantizeConfig(bits_fc=3))
    layer = model.net[1]
    assert layer.weight_centroids.shape == (8,)
    values = layer.weight_centroids[layer.weight_labels] * layer.weight_keep
    assert values.unique().numel() <= 9  # 8 shared values plus the pruned zeros
    assert (values == 0).float().mean() >= 0.7 - 1e-3
    assert all(row["bits"] == 3 and row["clusters_used"] <= 8 for row in report.rows)


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    model = _tiny()
    dense = build_model("mlp:32", (1, 8, 8), 4)
    quantize_(model, QuantizeConfig(bits_fc=2))
    layer = model.net[1]
    x = torch.randn(6, 1, 8, 8)
    model(x).sum().backward()
    # the same forward with the shared values as a dense weight gives the per-weight gradients
    with torch.no_grad():
        dense.load_state_dict({k: v for k, v in model.state_dict().items() if "weight_" not in k}, strict=False)
        dense.net[1].weight.copy_(layer.weight)
        dense.net[3].weight.copy_(model.net[3].weight)
    dense(x).sum().backward()
    expected = torch.zeros(4).index_add_(0, layer.weight_labels.flatten(), (dense.net[1].weight.grad * layer.weight_keep).flatten())
    torch.testing.assert_close(layer.weight_centroids.grad, expected)


def test_fine_tuning_moves_only_centroids_and_finalize_keeps_outputs(tiny_splits, tmp_path):
    model = build_model("mlp:32", tiny_splits.input_shape, tiny_splits.num_classes)
    train(model, tiny_splits, TrainConfig(epochs=2, batch_size=32), progress=False)
    prune_(model, PruneConfig(sparsity=0.5))
    quantize_(model, QuantizeConfig(bits_fc=4))
    labels_before = model.net[1].weight_labels.clone()
    centroids_before = model.net[1].weight_centroids.detach().clone()
    # the last epoch's weights, even if the starting centroids scored as well on validation
    result = train(model, tiny_splits, TrainConfig(epochs=2, batch_size=32, lr=0.01, restore_best=False), progress=False)
    assert torch.equal(model.net[1].weight_labels, labels_before)
    assert not torch.equal(model.net[1].weight_centroids.detach(), centroids_before)
    assert result.best_val_accuracy > 0.8
    model.eval()
    x = tiny_splits.x_test
    before = model(x)
    finalize_(model)
    assert isinstance(model.net[1].weight, nn.Parameter) and not hasattr(model.net[1], "weight_centroids")
    torch.testing.assert_close(model(x), before)
    assert model.net[1].weight.unique().numel() <= 17
    save_model(model, tmp_path / "q.mpk")
    torch.testing.assert_close(load_model(tmp_path / "q.mpk")(x), before)


def test_config_validation():
    with pytest.raises(ConfigError, match="bits for bits_fc must be an integer"):
        QuantizeConfig(bits_fc=0)
    with pytest.raises(ConfigError, match="init must be one of"):
        QuantizeConfig(init="magic")
    model = _tiny()
    quantize_(model)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(model)
