"""Binary / ternary weights: invariants of the STE reparametrization, the paper formulas, training,
finalizing, and storage at 1-2 bits per weight."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.encode import load_compressed, read_manifest, save_compressed
from modelpress.models import build_model, load_model, save_model
from modelpress.quantize import (
    BinaryConfig,
    ClipLatent,
    TernaryConfig,
    binarize_,
    clip_latent_,
    finalize_binary_,
    is_binarized,
    ternarize_,
)
from modelpress.quantize.binary import quantized_weight, twn_threshold
from modelpress.train import TrainConfig, train

ALL = {"keep_first_last": False}


def _linear(weight: torch.Tensor) -> nn.Sequential:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return nn.Sequential(layer)


def _grad_of_weight(x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    """dL/dW of ``y = x W^T`` for ``L = sum(y * upstream)``: ``upstream^T x``, shape (out, in)."""
    return upstream.T @ x


def test_ste_passes_the_gradient_to_the_latent_weight_and_zeroes_it_outside_the_clip():
    """latent.grad == dL/dW_b * 1{|w| <= clip}: the straight-through estimator of Hubara et al."""
    torch.manual_seed(0)
    latent = torch.randn(5, 7) * 0.8  # some entries beyond clip = 1
    model = _linear(latent)
    original = model[0].weight
    binarize_(model, BinaryConfig(**ALL))
    assert model[0].weight_latent is original  # the Parameter survives: an optimizer built earlier keeps working
    x, upstream = torch.randn(4, 7), torch.randn(4, 5)
    (model(x) * upstream).sum().backward()
    inside = (latent.abs() <= 1.0).float()
    assert 0 < inside.sum() < latent.numel()
    torch.testing.assert_close(model[0].weight_latent.grad, _grad_of_weight(x, upstream) * inside)


@pytest.mark.parametrize("per_channel", [False, True])
def test_binary_forward_uses_exactly_plus_minus_alpha(per_channel):
    torch.manual_seed(1)
    latent = torch.randn(6, 9)
    model = _linear(latent)
    binarize_(model, BinaryConfig(per_channel=per_channel, **ALL))
    x = torch.randn(3, 9)
    out = model(x)
    alpha = latent.abs().mean(1, keepdim=True) if per_channel else latent.abs().mean()
    expected = torch.where(latent >= 0, alpha, -alpha)
    assert torch.equal(model[0].weight, expected)
    assert torch.equal(out, F.linear(x, expected))
    rows = [set(r.tolist()) for r in model[0].weight.abs()]
    assert all(len(r) == 1 for r in rows)  # one magnitude per row
    assert model[0].weight.unique().numel() <= (12 if per_channel else 2)


def test_binaryconnect_without_scale_is_plus_minus_one_and_stochastic_mode_samples_by_hard_sigmoid():
    model = _linear(torch.tensor([[1.0, -1.0, 0.0, 0.3]]).repeat(4000, 1))
    binarize_(model, BinaryConfig(scale="none", mode="stochastic", **ALL))
    torch.manual_seed(0)
    w = quantized_weight(model[0], training=True)
    assert set(w.unique().tolist()) == {-1.0, 1.0}
    plus = (w > 0).float().mean(0)  # P(+1) = clip((w + 1) / 2, 0, 1) = 1, 0, 0.5, 0.65
    torch.testing.assert_close(plus, torch.tensor([1.0, 0.0, 0.5, 0.65]), atol=0.03, rtol=0)
    assert torch.equal(quantized_weight(model[0], training=False)[0], torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_twn_threshold_and_scale_follow_the_paper_on_a_fixed_tensor():
    w = torch.tensor([[1.0, -2.0, 0.2, -0.1, 3.0, 0.0]])
    delta, alpha = twn_threshold(w)
    # mean|W| = 6.3 / 6 = 1.05; delta = 0.7 * 1.05; |W| > delta: 1, 2, 3 -> alpha = 2
    torch.testing.assert_close(delta, torch.tensor(0.735))
    torch.testing.assert_close(alpha, torch.tensor(2.0))
    model = _linear(w)
    ternarize_(model, TernaryConfig(**ALL))
    assert torch.equal(model[0].weight, torch.tensor([[2.0, -2.0, 0.0, 0.0, 2.0, 0.0]]))


def test_ttq_scales_get_the_papers_gradients_and_learn():
    latent = torch.tensor([[0.9, -0.5, 0.01, 0.6, -0.02, -1.0]])
    model = _linear(latent)
    ternarize_(model, TernaryConfig(threshold="learned", t=0.05, **ALL))
    layer = model[0]
    wp, wn = layer.weight_wp.item(), layer.weight_wn.item()
    assert wp == pytest.approx(0.75) and wn == pytest.approx(0.75)  # means of |w| beyond delta = 0.05
    torch.testing.assert_close(layer.weight, torch.tensor([[wp, -wn, 0.0, wp, 0.0, -wn]]))
    x, upstream = torch.randn(3, 6), torch.randn(3, 1)
    (model(x) * upstream).sum().backward()
    g = _grad_of_weight(x, upstream)[0]
    pos, neg = torch.tensor([1, 0, 0, 1, 0, 0.0]), torch.tensor([0, 1, 0, 0, 0, 1.0])
    torch.testing.assert_close(layer.weight_wp.grad, (g * pos).sum())  # Eq. 7: sum over I_p
    torch.testing.assert_close(layer.weight_wn.grad, -(g * neg).sum())  # w_t = -W_n on I_n
    torch.testing.assert_close(layer.weight_latent.grad[0], g * (pos * wp + neg * wn + (1 - pos - neg)))  # Eq. 8
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    assert layer.weight_wp.item() != wp and layer.weight_wn.item() != wn


def _mean_loss(model, splits) -> float:
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model(splits.x_train), splits.y_train).item()


@pytest.mark.parametrize("config", [BinaryConfig(), TernaryConfig(), TernaryConfig(threshold="learned")],
                         ids=["binary", "twn", "ttq"])
def test_training_from_full_precision_lowers_the_loss_and_keeps_weights_quantized(tiny_splits, config):
    torch.manual_seed(0)
    model = build_model("mlp:32-32", (1, 8, 8), 4)
    train(model, tiny_splits, TrainConfig(epochs=2, lr=0.05, restore_best=False), progress=False)
    (binarize_ if isinstance(config, BinaryConfig) else ternarize_)(model, config)
    before = _mean_loss(model, tiny_splits)
    train(model, tiny_splits, TrainConfig(epochs=4, lr=0.02, restore_best=False), callbacks=[ClipLatent()], progress=False)
    assert _mean_loss(model, tiny_splits) < before
    limit = 2 if isinstance(config, BinaryConfig) else 3
    for name in ("net.1", "net.3"):
        layer = model.get_submodule(name)
        assert is_binarized(layer) and layer.weight_latent.abs().max() <= config.clip
        assert quantized_weight(layer).unique().numel() <= limit
    assert not is_binarized(model.net[5])  # the logits layer stays full precision


def test_keep_first_last_ignore_and_layers_select_the_right_layers():
    model = build_model("lenet5", (1, 28, 28), 10)
    report = binarize_(model, BinaryConfig())
    assert [r["layer"] for r in report.rows] == ["features.3", "classifier.1"]
    assert report.full_precision == ["features.0", "classifier.3"]
    assert isinstance(model.features[0].weight, nn.Parameter) and isinstance(model.classifier[3].weight, nn.Parameter)
    every = binarize_(build_model("lenet5", (1, 28, 28), 10), BinaryConfig(keep_first_last=False, ignore=["classifier.1"]))
    assert [r["layer"] for r in every.rows] == ["features.0", "features.3", "classifier.3"]
    chosen = ternarize_(build_model("lenet5", (1, 28, 28), 10), TernaryConfig(layers=["classifier.1", "classifier.3"]))
    assert [r["layer"] for r in chosen.rows] == ["classifier.1"]  # the last Linear is still kept
    with pytest.raises(ConfigError, match="'features.1' is a ReLU"):
        binarize_(build_model("lenet5", (1, 28, 28), 10), BinaryConfig(layers=["features.1"]))
    with pytest.raises(ConfigError, match="no module named 'conv9'"):
        binarize_(build_model("lenet5", (1, 28, 28), 10), BinaryConfig(ignore=["conv9"]))
    with pytest.raises(ConfigError, match="already pruned, weight-shared or binarized"):
        binarize_(model, BinaryConfig())


@pytest.mark.parametrize("config, values", [(BinaryConfig(), 2), (TernaryConfig(), 3),
                                            (TernaryConfig(threshold="learned"), 3)])
def test_finalize_leaves_plain_layers_with_the_same_outputs_that_save_and_load(tmp_path, config, values):
    torch.manual_seed(0)
    model = build_model("cnn:4-8", (1, 8, 8), 3, hidden=16)
    (binarize_ if isinstance(config, BinaryConfig) else ternarize_)(model, config)
    x = torch.randn(5, 1, 8, 8)
    before = model.eval()(x)
    finalize_binary_(model)
    for name in ("features.2.0", "classifier.1"):
        layer = model.get_submodule(name)
        assert not is_binarized(layer) and isinstance(layer.weight, nn.Parameter)
        assert not layer._forward_pre_hooks and not hasattr(layer, "weight_wp")
        assert layer.weight.unique().numel() == values
        assert not torch.signbit(layer.weight[layer.weight == 0]).any()  # no -0.0 for the file to trip on
    assert torch.equal(model(x), before)
    save_model(model, tmp_path / "m.mpk")
    assert torch.equal(load_model(tmp_path / "m.mpk").eval()(x), before)


def _layer_bits(stats: dict, name: str) -> float:
    return 8 * stats[name]["bytes"] / stats[name]["numel"]


@pytest.mark.parametrize("config, max_bits", [(BinaryConfig(), 1.1), (BinaryConfig(per_channel=True), 1.15),
                                              (TernaryConfig(), 1.6), (TernaryConfig(threshold="learned"), 2.0)],
                         ids=["binary", "binary-per-channel", "twn", "ttq"])
def test_the_file_stores_a_256x256_layer_at_1_to_2_bits_and_reloads_bit_identically(tmp_path, config, max_bits):
    torch.manual_seed(0)
    model = build_model("mlp:256-256", (256,), 10)
    with torch.no_grad():
        model.net[3].weight.normal_(0, 0.05)  # a trained layer's bell shape (TWN: ~42% zeros)
    (binarize_ if isinstance(config, BinaryConfig) else ternarize_)(model, config)
    stats = save_compressed(model, tmp_path / "live.mpz")  # the reparametrized form is read directly
    finalize_binary_(model)
    save_compressed(model, tmp_path / "final.mpz")
    assert (tmp_path / "live.mpz").read_bytes() == (tmp_path / "final.mpz").read_bytes()
    assert stats["net.3.weight"]["kind"] == "shared"
    assert 0.9 < _layer_bits(stats, "net.3.weight") <= max_bits
    loaded, _, _ = load_compressed(tmp_path / "final.mpz")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor.view(torch.int32), loaded.state_dict()[key].view(torch.int32)), key
    version = int.from_bytes((tmp_path / "final.mpz").read_bytes()[8:10], "little")
    assert version == (2 if getattr(config, "per_channel", False) else 1)  # older readers open all the rest
    assert any(t.get("codebook") for t in read_manifest(tmp_path / "final.mpz")[0]["tensors"]) == (version == 2)


def test_clip_latent_clamps_to_the_configured_range():
    model = _linear(torch.tensor([[3.0, -0.2, -5.0]]))
    binarize_(model, BinaryConfig(clip=0.5, **ALL))
    clip_latent_(model)
    assert torch.equal(model[0].weight_latent, torch.tensor([[0.5, -0.2, -0.5]]))


@pytest.mark.parametrize("make, field, message", [
    (lambda: BinaryConfig(mode="xnor"), "mode", "sign, stochastic; got 'xnor'"),
    (lambda: BinaryConfig(scale="max"), "scale", "none, mean; got 'max'"),
    (lambda: BinaryConfig(clip=0), "clip", "positive finite number; got 0"),
    (lambda: BinaryConfig(layers="net.1"), "layers", "list of module names"),
    (lambda: BinaryConfig(scale="none", per_channel=True), "per_channel", "scale='mean'"),
    (lambda: TernaryConfig(threshold="adaptive"), "threshold", "fixed, learned; got 'adaptive'"),
    (lambda: TernaryConfig(t=1.5), "t", r"\(0, 1\); got 1.5"),
    (lambda: TernaryConfig(delta_factor=-1), "delta_factor", "got -1"),
    (lambda: TernaryConfig(ignore=[3]), "ignore", "list of module names"),
    (lambda: TernaryConfig(ignore=None), "ignore", "list of module names"),
])
def test_bad_configs_name_the_field(make, field, message):
    with pytest.raises(ConfigError, match=f"^{field} .*{message}"):
        make()


def test_the_wrong_config_type_is_refused():
    with pytest.raises(ConfigError, match="binarize_ needs a BinaryConfig"):
        binarize_(_linear(torch.ones(2, 2)), TernaryConfig())
    with pytest.raises(ConfigError, match="ternarize_ needs a TernaryConfig"):
        ternarize_(_linear(torch.ones(2, 2)), BinaryConfig())
