"""Shared weights coded with spatial context (beyond the paper): the ``"sparse": "spatial"`` layout.

A convolution's kernels and the first layer of an MLP on images are small images themselves: a
weight's neighbours in the kernel (or in the input picture) tell a lot about it. Pruning keeps
blobs, not salt and pepper, and neighbouring weights of one unit tend to share their sign and size.
Relative indices and the row x column mask (``mask.py``) code every position and label on its own;
here both are coded with ANS in one pass over the ``(H, W)`` positions of the weight viewed as
``(rows, planes, H, W)``, each position for all rows and planes at once:

- kept or not: the row x column probability of ``mask.py`` (the same side information), refined
  by counts learnt as the pass goes, per (octave of that probability, pattern of the four causal
  neighbours left / up-left / up / up-right that are kept);
- the label of a kept weight: counts learnt as the pass goes, per (left, up) neighbour, each
  reduced to pruned or one of ``LABEL_GROUPS`` ranges of the sorted codebook, smoothed towards the
  labels seen so far in the layer.

Nothing but the row and column counts is stored beside the ANS words: the decoder learns the same
counts in the same order. Every probability comes from integers (the mask's in 16-bit fixed point,
the labels' as exact ratios of integers below 2^53), so both sides derive bit-identical models.

On LeNet-300-100's first layer (Fashion-MNIST, 8% kept, 6 bits) this takes 1,134 bytes (4.9%) off
the mask layout's 23,051 (``benchmarks/deep_compression.py``).

Blob layout: ``counts (mask.encode_counts) | ANS words (u32)``.
"""

from __future__ import annotations

import math

import numpy as np

from modelpress.core.errors import ModelFileError
from modelpress.encode.mask import _ONE, counts_nbytes, decode_counts, encode_counts, row_column_prior
from modelpress.encode.streams import StreamInfo

CODEC = "spatial"
LABEL_GROUPS = 6
MAX_ALPHABET = 256  # larger codebooks: the per-context count tables would outgrow what they save
MAX_CELLS = 1 << 24  # the model holds a few int64 arrays of the weight's size: ~0.7 GB at this limit
_PRIOR = 8  # weight of the prior (row x column probability; the layer's labels) against a context's counts
_PATTERNS = 16  # kept-or-not of the four causal neighbours
_OCTAVES = 17  # bit lengths of the fixed-point row x column probability, 1..16


def geometry_for(shape: tuple[int, ...] | list[int], input_shape: tuple[int, ...] | list[int] | None) -> list[int] | None:
    """``[planes, H, W]`` of a weight's fan-in, or None where it has no picture to exploit.

    A convolution ``(O, I, kh, kw)`` has ``[I, kh, kw]``; a 2-D weight whose fan-in is the model's
    whole image input ``(C, H, W)`` (an MLP's first layer) has ``[C, H, W]``.
    """
    shape = [int(d) for d in shape]
    if len(shape) == 4 and shape[2] * shape[3] > 1:
        return shape[1:]
    if len(shape) == 2 and input_shape is not None and len(input_shape) == 3 and min(input_shape[1:]) > 1 \
            and math.prod(input_shape) == shape[1]:
        return [int(d) for d in input_shape]
    return None


class _Model:
    """The adaptive context model, stepped through the positions in the same order by both sides."""

    def __init__(self, row_counts: np.ndarray, col_counts: np.ndarray, geometry: list[int], alphabet: int):
        planes, height, width = geometry
        self.rows, self.planes, self.height, self.width, self.alphabet = row_counts.size, planes, height, width, alphabet
        prior, live = row_column_prior(row_counts, col_counts)  # (R, cols) each
        self.prior = prior.reshape(self.rows, planes, height, width)
        self.live = live.reshape(self.rows, planes, height, width)
        self.octave = np.frexp(self.prior.astype(np.float64))[1].astype(np.int64)  # exact: integers below 2^16
        self.ones = np.zeros((_OCTAVES, _PATTERNS), dtype=np.int64)
        self.zeros = np.zeros((_OCTAVES, _PATTERNS), dtype=np.int64)
        self.label_counts = np.zeros(((LABEL_GROUPS + 1) ** 2, alphabet), dtype=np.int64)
        self.layer_counts = np.ones(alphabet, dtype=np.int64)
        self.kept = np.zeros((self.rows, planes, height, width), dtype=bool)
        self.labels = np.zeros((self.rows, planes, height, width), dtype=np.int64)  # 0 = pruned, else 1 + symbol

    def positions(self):
        return ((y, x) for y in range(self.height) for x in range(self.width))

    def _neighbour(self, grid: np.ndarray, y: int, x: int) -> np.ndarray:
        if 0 <= y < self.height and 0 <= x < self.width:
            return grid[:, :, y, x].ravel()
        return np.zeros(self.rows * self.planes, dtype=grid.dtype)

    def mask_step(self, y: int, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Live cells at ``(y, x)`` (flat over rows x planes) and their fixed-point probabilities of being kept."""
        live = np.flatnonzero(self.live[:, :, y, x].ravel())
        pattern = sum(self._neighbour(self.kept, y + dy, x + dx)[live].astype(np.int64) << bit
                      for bit, (dy, dx) in enumerate(((0, -1), (-1, -1), (-1, 0), (-1, 1))))
        octave = self.octave[:, :, y, x].ravel()[live]
        ones, zeros = self.ones[octave, pattern], self.zeros[octave, pattern]
        prior = self.prior[:, :, y, x].ravel()[live]
        fixed = np.clip((ones * _ONE + _PRIOR * prior) // (ones + zeros + _PRIOR), 1, _ONE - 1)
        return live, fixed, octave, pattern

    def learn_mask(self, y: int, x: int, live: np.ndarray, bits: np.ndarray, octave: np.ndarray, pattern: np.ndarray) -> None:
        self.kept[live // self.planes, live % self.planes, y, x] = bits
        np.add.at(self.ones, (octave[bits], pattern[bits]), 1)
        np.add.at(self.zeros, (octave[~bits], pattern[~bits]), 1)

    def label_step(self, y: int, x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept cells at ``(y, x)``, their contexts and their label probabilities ``(n, alphabet)``."""
        cells = np.flatnonzero(self.kept[:, :, y, x].ravel())
        groups = [np.where(label > 0, 1 + (label - 1) * LABEL_GROUPS // self.alphabet, 0)
                  for label in (self._neighbour(self.labels, y, x - 1)[cells], self._neighbour(self.labels, y - 1, x)[cells])]
        context = groups[0] * (LABEL_GROUPS + 1) + groups[1]
        weights = self.label_counts[context] * int(self.layer_counts.sum()) + _PRIOR * self.layer_counts[None, :]
        return cells, context, weights.astype(np.float64) / weights.sum(1, keepdims=True)

    def learn_labels(self, y: int, x: int, cells: np.ndarray, context: np.ndarray, symbols: np.ndarray) -> None:
        self.labels[cells // self.planes, cells % self.planes, y, x] = symbols + 1
        np.add.at(self.label_counts, (context, symbols), 1)
        np.add.at(self.layer_counts, symbols, 1)


def encode_spatial(labels: np.ndarray, rows: int, geometry: list[int], alphabet: int) -> tuple[dict, bytes, float, float] | None:
    """Code a label array ``(numel,)`` (0 = pruned, ``1..alphabet`` = codebook entry) of a weight
    ``(rows, planes, H, W)``.

    Returns:
        ``(fields, blob, mask_bits, label_bits)``: manifest fields, the bytes, and the ideal code
        lengths in bits of the positions and of the labels under the model (counts excluded); None
        where the layout does not apply (shape, size beyond MAX_CELLS, alphabet, or counts beyond the
        fixed-point model).
    """
    import constriction

    planes, height, width = geometry
    if not 1 <= alphabet <= MAX_ALPHABET or rows < 1 or labels.size != rows * planes * height * width \
            or labels.size > MAX_CELLS:
        return None
    grid = np.asarray(labels, dtype=np.int64).reshape(rows, planes, height, width)
    kept = grid > 0
    counted = encode_counts(kept.reshape(rows, -1))
    if counted is None:
        return None
    row_counts, col_counts, count_fields, count_blob = counted
    model = _Model(row_counts, col_counts, geometry, alphabet)
    chunks, mask_bits, label_bits = [], 0.0, 0.0  # (model, symbols, probabilities) in decoding order
    bernoulli, categorical = constriction.stream.model.Bernoulli(perfect=False), constriction.stream.model.Categorical(perfect=False)
    for y, x in model.positions():
        live, fixed, octave, pattern = model.mask_step(y, x)
        bits = kept[:, :, y, x].ravel()[live]
        if live.size:
            p = fixed.astype(np.float64) / _ONE
            chunks.append((bernoulli, bits.astype(np.int32), p))
            mask_bits -= float(np.log2(p[bits]).sum() + np.log2(1 - p[~bits]).sum())
        model.learn_mask(y, x, live, bits, octave, pattern)
        cells, context, probabilities = model.label_step(y, x)
        symbols = grid[:, :, y, x].ravel()[cells] - 1
        if cells.size and alphabet > 1:  # a one-entry codebook: every kept weight's label is known
            chunks.append((categorical, symbols.astype(np.int32), probabilities))
            label_bits -= float(np.log2(probabilities[np.arange(cells.size), symbols]).sum())
        model.learn_labels(y, x, cells, context, symbols)
    coder = constriction.stream.stack.AnsCoder()
    for kind, symbols, probabilities in reversed(chunks):  # a stack: the last chunk in is the first out
        coder.encode_reverse(symbols, kind, probabilities)
    words = coder.get_compressed().astype("<u4")
    blob = count_blob + words.tobytes()
    return {"codec": CODEC, **count_fields, "words": int(words.size)}, blob, mask_bits, label_bits


def decode_spatial(fields: dict, blob: bytes, rows: int, geometry: list[int], alphabet: int) -> np.ndarray:
    """Invert :func:`encode_spatial`: labels ``(numel,)`` int64, 0 where pruned.

    Raises:
        ModelFileError: sizes that do not add up, counts that do not fit the shape, an undecodable
            stream, or a decoded mask whose row and column counts differ from the stored ones.
    """
    import constriction

    if fields.get("codec") != CODEC:
        raise ModelFileError(f"unknown spatial codec {fields.get('codec')!r}")
    planes, height, width = (int(d) for d in geometry)
    if not 1 <= alphabet <= MAX_ALPHABET or min(rows, planes, height, width) < 1 \
            or rows * planes * height * width > MAX_CELLS:
        raise ModelFileError(f"spatial layout with geometry {list(geometry)} and {alphabet} labels is out of range")
    count_bytes, words = counts_nbytes(fields), int(fields["words"])
    if words < 0 or count_bytes + 4 * words != len(blob):
        raise ModelFileError(f"spatial stream has {len(blob)} bytes, its parts need {count_bytes + 4 * max(words, 0)}")
    row_counts, col_counts = decode_counts(fields, blob[:count_bytes], rows, planes * height * width)
    model = _Model(row_counts, col_counts, [planes, height, width], alphabet)
    bernoulli, categorical = constriction.stream.model.Bernoulli(perfect=False), constriction.stream.model.Categorical(perfect=False)
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(blob[count_bytes:], dtype="<u4").astype(np.uint32))
        for y, x in model.positions():
            live, fixed, octave, pattern = model.mask_step(y, x)
            bits = (coder.decode(bernoulli, fixed.astype(np.float64) / _ONE) != 0) if live.size else np.zeros(0, dtype=bool)
            model.learn_mask(y, x, live, bits, octave, pattern)
            cells, context, probabilities = model.label_step(y, x)
            symbols = (coder.decode(categorical, probabilities).astype(np.int64) if cells.size and alphabet > 1
                       else np.zeros(cells.size, dtype=np.int64))
            if symbols.size and (symbols.min() < 0 or symbols.max() >= alphabet):
                raise ModelFileError("a decoded label is out of range")
            model.learn_labels(y, x, cells, context, symbols)
    except ModelFileError:
        raise
    except Exception as err:  # the Rust decoder reports damage with several exception types
        raise ModelFileError(f"corrupt spatial stream: {err}") from None
    kept = model.kept.reshape(rows, -1)
    if not (np.array_equal(kept.sum(1), row_counts) and np.array_equal(kept.sum(0), col_counts)):
        raise ModelFileError("corrupt spatial stream: decoded positions disagree with the stored counts")
    return model.labels.ravel()


def encode_spatial_labels(labels: np.ndarray, rows: int, geometry: list[int], alphabet: int, label_info: StreamInfo,
                          position_info: StreamInfo) -> tuple[dict, bytes, list[StreamInfo]] | None:
    """The spatial layout of a label array ``(numel,)`` (0 = pruned, ``1..alphabet``): manifest fields,
    the blob, and what the labels and the positions cost (the ANS words shared out by their ideal
    code lengths; the counts go to the positions). ``label_info`` / ``position_info`` describe the
    other layouts' streams, so reports can put their Huffman / ANS sizes beside. None where the
    layout does not apply."""
    coded = encode_spatial(labels, rows, geometry, alphabet)
    if coded is None:
        return None
    fields, blob, mask_bits, label_bits = coded
    words_bytes = 4 * fields["words"]
    label_bytes = round(words_bytes * label_bits / max(mask_bits + label_bits, 1e-9))
    kept = int((labels > 0).sum())
    infos = [StreamInfo(CODEC, kept, label_bytes, label_bits / max(kept, 1), label_info.huffman_bytes, label_info.ans_bytes),
             StreamInfo(CODEC, position_info.n_symbols, len(blob) - label_bytes, mask_bits / max(position_info.n_symbols, 1),
                        position_info.huffman_bytes, position_info.ans_bytes)]
    meta = {"sparse": CODEC, "geometry": list(geometry),
            "spatial": {**fields, "label_bytes": label_bytes, "nbytes": len(blob)}}
    return meta, blob, infos


def decode_spatial_labels(entry: dict, blob: bytes, shape: list[int], alphabet: int) -> np.ndarray:
    """Invert :func:`encode_spatial_labels` for a tensor of ``shape``: labels ``(numel,)`` int64."""
    geometry = entry.get("geometry")
    if not (isinstance(geometry, list) and len(geometry) == 3 and all(isinstance(d, int) and d > 0 for d in geometry)):
        raise ModelFileError(f"the spatial layout needs a geometry of 3 positive ints; got {geometry!r}")
    rows = shape[0] if shape else 0
    if len(shape) < 2 or rows < 1 or math.prod(shape) != rows * math.prod(geometry):
        raise ModelFileError(f"geometry {geometry} does not fit shape {shape}")
    if not isinstance(entry.get("spatial"), dict):
        raise ModelFileError("the spatial layout's fields are missing")
    return decode_spatial(entry["spatial"], blob, rows, geometry, alphabet)
