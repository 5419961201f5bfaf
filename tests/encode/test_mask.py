"""The context-coded sparsity mask (version-3 layout): round trips, size, fuzzing, compatibility."""

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress.core.errors import ModelFileError
from modelpress.encode import ans, load_compressed, read_manifest, save_compressed, to_relative
from modelpress.encode.mask import _gamma_join, _gamma_split, decode_mask, encode_mask
from modelpress.models import build_model


def structured_mask(rows, cols, seed=0, dead_cols=0.2, density=0.1):
    """Pruned-layer-like mask: dead input columns, columns and rows of different density."""
    rng = np.random.default_rng(seed)
    col_p = rng.gamma(1.0, density, cols) * (rng.random(cols) > dead_cols)
    row_p = rng.gamma(2.0, 0.5, rows)
    return rng.random((rows, cols)) < np.clip(np.outer(row_p, col_p), 0, 1)


def deterministic_model(mask, input_shape=(1, 28, 28)):
    """lenet300_100 with integer-pattern weights (no RNG): 8 shared values where ``mask`` keeps.

    Its labels follow each other along a row, which the spatial layout (version 5) would exploit on
    an image input; a flat ``input_shape`` leaves the layouts this module tests."""
    model = build_model("lenet300_100", input_shape, 10)
    with torch.no_grad():
        for i, (_name, p) in enumerate(sorted(model.named_parameters())):
            idx = torch.arange(p.numel()).reshape(p.shape)
            p.copy_(((idx * 7919 + i * 104729) % 8 - 3.5) / 8)
        model.net[1].weight.mul_(torch.from_numpy(mask))
        model.net[3].weight.mul_(torch.from_numpy(structured_mask(100, 300, seed=1)))
        model.net[5].weight.mul_((torch.arange(1000).reshape(10, 100) % 3 == 0).float())
    return model


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 12), st.integers(0, 40), st.floats(0, 1), st.integers(0, 2**31))
def test_any_mask_round_trips(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < density
    if rows and cols and seed % 3 == 0:
        mask[:, rng.integers(0, cols)] = False  # a dead column
        mask[rng.integers(0, rows)] = True  # a full row
    meta, blob, _ = encode_mask(mask)
    assert meta["nbytes"] == len(blob)
    assert np.array_equal(decode_mask(meta, blob, rows, cols), mask)


def test_count_side_information_round_trips_with_powers_of_two_and_zero():
    values = np.array([0, 1, 2, 3, 4, 7, 8, 255, 256, 300, 784, 65535, 2**32])
    classes, mantissa = _gamma_split(values)
    assert classes.tolist()[:6] == [0, 1, 2, 2, 3, 3]
    assert np.array_equal(_gamma_join(classes, mantissa.tobytes()), values)


def test_a_pruned_layer_mask_costs_less_than_relative_indices_and_about_its_model_bits():
    mask = structured_mask(300, 784)
    meta, blob, model_bits = encode_mask(mask)
    gaps, _ = to_relative(mask.ravel().astype(np.int64), 5)
    gap_bytes = ans.encode(gaps.astype(np.int64), 32).nbytes()
    assert len(blob) < 0.9 * gap_bytes
    # the mask bits land within a few words of their ideal code length; the rest is the row/column counts
    assert model_bits / 8 < 4 * meta["words"] + 8 and len(blob) - 4 * meta["words"] < 0.15 * len(blob)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzzed_mask_streams_fail_cleanly(data):
    mask = structured_mask(12, 30, seed=3, density=0.3)
    meta, blob, _ = encode_mask(mask)
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        out = decode_mask(meta, bytes(blob), 12, 30)
    except ModelFileError:
        return
    # a mutation that still decodes came out of the decoder's count checks: a boolean mask of the shape
    assert out.shape == (12, 30) and out.dtype == bool


def test_broken_mask_metadata_is_refused():
    meta, blob, _ = encode_mask(structured_mask(6, 20, seed=2, density=0.4))
    with pytest.raises(ModelFileError, match="bytes"):
        decode_mask(meta, blob[:-4], 6, 20)
    with pytest.raises(ModelFileError, match="codec"):
        decode_mask({**meta, "codec": "gzip"}, blob, 6, 20)
    with pytest.raises(ModelFileError):
        decode_mask(meta, blob, 20, 6)  # counts that do not fit the shape


def test_files_use_the_mask_where_smaller_as_version_3_and_load_bit_identically(tmp_path):
    model = deterministic_model(structured_mask(300, 784), input_shape=(784,))
    stats = save_compressed(model, tmp_path / "ctx.mpz")
    save_compressed(model, tmp_path / "rel.mpz", context_masks=False)
    ctx, rel = (tmp_path / "ctx.mpz").read_bytes(), (tmp_path / "rel.mpz").read_bytes()
    assert ctx[8:10] == (3).to_bytes(2, "little") and rel[8:10] == (1).to_bytes(2, "little")
    assert len(ctx) < 0.95 * len(rel)
    manifest, _ = read_manifest(tmp_path / "ctx.mpz")
    first = next(t for t in manifest["tensors"] if t["name"] == "net.1.weight")
    assert first["sparse"] == "mask" and "gaps" not in first
    assert stats["net.1.weight"]["streams"][1].codec == "context_mask"
    for path in ("ctx.mpz", "rel.mpz"):
        loaded, _, _ = load_compressed(tmp_path / path)
        for key, tensor in model.state_dict().items():
            assert torch.equal(tensor, loaded.state_dict()[key]), (path, key)
    # the per-layer table reads the mask layout from the manifest alone: fewer index bits per entry
    from modelpress.encode.report import layer_rows

    rel_manifest, _ = read_manifest(tmp_path / "rel.mpz")
    ctx_row, rel_row = (next(r for r in layer_rows(m) if r["layer"] == "net.1.weight") for m in (manifest, rel_manifest))
    assert ctx_row["index_bits_pqh"] < 0.9 * rel_row["index_bits_pqh"] and ctx_row["rate_pqh"] > rel_row["rate_pqh"]
    assert ctx_row["rate_pq"] == rel_row["rate_pq"]  # Han's P+Q figure does not depend on the coding


def test_without_the_mask_layout_files_are_byte_identical_to_version_1():
    # the SHA-256 of this file as the writer made it before the mask layout existed
    model = deterministic_model(structured_mask(300, 784))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        save_compressed(model, Path(tmp) / "v1.mpz", context_masks=False)
        digest = hashlib.sha256((Path(tmp) / "v1.mpz").read_bytes()).hexdigest()
    assert digest == GOLDEN_V1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_mask_layout_tensor_payloads_fail_cleanly(tmp_path, data, mutated_tensor_decodes_cleanly):
    """Below the CRC: mutate a mask-layout tensor's bytes and call the tensor decoder on them."""
    path = tmp_path / "ctx.mpz"
    if not path.exists():
        model = build_model("mlp:60-16", (100,), 3)
        with torch.no_grad():
            w = model.net[1].weight
            w.copy_(torch.round(w * 8) / 8 * torch.from_numpy(structured_mask(60, 100, seed=5, dead_cols=0.5, density=0.5)))
        save_compressed(model, path)
    mutated_tensor_decodes_cleanly(path, lambda t: t.get("sparse") == "mask", data)


def test_a_labels_count_that_disagrees_with_the_mask_is_refused_before_decoding():
    from modelpress.encode.mask import decode_masked_labels, encode_masked_labels

    from modelpress.encode.streams import StreamInfo

    mask = structured_mask(20, 30, seed=4, density=0.2)
    labels = np.where(mask.ravel(), 1 + np.arange(mask.size) % 3, 0)

    meta, (label_blob, mask_blob), _ = encode_masked_labels(labels, 20, 4, int(mask.sum()), StreamInfo("ans", 0, 0, 0.0, 0, 0))
    np.testing.assert_array_equal(decode_masked_labels(meta, label_blob, mask_blob, [20, 30]), labels)
    meta["labels"]["n"] = 30_000_000  # a crafted manifest must not make the decoder produce 30M symbols
    with pytest.raises(ModelFileError, match="claims 30000000 symbols"):
        decode_masked_labels(meta, label_blob, mask_blob, [20, 30])


GOLDEN_V1 = "c5bb291ef8559862063a254e44870c19455bea9875f94b87a71998a8ff52dc74"
