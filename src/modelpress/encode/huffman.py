"""Canonical Huffman coding of small-alphabet integer streams, vectorised with NumPy.

Encoding builds the whole bit stream with array operations. Decoding is block-parallel: the encoder
records the bit offset at which every ``block``-th symbol starts (32 bits per 1024 symbols by default), and the decoder
advances all blocks together, one symbol per step, with a table lookup on a ``max_len``-bit window.
A step costs a handful of NumPy calls on arrays of ``n / block`` entries, so throughput is far above
a per-symbol Python loop (about 2 MB/s here).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from modelpress.core.errors import ConfigError, ModelFileError

MAX_CODE_LENGTH = 24  # the decoder reads windows from 4 bytes; 24 + 7 bit offset fits in 32 bits


def huffman_lengths(counts: np.ndarray, max_len: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths ``(alphabet,)`` for symbol ``counts``; 0 for unused symbols.

    If the optimal code is longer than ``max_len``, counts are flattened (halved, keeping every used
    symbol at least 1) until it fits: still a valid prefix code, at a tiny cost in size.
    """
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.shape[0], dtype=np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used] = 1  # a one-symbol alphabet still needs one bit per symbol to be decodable
        return lengths
    work = counts.copy()
    while True:
        heap = [(int(work[s]), i, [int(s)]) for i, s in enumerate(used)]
        heapq.heapify(heap)
        depth = dict.fromkeys(used.tolist(), 0)
        tie = len(heap)
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            for s in s1 + s2:
                depth[s] += 1
            heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
            tie += 1
        lengths[used] = [depth[s] for s in used.tolist()]
        if lengths.max() <= max_len:
            return lengths
        work[used] = np.maximum(work[used] // 2, 1)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values ``(alphabet,)``: symbols sorted by (length, symbol) get consecutive codes."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.shape[0], dtype=np.int64)
    order = np.lexsort((np.arange(lengths.shape[0]), lengths))
    order = order[lengths[order] > 0]
    code, previous = 0, int(lengths[order[0]]) if order.size else 0
    for i, symbol in enumerate(order.tolist()):
        length = int(lengths[symbol])
        if i:
            code = (code + 1) << (length - previous)
        codes[symbol] = code
        previous = length
    return codes


@dataclass(frozen=True)
class HuffmanStream:
    """An encoded stream: code lengths (the code book), packed bits and block start offsets."""

    lengths: np.ndarray  # (alphabet,) uint8
    data: bytes
    n_bits: int
    n_symbols: int
    block: int
    block_offsets: np.ndarray  # (ceil(n/block),) uint32 bit offset of each block's first symbol

    def nbytes(self) -> int:
        """Bytes this stream occupies in a file (code book, bits and block index)."""
        return self.lengths.nbytes + len(self.data) + self.block_offsets.nbytes


def encode(symbols: np.ndarray, alphabet: int, *, block: int = 1024) -> HuffmanStream:
    """Huffman-code ``symbols`` ``(n,)`` with values in ``[0, alphabet)``."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
        raise ConfigError(f"symbols must lie in [0, {alphabet}); got range [{symbols.min()}, {symbols.max()}]")
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet))
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols]  # (n,)
    starts = np.cumsum(sym_len) - sym_len  # bit offset of each symbol
    n_bits = int(sym_len.sum())
    # Place each code left-aligned in a 64-bit value spanning 32-bit words w and w+1; code bit ranges
    # never overlap, so adding the halves into the words is the same as OR-ing the bits in.
    word = starts >> 5
    value = codes[symbols].astype(np.uint64) << (64 - sym_len - (starts & 31)).astype(np.uint64)
    words = np.zeros((n_bits >> 5) + 2, dtype=np.uint64)
    np.add.at(words, word, value >> np.uint64(32))
    np.add.at(words, word + 1, value & np.uint64(0xFFFFFFFF))
    data = words.astype(">u4").tobytes()[: (n_bits + 7) // 8]
    return HuffmanStream(lengths.astype(np.uint8), data, n_bits, int(symbols.size), block,
                         starts[::block].astype(np.uint32))


def decode(stream: HuffmanStream) -> np.ndarray:
    """Decode a :class:`HuffmanStream` back to ``(n_symbols,)`` int64.

    Raises:
        ModelFileError: the stream is inconsistent (bad code book, offsets or bit count): never an
            IndexError from deep inside.
    """
    lengths = np.asarray(stream.lengths, dtype=np.int64)
    n, block = stream.n_symbols, stream.block
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    max_len = int(lengths.max()) if lengths.size else 0
    used = lengths[lengths > 0]
    if not 1 <= max_len <= MAX_CODE_LENGTH or float(np.sum(2.0 ** -used)) > 1.0 + 1e-12:
        raise ModelFileError("corrupt Huffman code book (lengths violate the Kraft inequality)")
    offsets = np.asarray(stream.block_offsets, dtype=np.int64)
    if block < 1 or offsets.shape[0] != -(-n // block) or stream.n_bits > 8 * len(stream.data):
        raise ModelFileError("corrupt Huffman stream header (block index or bit count)")
    if offsets.size and (offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] >= max(stream.n_bits, 1)):
        raise ModelFileError("corrupt Huffman block index")
    table_sym, table_len = _decode_table(lengths, canonical_codes(lengths), max_len)
    data = np.frombuffer(stream.data + b"\0\0\0\0", dtype=np.uint8)
    out = np.empty(n, dtype=np.int64)
    pos = offsets.copy()  # (blocks,) current bit position of each block
    count = np.minimum(block, n - np.arange(offsets.shape[0]) * block)  # symbols in each block
    base = np.arange(offsets.shape[0]) * block
    for step in range(min(block, n)):
        active = count > step
        p = pos[active]
        if p.size and p.max() + 1 > stream.n_bits:
            raise ModelFileError("Huffman stream ends before all symbols are decoded")
        byte = p >> 3
        word = (data[byte].astype(np.int64) << 24) | (data[byte + 1].astype(np.int64) << 16) \
            | (data[byte + 2].astype(np.int64) << 8) | data[byte + 3].astype(np.int64)  # (active,) 32 bits
        window = (word >> (32 - max_len - (p & 7))) & ((1 << max_len) - 1)
        symbols, sizes = table_sym[window], table_len[window]
        if np.any(sizes == 0):
            raise ModelFileError("Huffman stream holds a bit pattern that is no code word")
        out[base[active] + step] = symbols
        pos[active] = p + sizes
    if pos.size and int(pos[count.shape[0] - 1]) != stream.n_bits:
        raise ModelFileError("Huffman stream length does not match its symbol count")
    return out


def _decode_table(lengths: np.ndarray, codes: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For every ``max_len``-bit window: the symbol whose code is its prefix, and that code's length."""
    table_sym = np.zeros(1 << max_len, dtype=np.int64)
    table_len = np.zeros(1 << max_len, dtype=np.int64)
    for symbol in np.flatnonzero(lengths).tolist():
        shift = max_len - int(lengths[symbol])
        lo = int(codes[symbol]) << shift
        table_sym[lo : lo + (1 << shift)] = symbol
        table_len[lo : lo + (1 << shift)] = lengths[symbol]
    return table_sym, table_len


def entropy_bits(symbols: np.ndarray, alphabet: int) -> float:
    """Empirical entropy in bits per symbol: the floor for any symbol-by-symbol code."""
    counts = np.bincount(np.asarray(symbols, dtype=np.int64).ravel(), minlength=alphabet).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) if p.size else 0.0
