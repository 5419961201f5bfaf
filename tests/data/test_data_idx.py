"""IDX reading and writing: round trips and every way a file can be damaged."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from modelpress.core.errors import ConfigError, DataError, DataNotFoundError
from modelpress.data.idx import read_idx, write_idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path, dtype, compress):
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a.idx", array, gzip=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable


def test_big_endian_on_disk(tmp_path):
    path = write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int32))
    assert path.read_bytes() == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 2])


def test_gzip_detected_by_content_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "compressed-without-suffix", array, gzip=True)
    write_idx(tmp_path / "raw-with-suffix.gz", array, gzip=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "compressed-without-suffix"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw-with-suffix.gz"), array)


def test_truncated_raw_file_names_file_and_byte_counts(tmp_path):
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[: 16 + 1200])
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "t10k-images-idx3-ubyte" in message and "truncated" in message
    assert "expected 7840 bytes" in message and "found 1200" in message


def test_truncated_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(5000, dtype=np.int32), gzip=True)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz is truncated"):
        read_idx(path)


def test_corrupt_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(1000, dtype=np.int32), gzip=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip bits in the middle of the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert "labels.gz" in str(info.value)
    assert "corrupt" in str(info.value) or "truncated" in str(info.value)


def test_bad_magic(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError, match=r"page\.html is not an IDX file: bad magic number 0x3c68746d"):
        read_idx(path)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "odd"
    path.write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 7]))
    with pytest.raises(DataError, match=r"unknown dtype code 0x0A"):
        read_idx(path)


def test_incomplete_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 5]))
    with pytest.raises(DataError, match=r"short is truncated: its header declares 3 dimensions and needs 16 bytes"):
        read_idx(path)


def test_shorter_than_magic(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


def test_trailing_garbage(tmp_path):
    path = write_idx(tmp_path / "extra", np.zeros(4, np.uint8))
    path.write_bytes(path.read_bytes() + b"junk")
    with pytest.raises(DataError, match=r"extra has 4 bytes of trailing garbage"):
        read_idx(path)


def test_trailing_garbage_inside_gzip(tmp_path):
    path = tmp_path / "extra.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3])))
    with pytest.raises(DataError, match="1 bytes of trailing garbage"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nothing-here")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ConfigError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    assert not (tmp_path / "x").exists()


def test_garbage_after_gzip_stream(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.zeros((2, 3), np.uint8), gzip=True)
    path.write_bytes(path.read_bytes() + b"garbage!")
    with pytest.raises(DataError, match=r"images\.gz has 8 bytes of trailing garbage after its gzip stream"):
        read_idx(path)


def test_multi_member_gzip_and_zero_padding(tmp_path):
    content = bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4])
    path = tmp_path / "members.gz"
    path.write_bytes(gzip.compress(content[:6]) + gzip.compress(content[6:]) + b"\0" * 16)
    np.testing.assert_array_equal(read_idx(path), [1, 2, 3, 4])
