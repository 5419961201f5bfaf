"""The spatial layout (version 5): round trips, size on picture-like layers, fuzzing, bad metadata."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress.core.errors import ModelFileError
from modelpress.encode import load_compressed, read_manifest, save_compressed
from modelpress.encode.report import layer_rows
from modelpress.encode.spatial import decode_spatial, decode_spatial_labels, encode_spatial, geometry_for
from modelpress.models import build_model


def smooth_layer(rows, height, width, seed=0, alphabet=16, keep=0.15):
    """Labels ``(rows * height * width,)`` of a first-layer-like weight: each unit a smooth random
    picture, pruned by magnitude, its values quantized to ``alphabet`` levels (1..alphabet; 0 = pruned)."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(rows, height + 4, width + 4))
    kernel = np.ones(5) / 5
    for axis in (1, 2):
        field = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, field)
    field = field.reshape(rows, -1)
    threshold = np.quantile(np.abs(field), 1 - keep)
    levels = np.clip(np.round((field / np.abs(field).max() + 1) / 2 * (alphabet - 1)), 0, alphabet - 1).astype(np.int64) + 1
    return np.where(np.abs(field) >= threshold, levels, 0).ravel()


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6), st.integers(1, 9),
       st.floats(0, 1), st.integers(0, 2**31))
def test_any_labels_round_trip(rows, planes, height, width, alphabet, density, seed):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(rows * planes * height * width) < density,
                      rng.integers(1, alphabet + 1, rows * planes * height * width), 0)
    fields, blob, mask_bits, label_bits = encode_spatial(labels, rows, [planes, height, width], alphabet)
    assert mask_bits >= 0 and label_bits >= 0 and len(blob) == 4 * (fields["classes"] + fields["class_words"]
                                                                    + fields["words"]) + fields["mantissa_bytes"]
    np.testing.assert_array_equal(decode_spatial(fields, blob, rows, [planes, height, width], alphabet), labels)


def test_geometry_comes_from_kernels_and_from_an_image_input():
    assert geometry_for((50, 20, 5, 5), (1, 28, 28)) == [20, 5, 5]
    assert geometry_for((8, 3, 1, 1), (3, 8, 8)) is None  # a 1x1 convolution has no neighbours
    assert geometry_for((300, 784), (1, 28, 28)) == [1, 28, 28]
    assert geometry_for((300, 784), (784,)) is None and geometry_for((100, 300), (1, 28, 28)) is None
    assert geometry_for((300, 28), (1, 28, 1)) is None  # a line, not a picture


def test_a_picture_like_layer_costs_far_less_than_without_its_picture_and_loads_bit_identically(tmp_path):
    labels = smooth_layer(64, 16, 16)
    centroids = torch.linspace(-1, 1, 16)
    model = build_model("mlp:64", (1, 16, 16), 3)
    with torch.no_grad():
        model.net[1].weight.copy_(torch.cat([torch.zeros(1), centroids])[torch.from_numpy(labels)].reshape(64, 256))
    spatial_stats = save_compressed(model, tmp_path / "spatial.mpz")
    flat = build_model("mlp:64", (256,), 3)
    flat.load_state_dict(model.state_dict())
    flat_stats = save_compressed(flat, tmp_path / "flat.mpz")  # the same weights without a picture to see
    spatial, flat_manifest = (read_manifest(tmp_path / name)[0] for name in ("spatial.mpz", "flat.mpz"))
    spatial_entry, flat_entry = (next(t for t in m["tensors"] if t["name"] == "net.1.weight") for m in (spatial, flat_manifest))
    assert spatial_entry["sparse"] == "spatial" and flat_entry.get("sparse", "relative") != "spatial"
    assert (tmp_path / "spatial.mpz").read_bytes()[8:10] == (5).to_bytes(2, "little")
    assert spatial_entry["length"] < 0.9 * flat_entry["length"]
    # the labels gain most (neighbouring values are alike); the reports share the one stream out exactly
    labels_info, positions_info = spatial_stats["net.1.weight"]["streams"]
    assert labels_info.nbytes < 0.8 * flat_stats["net.1.weight"]["streams"][0].nbytes
    assert labels_info.nbytes + positions_info.nbytes == spatial_entry["spatial"]["nbytes"]
    row = next(r for r in layer_rows(spatial) if r["layer"] == "net.1.weight")
    assert row["rate_pqh"] > next(r for r in layer_rows(flat_manifest) if r["layer"] == "net.1.weight")["rate_pqh"]
    loaded, _, _ = load_compressed(tmp_path / "spatial.mpz")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key]), key
    save_compressed(model, tmp_path / "plain.mpz", context_masks=False)
    assert (tmp_path / "plain.mpz").read_bytes()[8:10] == (1).to_bytes(2, "little")  # what older readers open


@pytest.fixture(scope="module")
def spatial_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spatial") / "s.mpz"
    model = build_model("mlp:24", (1, 10, 10), 3)
    with torch.no_grad():
        model.net[1].weight.copy_(torch.from_numpy(smooth_layer(24, 10, 10, seed=2, alphabet=6, keep=0.3)).float()
                                  .reshape(24, 100) / 4)
    save_compressed(model, path)
    assert next(t for t in read_manifest(path)[0]["tensors"] if t["name"] == "net.1.weight")["sparse"] == "spatial"
    return path


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_spatial_tensor_payloads_fail_cleanly(spatial_file, data, mutated_tensor_decodes_cleanly):
    mutated_tensor_decodes_cleanly(spatial_file, lambda t: t.get("sparse") == "spatial", data)


def test_broken_spatial_metadata_is_refused(spatial_file):
    manifest, payload = read_manifest(spatial_file)
    entry = next(t for t in manifest["tensors"] if t.get("sparse") == "spatial")
    blob = payload[entry["offset"] + entry["parts"][0] : entry["offset"] + entry["length"]]
    alphabet, shape = entry["centroids"], entry["shape"]
    assert decode_spatial_labels(entry, blob, shape, alphabet).shape == (24 * 100,)
    with pytest.raises(ModelFileError, match="does not fit shape"):
        decode_spatial_labels({**entry, "geometry": [1, 10, 11]}, blob, shape, alphabet)
    with pytest.raises(ModelFileError, match="geometry of 3 positive ints"):
        decode_spatial_labels({**entry, "geometry": [1, 100]}, blob, shape, alphabet)
    with pytest.raises(ModelFileError, match="fields are missing"):
        decode_spatial_labels({k: v for k, v in entry.items() if k != "spatial"}, blob, shape, alphabet)
    with pytest.raises(ModelFileError, match="bytes"):
        decode_spatial_labels(entry, blob[:-4], shape, alphabet)
    with pytest.raises(ModelFileError, match="codec"):
        decode_spatial_labels({**entry, "spatial": {**entry["spatial"], "codec": "zip"}}, blob, shape, alphabet)
    with pytest.raises(ModelFileError, match="out of range"):
        decode_spatial_labels(entry, blob, shape, 100_000)
    with pytest.raises(ModelFileError, match="out of range"):  # a crafted shape must not allocate gigabytes
        decode_spatial(entry["spatial"], blob, 1 << 20, [1, 64, 64], alphabet)
