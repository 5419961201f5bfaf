"""Tucker-2 and CP of convolutions: full-rank Tucker is exact with stride/padding/dilation kept, HOSVD
obeys its error bound and HOOI only improves it, CP-ALS fits better with rank and never gets worse per
sweep, the blocks compute the convolution of the kernel they compose to, and factorized zoo models save
and load to identical outputs."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.factorize import (
    FactorizeConfig,
    cp_als,
    cp_conv,
    cp_reconstruct,
    factorize_,
    mode_spectra,
    select_layers,
    tucker2_conv,
)
from modelpress.factorize.cp import cp_cost, cp_weight
from modelpress.factorize.tucker import tucker2_cost, tucker2_weight
from modelpress.measure import count_flops, count_params
from modelpress.models import build_model, load_model, save_model

CONVS = [
    {"in_channels": 5, "out_channels": 7, "kernel_size": 3, "stride": 2, "padding": 1},
    {"in_channels": 4, "out_channels": 6, "kernel_size": (3, 5), "stride": (1, 2), "padding": (2, 1), "dilation": (2, 1), "bias": False},
    {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
]


@pytest.mark.parametrize("kwargs", CONVS)
def test_full_rank_tucker2_is_exact(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    seq = tucker2_conv(conv, (conv.in_channels, conv.out_channels))
    x = torch.randn(2, conv.in_channels, 11, 9)
    assert torch.allclose(seq(x), conv(x), atol=1e-5)
    core = seq[1]
    assert (core.stride, core.padding, core.dilation) == (conv.stride, conv.padding, conv.dilation)


def test_hosvd_error_bound_and_hooi_only_improves():
    torch.manual_seed(1)
    conv = nn.Conv2d(12, 16, 3)
    k = conv.weight.detach().double()
    s_in, s_out = mode_spectra(conv.weight)
    ranks = (5, 6)
    hosvd = (k - tucker2_weight(tucker2_conv(conv, ranks))).norm()
    # De Lathauwer et al.: the truncated HOSVD error is at most the discarded energy of both unfoldings
    assert hosvd ** 2 <= s_in[5:].pow(2).sum() + s_out[6:].pow(2).sum() + 1e-9
    hooi = (k - tucker2_weight(tucker2_conv(conv, ranks, iters=5))).norm()
    assert hooi <= hosvd + 1e-9


def test_tucker_refuses_bad_ranks_and_grouped_convs():
    with pytest.raises(ConfigError, match=r"must lie in \[1, 4\] x \[1, 6\]"):
        tucker2_conv(nn.Conv2d(4, 6, 3), (5, 2))
    with pytest.raises(ConfigError, match="groups == 1; got Conv2d with groups=2"):
        tucker2_conv(nn.Conv2d(4, 6, 3, groups=2), (2, 2))
    with pytest.raises(ConfigError, match="got Linear"):
        cp_conv(nn.Linear(3, 3), 2)


def test_cp_als_fits_better_with_rank_and_is_monotone():
    k = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    errors = []
    for rank in (1, 4, 16, 48):
        result = cp_als(k, rank, iters=60)
        steps = torch.tensor(result.history).diff()
        assert (steps <= 1e-7).all()  # each ALS sweep solves exact least squares: never worse
        assert math.isclose(result.history[-1], float((k.double() - cp_reconstruct(result.weights, result.factors)).norm() / k.norm()), rel_tol=1e-6)
        errors.append(result.history[-1])
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_cp_als_recovers_a_low_rank_tensor():
    g = torch.Generator().manual_seed(3)
    factors = [torch.randn(n, 3, generator=g, dtype=torch.float64) for n in (7, 5, 3, 3)]
    x = cp_reconstruct(torch.ones(3, dtype=torch.float64), factors)
    assert cp_als(x, 3, iters=500, tol=0.0).history[-1] < 1e-5


@pytest.mark.parametrize("kwargs", CONVS)
def test_cp_block_convolves_with_its_composed_kernel(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kwargs)
    seq = cp_conv(conv, 5, iters=20)
    x = torch.randn(2, conv.in_channels, 11, 9)
    pad = x if conv.padding_mode == "zeros" else F.pad(x, (1, 1, 1, 1), mode=conv.padding_mode)
    expected = F.conv2d(pad, cp_weight(seq).float(), conv.bias, conv.stride,
                        conv.padding if conv.padding_mode == "zeros" else 0, conv.dilation)
    assert torch.allclose(seq(x), expected, atol=1e-5)
    assert len(seq.cp_history) >= 1


def test_cost_formulas_match_the_measured_counts():
    conv = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    out_shape = tuple(conv(torch.zeros(1, 6, 9, 8)).shape[1:])
    for seq, cost in ((tucker2_conv(conv, (3, 4)), tucker2_cost(conv, (3, 4), (6, 9, 8), out_shape)),
                      (cp_conv(conv, 5, iters=2), cp_cost(conv, 5, (6, 9, 8), out_shape))):
        assert cost == (count_params(seq), count_flops(seq, (6, 9, 8)))


def test_factorize_tucker_lowers_counts_exactly_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("vgg_mini:8", (1, 28, 28), 10)
    x = torch.randn(3, 1, 28, 28)
    params, flops = count_params(model), count_flops(model, (1, 28, 28))
    report = factorize_(model, FactorizeConfig(method="tucker", ranks={"features.4.0": (4, 8), "features.10.0": 16}), x)
    # features.4.0: Conv(16, 16, 3) on 14x14; features.10.0: Conv(64, 64, 3) on 3x3 (no biases)
    saved_params = (16 * 16 * 9 - (16 * 4 + 4 * 8 * 9 + 8 * 16)) + (64 * 64 * 9 - (64 * 16 + 16 * 16 * 9 + 16 * 64))
    saved_flops = 2 * 14 * 14 * (16 * 16 * 9 - (16 * 4 + 4 * 8 * 9 + 8 * 16)) + 2 * 9 * (64 * 64 * 9 - (64 * 16 + 16 * 16 * 9 + 16 * 64))
    assert report.params_after == params - saved_params == count_params(model)
    assert report.flops_after == flops - saved_flops
    assert [r["rank"] for r in report.rows] == [[4, 8], [16, 16]]
    assert all(0 < r["rel_error"] < 1 for r in report.rows)
    loaded = load_model(save_model(model, tmp_path / "tucker.mpk"))
    assert torch.equal(loaded(x), model.eval()(x))
    assert "features.4.0.1" not in select_layers(model, FactorizeConfig(method="tucker"))  # parts are never re-picked


def test_energy_selection_skips_what_would_grow():
    torch.manual_seed(0)
    model = build_model("vgg_mini:8", (1, 28, 28), 10)
    report = factorize_(model, FactorizeConfig(method="tucker", energy=0.9), torch.randn(1, 1, 28, 28))
    assert "features.0.0" in report.skipped  # 1 input channel: 1x1 -> 3x3 -> 1x1 cannot beat a 72-weight conv
    assert report.factorized and report.flops_after < report.flops_before and report.params_after < report.params_before
    for row in report.rows:
        assert row["status"] != "factorized" or (row["params_after"] < row["params_before"] and row["flops_after"] < row["flops_before"])


def test_factorize_cp_lenet5_round_trips_and_meets_a_budget(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    x = torch.randn(2, 1, 28, 28)
    report = factorize_(model, FactorizeConfig(method="cp", flop_budget=0.6, als_iters=10), x)
    assert report.flops_after <= 0.6 * report.flops_before and report.flops_after == count_flops(model, (1, 28, 28))
    assert [s["kind"] for s in model.modelpress_spec.surgery] == ["cp"] * len(report.factorized)
    loaded = load_model(save_model(model, tmp_path / "cp.mpk"))
    assert torch.equal(loaded(x), model.eval()(x))
