import hashlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress.core.errors import ModelFileError
from modelpress.encode import load_compressed, read_manifest, save_compressed
from modelpress.encode.container import _HEADER
from modelpress.models import build_model
from modelpress.prune import PruneConfig, prune_
from modelpress.quantize import QuantizeConfig, finalize_, quantize_


def _compressed_model(arch="lenet300_100", shape=(1, 28, 28)):
    torch.manual_seed(0)
    model = build_model(arch, shape, 10)
    prune_(model, PruneConfig(criterion="global", sparsity=0.9))
    quantize_(model, QuantizeConfig(bits_fc=5, bits_conv=8))
    return model.eval()


@pytest.mark.parametrize("arch", ["lenet300_100", "lenet5"])
def test_loaded_model_is_bit_identical_and_the_file_is_small(arch, tmp_path):
    model = _compressed_model(arch)
    stats = save_compressed(model, tmp_path / "m.mpz")
    loaded, spec, _ = load_compressed(tmp_path / "m.mpz")
    finalize_(model)
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded_state[name]), name
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())
    assert (tmp_path / "m.mpz").stat().st_size * 15 < dense_bytes
    assert spec.arch == arch and any(s["kind"] == "shared" for s in stats.values())


def test_plain_models_round_trip_too(tmp_path):
    model = build_model("mlp:16", (4,), 3)
    save_compressed(model, tmp_path / "plain.mpz")
    loaded, _, _ = load_compressed(tmp_path / "plain.mpz")
    x = torch.randn(5, 4)
    assert torch.equal(model.eval()(x), loaded(x))


def test_float16_exact_tensors_take_half_the_bytes_and_load_back_bit_identical(tmp_path):
    from modelpress.encode import round_to_float16_
    from modelpress.encode.container import _decode_tensor

    model = _compressed_model()
    save_compressed(model, tmp_path / "fp32.mpz")
    round_to_float16_(model)
    shared = {name: m for name, m in model.named_modules() if hasattr(m, "weight_centroids")}
    for name, module in shared.items():
        assert torch.equal(module.weight_centroids, module.weight_centroids.half().float()), name
    save_compressed(model, tmp_path / "fp16.mpz", float16=True)
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    manifest, _ = read_manifest(tmp_path / "fp16.mpz")
    centroids = sum(e["centroids"] for e in manifest["tensors"] if e["kind"] == "shared")
    saved = (tmp_path / "fp32.mpz").stat().st_size - (tmp_path / "fp16.mpz").stat().st_size
    assert saved >= 2 * (biases + centroids) - 24  # 2 bytes a value, less a few for the longer manifest
    assert {e["dtype"] for e in manifest["tensors"] if e["kind"] == "raw"} == {"float16"}
    assert {e["centroid_dtype"] for e in manifest["tensors"] if e["kind"] == "shared"} == {"float16"}
    assert _HEADER.unpack_from((tmp_path / "fp16.mpz").read_bytes())[1] == 4  # older readers say "upgrade"
    loaded, _, _ = load_compressed(tmp_path / "fp16.mpz")
    finalize_(model)
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == loaded.state_dict()[name].dtype == torch.float32
        assert torch.equal(tensor, loaded.state_dict()[name]), name

    # a value float16 cannot hold stays float32; a bad restore type is refused
    plain = build_model("mlp:4", (3,), 2)
    with torch.no_grad():
        plain.net[1].bias.copy_(torch.tensor([0.1, 0.5, 1e-9, 70000.0]))
    save_compressed(plain, tmp_path / "plain.mpz", float16=True)
    dtypes = {e["name"]: e["dtype"] for e in read_manifest(tmp_path / "plain.mpz")[0]["tensors"]}
    assert dtypes["net.1.bias"] == "float32"
    entry = {"kind": "raw", "dtype": "float16", "restore": "int64", "shape": [1]}
    with pytest.raises(ModelFileError, match="cannot restore float16 values as 'int64'"):
        _decode_tensor(entry, b"\x00\x3c")
    shared = next(e for e in manifest["tensors"] if e["kind"] == "shared")
    with pytest.raises(ModelFileError, match="unknown centroid dtype 'float8'"):
        _decode_tensor({**shared, "centroid_dtype": "float8"}, b"")
    with pytest.raises(ModelFileError, match="part sizes do not add up"):  # float16 sizes read as float32
        _decode_tensor({**shared, "centroid_dtype": "float32"}, b"\0" * sum(shared["parts"]))


def test_truncated_corrupt_foreign_and_future_files_are_rejected(tmp_path):
    path = tmp_path / "m.mpz"
    save_compressed(_compressed_model(), path)
    data = path.read_bytes()
    cases = {
        "truncated.mpz": (data[:-100], "checksum"),
        "flipped.mpz": (data[:500] + bytes([data[500] ^ 1]) + data[501:], "checksum"),
        "foreign.mpz": (b"PK\x03\x04" + data[4:], "not a modelpress compressed model"),
        "empty.mpz": (b"", "not a modelpress compressed model"),
    }
    body = bytearray(data[:-32])
    body[8:10] = (99).to_bytes(2, "little")
    cases["future.mpz"] = (bytes(body) + hashlib.sha256(bytes(body)).digest(), "version 99")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match=message):
            load_compressed(tmp_path / name)


def _resign(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_fuzzed_files_fail_with_a_clear_error_never_a_crash(tmp_path, position, value, cut):
    path = tmp_path / "base.mpz"
    if not path.exists():
        save_compressed(_compressed_model("mlp:24", (1, 8, 8)), path)
    body = bytearray(path.read_bytes()[:-32])
    # damage the bytes *and* fix the checksum, so the decoder itself must cope
    body[position % len(body)] = value
    for damaged in (_resign(bytes(body)), _resign(bytes(body[: cut % len(body)]))):
        target = tmp_path / "fuzz.mpz"
        target.write_bytes(damaged)
        try:
            load_compressed(target)
        except ModelFileError:
            pass


def test_manifest_is_readable_without_decoding(tmp_path):
    save_compressed(_compressed_model(), tmp_path / "m.mpz", extra={"note": "x"})
    manifest, payload = read_manifest(tmp_path / "m.mpz")
    assert manifest["extra"] == {"note": "x"} and len(payload) == sum(t["length"] for t in manifest["tensors"])
    assert _HEADER.size == 16


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_tensor_payloads_reach_the_decoders_and_fail_cleanly(tmp_path, data, mutated_tensor_decodes_cleanly):
    """Below the CRC: mutate a shared tensor's bytes directly and call the decoders on them."""
    path = tmp_path / "base.mpz"
    if not path.exists():
        save_compressed(_compressed_model("mlp:24", (1, 8, 8)), path)
    mutated_tensor_decodes_cleanly(path, lambda t: t["kind"] == "shared", data)  # decodes to the shape, or refuses


def _per_channel_signs(rows=64, cols=256, zero_fraction=0.3, seed=0):
    """XNOR-style weights: row r holds only {-m_r, 0, +m_r}, a different m_r per row."""
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (rows, cols), generator=g) * 2.0 - 1
    signs[torch.rand(rows, cols, generator=g) < zero_fraction] = 0.0
    return (signs * torch.rand(rows, 1, generator=g) + 0.0).contiguous()  # + 0.0: no -0.0


def test_row_magnitudes_are_found_only_where_every_row_is_plus_minus_one_value():
    from modelpress.encode.container import row_magnitudes_and_labels

    w = torch.tensor([[0.5, -0.5, 0.0], [-2.0, -2.0, 2.0]])
    magnitudes, labels = row_magnitudes_and_labels(w)
    assert magnitudes.tolist() == [0.5, 2.0] and labels.tolist() == [2, 1, 0, 1, 1, 2]
    assert row_magnitudes_and_labels(torch.tensor([[0.5, -0.4], [1.0, 1.0]])) is None
    assert row_magnitudes_and_labels(torch.tensor([[float("nan"), 1.0]])) is None
    assert row_magnitudes_and_labels(torch.tensor([1.0, -1.0])) is None  # a bias has no rows


def test_per_channel_sign_weights_take_about_one_bit_and_a_version_2_file(tmp_path):
    model = build_model("mlp:256-64", (256,), 3)
    with torch.no_grad():
        model.net[3].weight.copy_(_per_channel_signs())
    stats = save_compressed(model, tmp_path / "rows.mpz")
    manifest, _ = read_manifest(tmp_path / "rows.mpz")
    entry = next(t for t in manifest["tensors"] if t["name"] == "net.3.weight")
    assert entry["codebook"] == "row_magnitudes" and entry["centroids"] == 64
    # 30% zeros, the rest +-: entropy 1.58 bits, + 32 bits per row of 256; a layer-wide codebook of 128
    # values would also need ~log2(64) bits per non-zero weight to say which row's magnitude it has
    assert 8 * stats["net.3.weight"]["bytes"] / (64 * 256) < 1.58 + 0.125 + 0.1
    assert (tmp_path / "rows.mpz").read_bytes()[8:10] == (2).to_bytes(2, "little")
    from modelpress.encode.report import layer_rows

    row = next(r for r in layer_rows(manifest) if r["layer"] == "net.3.weight")
    assert row["weight_bits_pq"] == 2  # three label values (0, -m, +m), not one per row's magnitude
    loaded, _, _ = load_compressed(tmp_path / "rows.mpz")
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor.view(torch.int32), loaded.state_dict()[key].view(torch.int32)), key
    save_compressed(_compressed_model("mlp:24", (64,)), tmp_path / "v1.mpz")
    assert (tmp_path / "v1.mpz").read_bytes()[8:10] == (1).to_bytes(2, "little")  # what older readers open


def test_broken_row_magnitude_entries_are_refused():
    from modelpress.encode.container import _row_magnitude_values

    magnitudes = np.array([1.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(_row_magnitude_values(magnitudes, np.array([2, 1, 0, 1]), [2, 2]), [1, -1, 0, -2])
    with pytest.raises(ModelFileError, match="past the codebook"):
        _row_magnitude_values(magnitudes, np.array([3, 0, 0, 0]), [2, 2])
    with pytest.raises(ModelFileError, match="do not fit shape"):
        _row_magnitude_values(magnitudes, np.array([1, 0, 0]), [3, 1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_row_magnitude_payloads_fail_cleanly(tmp_path, data, mutated_tensor_decodes_cleanly):
    path = tmp_path / "rows.mpz"
    if not path.exists():
        model = build_model("mlp:40-16", (1, 4, 6), 3)
        with torch.no_grad():
            model.net[3].weight.copy_(_per_channel_signs(16, 40))
        save_compressed(model, path)
    mutated_tensor_decodes_cleanly(path, lambda t: t.get("codebook") == "row_magnitudes", data)
