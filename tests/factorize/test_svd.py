"""SVD of Linear layers and ``factorize_``: full rank is exact, truncation error is the Eckart-Young tail,
energy ranks keep what they promise, counts drop by the exact amount, budgets are met, and a factorized
model saves, loads and fine-tunes."""

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.factorize import FactorizeConfig, energy_rank, factorize_, svd_linear
from modelpress.factorize.svd import svd_cost, svd_weight
from modelpress.measure import count_flops, count_params
from modelpress.models import build_model, load_model, save_model
from modelpress.train import TrainConfig, train


def test_full_rank_svd_reproduces_the_layer():
    torch.manual_seed(0)
    for layer in (nn.Linear(12, 7), nn.Linear(5, 9, bias=False)):
        seq = svd_linear(layer, min(layer.in_features, layer.out_features))
        x = torch.randn(6, 3, layer.in_features)  # leading positions are fine too
        assert torch.allclose(seq(x), layer(x), atol=1e-5)
        assert seq[0].bias is None and (seq[1].bias is None) == (layer.bias is None)


def test_truncated_svd_error_is_the_eckart_young_tail():
    torch.manual_seed(1)
    layer = nn.Linear(20, 15)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    for rank in (1, 4, 10):
        seq = svd_linear(layer, rank)
        err = (layer.weight.detach().double() - svd_weight(seq)).norm() / s.norm()
        assert math.isclose(float(err), float(s[rank:].norm() / s.norm()), rel_tol=1e-6)
        assert seq[0].weight.shape == (rank, 20) and seq[1].weight.shape == (15, rank)


def test_energy_rank_is_the_smallest_rank_keeping_the_energy():
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])  # energies 16, 9, 4, 1 of 30
    assert energy_rank(s, 16 / 30) == 1 and energy_rank(s, 16.5 / 30) == 2
    assert energy_rank(s, 1.0) == 4 and energy_rank(s.flip(0), 0.8) == 2  # order of s does not matter
    assert energy_rank(torch.zeros(3), 0.9) == 1
    spectrum = torch.rand(50, generator=torch.Generator().manual_seed(0)).sort(descending=True).values
    power = spectrum.double() ** 2
    previous = 0
    for energy in torch.linspace(0.05, 1.0, 20).tolist():
        r = energy_rank(spectrum, energy)
        assert r >= previous  # monotone in the energy
        assert power[:r].sum() >= energy * power.sum() * (1 - 1e-9)
        assert r == 1 or power[: r - 1].sum() < energy * power.sum()
        previous = r
    with pytest.raises(ConfigError, match="energy must be in"):
        energy_rank(s, 0.0)
    with pytest.raises(ShapeError):
        energy_rank(torch.ones(2, 2), 0.5)


def test_cost_formula_matches_the_measured_counts():
    layer = nn.Linear(30, 20)
    seq = svd_linear(layer, 6)
    assert svd_cost(layer, 6, (30,)) == (count_params(seq), count_flops(seq, (30,)))
    assert svd_cost(layer, 6, (4, 30)) == (count_params(seq), count_flops(seq, (4, 30)))


def test_factorize_lowers_params_and_flops_by_the_expected_count():
    model = build_model("mlp:64-48", (32,), 5)
    before_p, before_f = count_params(model), count_flops(model, (32,))
    report = factorize_(model, FactorizeConfig(method="svd", ranks={"net.1": 8, "net.3": 4}), torch.randn(2, 32))
    saved = (32 * 64 - 8 * (32 + 64)) + (64 * 48 - 4 * (64 + 48))  # weights; biases stay
    assert report.params_before == before_p and report.params_after == before_p - saved == count_params(model)
    assert report.flops_after == before_f - 2 * saved == count_flops(model, (32,))
    assert report.factorized == ["net.1", "net.3"] and [r["rank"] for r in report.rows] == [8, 4]
    assert [s["kind"] for s in model.modelpress_spec.surgery] == ["svd", "svd"]
    assert json.loads(json.dumps(report.to_json()))["rows"][0]["rank"] == 8


def test_flop_budget_is_met_with_one_shared_energy():
    torch.manual_seed(0)
    model = build_model("mlp:96-96", (64,), 10)
    spectra = {n: torch.linalg.svdvals(m.weight.detach().double()) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    report = factorize_(model, FactorizeConfig(method="svd", flop_budget=0.5), torch.randn(1, 64))
    assert report.flops_after <= 0.5 * report.flops_before
    assert report.flops_after == count_flops(model, (64,))
    assert 0 < report.energy < 1 and report.factorized
    for row in report.rows:  # every layer's rank is its energy rank at the one chosen energy
        assert row["rank"] == energy_rank(spectra[row["layer"]], report.energy)
    with pytest.raises(ConfigError, match="flop_budget 0.01 cannot be met"):
        factorize_(build_model("mlp:96-96", (64,), 10), FactorizeConfig(method="svd", flop_budget=0.01), torch.randn(1, 64))


def test_layers_whose_factorized_form_is_larger_are_skipped():
    model = build_model("mlp:16", (8,), 3)
    x = torch.randn(4, 8)
    expected = model.eval()(x)
    report = factorize_(model, FactorizeConfig(method="svd", energy=1.0), x)  # full rank: never smaller
    assert report.factorized == [] and report.skipped == ["net.1", "net.3"]
    assert all(r["status"].startswith("skipped") and r["rel_error"] is None for r in report.rows)
    assert torch.equal(model(x), expected) and model.modelpress_spec.surgery == ()
    forced = factorize_(model, FactorizeConfig(method="svd", energy=1.0, skip_if_larger=False), x)
    assert forced.factorized == ["net.1", "net.3"] and forced.params_after > forced.params_before
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="method must be one of svd, tucker, cp; got 'qr'"):
        FactorizeConfig(method="qr")
    with pytest.raises(ConfigError, match="exactly one of energy, flop_budget, ranks"):
        FactorizeConfig(energy=0.8, flop_budget=0.5)
    with pytest.raises(ConfigError, match="exactly one"):
        FactorizeConfig(energy=None)
    with pytest.raises(ConfigError, match="energy must be in"):
        FactorizeConfig(energy=1.5)
    with pytest.raises(ConfigError, match="flop_budget must be in"):
        FactorizeConfig(flop_budget=0.0)
    with pytest.raises(ConfigError, match=r"ranks\['net.1'\] must be an integer"):
        FactorizeConfig(ranks={"net.1": (2, 3)})
    with pytest.raises(ConfigError, match="als_iters"):
        FactorizeConfig(method="cp", als_iters=0)
    assert FactorizeConfig(flop_budget=0.5).energy is None and FactorizeConfig().energy == 0.9
    assert dataclasses.replace(FactorizeConfig(), flop_budget=0.5).flop_budget == 0.5  # the default energy steps aside
    model = build_model("mlp:16", (8,), 3)
    x = torch.randn(1, 8)
    with pytest.raises(ConfigError, match=r"ranks\['net.1'\]: rank must be an integer in \[1, 8\]"):
        factorize_(model, FactorizeConfig(ranks={"net.1": 9}), x)
    with pytest.raises(ConfigError, match="no layer 'net.7'"):
        factorize_(model, FactorizeConfig(ranks={"net.7": 2}), x)
    with pytest.raises(ConfigError, match="'net.2'.*not supported by method svd"):
        factorize_(model, FactorizeConfig(layers=("net.2",)), x)
    with pytest.raises(ConfigError, match="no layer that method tucker applies to"):
        factorize_(model, FactorizeConfig(method="tucker"), x)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp:40-30", (20,), 4)
    factorize_(model, FactorizeConfig(method="svd", energy=0.6), torch.randn(1, 20))
    loaded = load_model(save_model(model, tmp_path / "svd.mpk"))
    x = torch.randn(8, 20)
    assert torch.equal(loaded(x), model.eval()(x))
    assert isinstance(loaded.net[1], nn.Sequential) and loaded.modelpress_spec == model.modelpress_spec


def test_fine_tuning_a_factorized_model_with_train(tiny_splits):
    torch.manual_seed(0)
    model = build_model("mlp:32", (1, 8, 8), 4)
    factorize_(model, FactorizeConfig(method="svd", ranks={"net.1": 4}), tiny_splits.x_train[:1])
    first = model.net[1][0].weight.detach().clone()
    result = train(model, tiny_splits, TrainConfig(epochs=1, batch_size=64, lr=0.05, restore_best=False), progress=False)
    assert result.epochs_run == 1 and math.isfinite(result.history[0]["train_loss"])
    assert not torch.equal(first, model.net[1][0].weight)  # the factors themselves are trained
    assert model.net[1][0].weight.shape == (4, 64)
