"""Sequence models (lstm, gru, cnn1d): shapes, files, FLOPs, ONNX, training on MNIST-1D, clear errors."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data import load_dataset
from modelpress.measure import count_flops, count_params
from modelpress.measure.metrics import recurrent_flops
from modelpress.models import MODELS, build_from_spec, build_model, load_model, save_model
from modelpress.train import TrainConfig, train

SPECS = [
    ("lstm:16", {}),
    ("gru:16", {"bidirectional": True}),
    ("lstm:8-12", {"bidirectional": True, "readout": "last", "dropout": 0.1}),
    ("gru:8", {"readout": "flatten"}),
    ("cnn1d:8-8", {}),
    ("cnn1d", {"pool": "flatten", "batchnorm": False, "kernel": 3}),
    ("cnn1d:6-6", {"pool": "mean", "stride": 1}),
]


def test_sequence_models_are_registered_in_the_zoo():
    assert {"lstm", "gru", "cnn1d"} <= set(MODELS.names())


@pytest.mark.parametrize("arch,options", SPECS)
def test_sequence_models_map_sequences_to_logits_and_round_trip_through_a_file(arch, options, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, (40,), 10, **options).eval()
    x = torch.randn(5, 40)
    assert model(x).shape == (5, 10)
    path = save_model(model, tmp_path / "m.mpk")
    loaded = load_model(path)
    assert loaded.modelpress_spec == model.modelpress_spec
    assert torch.equal(loaded(x), model(x))
    rebuilt = build_from_spec(model.modelpress_spec)  # fresh weights, same architecture
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_channels_first_inputs_feed_every_channel_to_each_step():
    lstm = build_model("lstm:8", (3, 40), 10)
    cnn = build_model("cnn1d:4", (3, 40), 10)
    assert lstm.rnns[0].input_size == 3 and cnn.features[0].in_channels == 3
    x = torch.randn(2, 3, 40)
    assert lstm(x).shape == cnn(x).shape == (2, 10)


def test_readouts_differ_in_what_they_read():
    torch.manual_seed(0)
    x = torch.randn(2, 40)
    y = x.clone()
    y[:, 0] += 5.0  # only the first step changes
    # the backward direction's final state is the one at step 0, so "last" must see the change at once
    last = build_model("lstm:8", (40,), 10, readout="last", bidirectional=True).eval()
    assert not torch.allclose(last(x), last(y))
    forward_only = build_model("lstm:8", (40,), 10, readout="last").eval()
    z = x.clone()
    z[:, -1] += 5.0
    assert not torch.allclose(forward_only(x), forward_only(z))
    flatten = build_model("gru:8", (40,), 10, readout="flatten")
    assert flatten.head.in_features == 40 * 8
    assert build_model("gru:8", (40,), 10, bidirectional=True).head.in_features == 16


def test_greydanus_cnn_shape_three_stride_two_blocks():
    model = build_model("cnn1d", (40,), 10, pool="flatten")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(25, 2)] * 3
    assert model.head.in_features == 25 * 5  # 40 -> 20 -> 10 -> 5
    assert count_params(build_model("cnn1d", (40,), 10)) < count_params(build_model("lstm:64", (40,), 10))


def test_bad_specs_give_clear_errors():
    with pytest.raises(ShapeError, match=r"lstm needs 1-D sequence inputs of shape \(L,\) or \(C, L\).*\(1, 28, 28\)"):
        build_model("lstm:16", (1, 28, 28), 10)
    with pytest.raises(ShapeError, match="cnn1d needs 1-D sequence inputs"):
        build_model("cnn1d", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="lstm option readout must be one of mean, last, flatten; got 'first'"):
        build_model("lstm:16", (40,), 10, readout="first")
    with pytest.raises(ConfigError, match="gru got unknown option"):
        build_model("gru:16", (40,), 10, pool="max")
    with pytest.raises(ConfigError, match="bidirectional must be true or false"):
        build_model("gru:16", (40,), 10, bidirectional="yes")
    with pytest.raises(ConfigError, match="dropout must be in"):
        build_model("lstm:16", (40,), 10, dropout=1.5)
    with pytest.raises(ConfigError, match="hidden sizes must be positive"):
        build_model("lstm:0", (40,), 10)
    with pytest.raises(ConfigError, match="kernel must be a positive integer"):
        build_model("cnn1d", (40,), 10, kernel=0)
    with pytest.raises(ConfigError, match="pool must be one of"):
        build_model("cnn1d", (40,), 10, pool="sum")


def test_gru_flop_formula_matches_torchs_own_count():
    """The counter sees inside nn.GRU (it decomposes into addmm), so it checks recurrent_flops."""
    for bidirectional in (False, True):
        gru = nn.GRU(3, 16, num_layers=2, batch_first=True, bidirectional=bidirectional).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            gru(torch.zeros(1, 40, 3))
        assert recurrent_flops(gru, 40) == counter.get_total_flops() > 0


def test_lstm_flops_are_counted_although_its_kernel_is_fused():
    model = build_model("lstm:64", (40,), 10)
    head = 2 * 64 * 10
    assert count_flops(model, (40,)) == 40 * 2 * 4 * 64 * (1 + 64) + head
    bidirectional = build_model("lstm:64", (40,), 10, bidirectional=True)
    assert count_flops(bidirectional, (40,)) == 2 * 40 * 2 * 4 * 64 * (1 + 64) + 2 * head
    gru = build_model("gru:64", (40,), 10)
    assert count_flops(gru, (40,)) == 40 * 2 * 3 * 64 * (1 + 64) + head  # counted by torch, not twice
    projected = nn.LSTM(4, 16, proj_size=8)
    assert recurrent_flops(projected, 1) == 2 * 4 * 16 * (4 + 8) + 2 * 16 * 8


@pytest.mark.parametrize("arch,options", [("cnn1d:8-8", {}), ("lstm:8", {}), ("gru:8-8", {"bidirectional": True})])
def test_sequence_models_export_to_onnx_and_match_pytorch(arch, options, tmp_path):
    from modelpress.export import export_onnx

    torch.manual_seed(0)
    model = build_model(arch, (40,), 10, **options).eval()
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.checked and report.max_abs_diff < 1e-4 and report.input_shape == (40,)


def test_a_few_epochs_on_a_small_mnist1d_slice_lower_the_loss():
    splits = load_dataset("mnist1d", seed=0, limit=400, limit_test=100)
    assert splits.input_shape == (40,) and splits.num_classes == 10
    for arch in ("lstm:16", "cnn1d:8-8"):
        torch.manual_seed(0)
        model = build_model(arch, splits.input_shape, splits.num_classes)
        result = train(model, splits, TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=0.01), progress=False)
        losses = [row["train_loss"] for row in result.history]
        assert losses[-1] < losses[0], (arch, losses)
