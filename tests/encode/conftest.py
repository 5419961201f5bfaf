"""Shared by the container and mask tests: fuzzing one tensor's payload below the file's checksums."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from modelpress.core.errors import ModelFileError
from modelpress.encode import read_manifest


@pytest.fixture
def mutated_tensor_decodes_cleanly():
    """A check: flip 1-4 random bytes of the first tensor ``pick`` selects in a saved ``.mpz`` and decode it.

    The decoder must either raise ModelFileError or return a tensor of the recorded shape; anything else
    (another exception, a hang, a wrong shape) fails the test.
    """
    from modelpress.encode.container import _decode_tensor

    def check(path, pick, data) -> None:
        manifest, payload = read_manifest(path)
        entry = next(t for t in manifest["tensors"] if pick(t))
        blob = bytearray(payload[entry["offset"] : entry["offset"] + entry["length"]])
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        try:
            tensor = _decode_tensor(entry, bytes(blob))
        except ModelFileError:
            return
        assert tensor.shape == tuple(entry["shape"])

    return check
