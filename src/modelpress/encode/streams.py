"""One integer stream coded with Huffman or ANS, whichever is smaller, and its manifest entry.

Shared by the relative-index layout (``container.py``) and the context-coded mask layout (``mask.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelpress.core.errors import ModelFileError
from modelpress.encode import ans, huffman


@dataclass
class StreamInfo:
    """What one coded stream cost: used by reports (bits per symbol beside the entropy)."""

    codec: str
    n_symbols: int
    nbytes: int
    entropy_bits: float
    huffman_bytes: int
    ans_bytes: int


def code_stream(symbols: np.ndarray, alphabet: int) -> tuple[dict, bytes, StreamInfo]:
    """Code one integer stream with Huffman and with ANS; keep the smaller."""
    h = huffman.encode(symbols, alphabet)
    a = ans.encode(symbols, alphabet)
    info = StreamInfo("huffman", int(symbols.size), h.nbytes(), huffman.entropy_bits(symbols, alphabet), h.nbytes(), a.nbytes())
    if a.nbytes() < h.nbytes():
        info.codec, info.nbytes = "ans", a.nbytes()
        blob = a.counts.astype("<u4").tobytes() + a.words.astype("<u4").tobytes()
        return {"codec": "ans", "alphabet": alphabet, "n": int(symbols.size), "words": int(a.words.size)}, blob, info
    blob = h.lengths.tobytes() + h.block_offsets.astype("<u4").tobytes() + h.data
    meta = {"codec": "huffman", "alphabet": alphabet, "n": int(symbols.size), "n_bits": h.n_bits, "block": h.block,
            "blocks": int(h.block_offsets.size), "data_bytes": len(h.data)}
    return meta, blob, info


def decode_stream(meta: dict, blob: bytes) -> np.ndarray:
    """Invert :func:`code_stream`; a damaged stream raises ModelFileError."""
    alphabet, n = int(meta["alphabet"]), int(meta["n"])
    if meta["codec"] == "ans":
        expected = 4 * (alphabet + int(meta["words"]))
        if len(blob) != expected:
            raise ModelFileError(f"ANS stream has {len(blob)} bytes, expected {expected}")
        counts = np.frombuffer(blob[: 4 * alphabet], dtype="<u4")
        return ans.decode(ans.AnsStream(counts, np.frombuffer(blob[4 * alphabet :], dtype="<u4"), n))
    if meta["codec"] != "huffman":
        raise ModelFileError(f"unknown codec {meta['codec']!r}")
    blocks, data_bytes = int(meta["blocks"]), int(meta["data_bytes"])
    if len(blob) != alphabet + 4 * blocks + data_bytes:
        raise ModelFileError("Huffman stream has the wrong number of bytes")
    lengths = np.frombuffer(blob[:alphabet], dtype=np.uint8)
    offsets = np.frombuffer(blob[alphabet : alphabet + 4 * blocks], dtype="<u4")
    stream = huffman.HuffmanStream(lengths, blob[alphabet + 4 * blocks :], int(meta["n_bits"]), n, int(meta["block"]), offsets)
    return huffman.decode(stream)
