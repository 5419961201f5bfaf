"""A sparsity mask coded with a row x column context model (beyond the paper).

Relative indices (``sparse.py``) code where the kept weights are as gaps, one symbol per kept weight
with a single distribution for all of them, so they cannot see that whole input pixels of
LeNet-300-100's first layer are dead, or that some units keep far more weights than others. Here the
mask of a weight viewed as ``(rows, cols)`` (output units x fan-in) is coded bit by bit with ANS, each
bit with its own probability from an independence model of its row and column::

    p(r, c) = k_r * k_c / K        (k_r, k_c: kept weights in row r / column c; K: all kept)

Bits in a row or column with nothing kept are known zeros and cost nothing. The side information
is the row and column counts, each coded Elias-gamma style: its bit length with ANS, the bits below
the leading one raw. The probabilities are computed in integers (16-bit fixed point) so that
encoder and decoder derive bit-identical models on any machine; no floating-point maths the decoder
would have to repeat exactly.

Blob layout: ``class counts (u32 x classes) | class words (u32) | mantissa bytes | mask words (u32)``
(the first three: :func:`encode_counts`, shared with ``spatial.py``).
"""

from __future__ import annotations

import numpy as np

from modelpress.core.errors import ModelFileError
from modelpress.encode import ans
from modelpress.encode.streams import StreamInfo, code_stream, decode_stream

CODEC = "context_mask"
_ONE = 1 << 16  # fixed point of the probabilities
_MAX_PRODUCT = 1 << 46  # k_r * k_c * 2^16 must stay inside int64


def row_column_prior(row_counts: np.ndarray, col_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The independence model ``k_r * k_c / K`` over a ``(rows, cols)`` mask: each cell's probability of
    being kept in 16-bit fixed point ``(rows, cols)`` int64 in ``[1, 2^16 - 1]``, and which cells are
    live ``(rows, cols)`` bool (their row and column keep something; the others are known zeros)."""
    product = row_counts[:, None].astype(np.int64) * col_counts[None, :].astype(np.int64)
    return np.clip((product * _ONE) // max(int(row_counts.sum()), 1), 1, _ONE - 1), product > 0


def _probabilities(row_counts: np.ndarray, col_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The live cells ``(n,)`` (flat indices) and their float64 probabilities of being kept, exactly
    representable (multiples of 2^-16 in [2^-16, 1 - 2^-16])."""
    fixed, live = row_column_prior(row_counts, col_counts)
    cells = np.flatnonzero(live)
    return cells, fixed.ravel()[cells].astype(np.float64) / _ONE


def _gamma_split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elias-gamma parts of non-negative ints ``(n,)``: bit length ``(n,)`` and the packed bits below
    each leading one (most significant first)."""
    classes = np.frexp(values.astype(np.float64))[1].astype(np.int64)  # exact bit length below 2^53; 0 for 0
    widths = np.maximum(classes - 1, 0)
    owner = np.repeat(np.arange(values.size), widths)
    shift = np.repeat(np.cumsum(widths), widths) - 1 - np.arange(owner.size)  # MSB first within each value
    bits = (values[owner] >> shift) & 1
    return classes, np.packbits(bits.astype(np.uint8))


def _gamma_join(classes: np.ndarray, mantissa: bytes) -> np.ndarray:
    """Invert :func:`_gamma_split`."""
    widths = np.maximum(classes - 1, 0)
    n_bits = int(widths.sum())
    if len(mantissa) != (n_bits + 7) // 8:
        raise ModelFileError(f"count mantissas have {len(mantissa)} bytes, expected {(n_bits + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(mantissa, dtype=np.uint8))[:n_bits].astype(np.int64)
    owner = np.repeat(np.arange(classes.size), widths)
    shift = np.repeat(np.cumsum(widths), widths) - 1 - np.arange(n_bits)
    values = np.zeros(classes.size, dtype=np.int64)
    np.add.at(values, owner, bits << shift)
    lead = np.where(classes > 0, np.left_shift(1, np.maximum(classes - 1, 0)), 0)
    return values + lead


def encode_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict, bytes] | None:
    """The side information of the row x column model of a boolean ``(rows, cols)`` mask: its kept
    counts per row ``(rows,)`` and per column ``(cols,)`` (int64), coded Elias-gamma style; manifest
    fields and ``class counts (u32 x classes) | class words (u32) | mantissa bytes``. None when the
    counts are too large for the fixed-point model (a row's count times a column's reaching 2^46)."""
    row_counts, col_counts = mask.sum(1).astype(np.int64), mask.sum(0).astype(np.int64)
    if int(row_counts.max(initial=0)) * int(col_counts.max(initial=0)) >= _MAX_PRODUCT:
        return None
    classes, mantissa = _gamma_split(np.concatenate([row_counts, col_counts]))
    class_stream = ans.encode(classes, max(2, int(classes.max(initial=0)) + 1))
    blob = class_stream.counts.astype("<u4").tobytes() + class_stream.words.astype("<u4").tobytes() + mantissa.tobytes()
    fields = {"classes": int(class_stream.counts.size), "class_words": int(class_stream.words.size),
              "mantissa_bytes": int(mantissa.size)}
    return row_counts, col_counts, fields, blob


def counts_nbytes(fields: dict) -> int:
    """Bytes of the count blob :func:`encode_counts` described with ``fields`` (untrusted: checked)."""
    n_classes, class_words, mantissa_bytes = int(fields["classes"]), int(fields["class_words"]), int(fields["mantissa_bytes"])
    if min(n_classes, class_words, mantissa_bytes) < 0 or n_classes > 64:
        raise ModelFileError("count stream sizes are out of range")
    return 4 * n_classes + 4 * class_words + mantissa_bytes


def decode_counts(fields: dict, blob: bytes, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`encode_counts` for a ``(rows, cols)`` mask, checking that the counts fit it."""
    n_classes, class_words = int(fields["classes"]), int(fields["class_words"])
    if counts_nbytes(fields) != len(blob):
        raise ModelFileError(f"count stream has {len(blob)} bytes, expected {counts_nbytes(fields)}")
    ends = np.cumsum([4 * n_classes, 4 * class_words])
    counts = np.frombuffer(blob[: ends[0]], dtype="<u4")
    classes = ans.decode(ans.AnsStream(counts, np.frombuffer(blob[ends[0] : ends[1]], dtype="<u4"), rows + cols))
    if classes.size and classes.max() > 33:
        raise ModelFileError("a count in the mask stream is out of range")
    both = _gamma_join(classes, blob[ends[1] :])
    row_counts, col_counts = both[:rows], both[rows:]
    if (row_counts > cols).any() or (col_counts > rows).any() or row_counts.sum() != col_counts.sum() \
            or int(row_counts.max(initial=0)) * int(col_counts.max(initial=0)) >= _MAX_PRODUCT:
        raise ModelFileError("the mask's row and column counts do not fit its shape")
    return row_counts, col_counts


def encode_mask(mask: np.ndarray) -> tuple[dict, bytes, float] | None:
    """Code a boolean mask ``(rows, cols)``.

    Returns:
        ``(meta, blob, model_bits)``: manifest fields, the bytes, and the ideal code length in bits of
        the mask bits under the model (side information excluded), or None when the counts are too
        large for the fixed-point model (a row's kept count times a column's reaching 2^46).
    """
    import constriction

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"the mask must be 2-D (rows, cols); got shape {mask.shape}")
    counted = encode_counts(mask)
    if counted is None:
        return None
    row_counts, col_counts, count_fields, count_blob = counted
    cells, p = _probabilities(row_counts, col_counts)
    bits = mask.ravel()[cells].astype(np.int32)
    words = np.zeros(0, dtype=np.uint32)
    if bits.size:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(bits, constriction.stream.model.Bernoulli(perfect=False), p)
        words = coder.get_compressed().astype(np.uint32)
    model_bits = float(-(np.log2(p[bits == 1]).sum() + np.log2(1 - p[bits == 0]).sum())) if bits.size else 0.0
    blob = count_blob + words.astype("<u4").tobytes()
    meta = {"codec": CODEC, **count_fields, "words": int(words.size), "nbytes": len(blob)}
    return meta, blob, model_bits


def decode_mask(meta: dict, blob: bytes, rows: int, cols: int) -> np.ndarray:
    """Invert :func:`encode_mask`: a boolean ``(rows, cols)`` mask.

    Raises:
        ModelFileError: sizes that do not add up, counts that do not fit the shape, or a decoded mask
            whose row and column counts differ from the stored ones (damage the CRC missed).
    """
    import constriction

    if meta.get("codec") != CODEC:
        raise ModelFileError(f"unknown mask codec {meta.get('codec')!r}")
    words = int(meta["words"])
    if min(words, rows, cols) < 0:
        raise ModelFileError("mask stream sizes are out of range")
    count_bytes = counts_nbytes(meta)
    if count_bytes + 4 * words != len(blob):
        raise ModelFileError(f"mask stream has {len(blob)} bytes, its parts need {count_bytes + 4 * words}")
    row_counts, col_counts = decode_counts(meta, blob[:count_bytes], rows, cols)
    cells, p = _probabilities(row_counts, col_counts)
    mask = np.zeros(rows * cols, dtype=bool)
    if cells.size:
        try:
            coder = constriction.stream.stack.AnsCoder(np.frombuffer(blob[count_bytes:], dtype="<u4").astype(np.uint32))
            mask[cells] = coder.decode(constriction.stream.model.Bernoulli(perfect=False), p) != 0
        except Exception as err:  # the Rust decoder reports damage with several exception types
            raise ModelFileError(f"corrupt mask stream: {err}") from None
    mask = mask.reshape(rows, cols)
    if not (np.array_equal(mask.sum(1), row_counts) and np.array_equal(mask.sum(0), col_counts)):
        raise ModelFileError("corrupt mask stream: decoded bits disagree with the stored counts")
    return mask


def encode_masked_labels(labels: np.ndarray, rows: int, alphabet: int, relative_entries: int,
                         gap_info: StreamInfo) -> tuple[dict, list[bytes], list[StreamInfo]] | None:
    """The mask layout of a label array ``(numel,)`` (0 = pruned) viewed as ``(rows, numel // rows)``:
    the context-coded mask, then the kept weights' labels minus one (no fillers) Huffman/ANS-coded.

    ``relative_entries`` and ``gap_info`` describe the relative-index alternative, so reports can put
    the two side by side. Returns ``(manifest fields, [labels blob, mask blob], [label info, mask info])``
    or None where the layout does not apply (a 1-D tensor, or counts beyond the fixed-point model).
    """
    if rows < 1 or labels.size == 0 or labels.size % rows:
        return None
    coded = encode_mask((labels != 0).reshape(rows, -1))
    if coded is None:
        return None
    mask_meta, mask_blob, model_bits = coded
    label_meta, label_blob, label_info = code_stream(labels[labels != 0].astype(np.int64) - 1, max(2, alphabet - 1))
    mask_info = StreamInfo(CODEC, relative_entries, len(mask_blob), model_bits / max(relative_entries, 1),
                           gap_info.huffman_bytes, gap_info.ans_bytes)
    meta = {"sparse": "mask", "labels": label_meta, "mask": mask_meta}
    return meta, [label_blob, mask_blob], [label_info, mask_info]


def decode_masked_labels(entry: dict, label_blob: bytes, mask_blob: bytes, shape: list[int]) -> np.ndarray:
    """Invert :func:`encode_masked_labels`: labels ``(numel,)`` int64, 0 where pruned."""
    rows = shape[0] if shape else 0
    numel = int(np.prod(shape)) if shape else 1
    if len(shape) < 2 or rows < 1 or numel % rows:
        raise ModelFileError(f"the mask layout needs a tensor of at least 2 dimensions; got shape {shape}")
    mask = decode_mask(entry["mask"], mask_blob, rows, numel // rows).ravel()
    # The symbol count comes from the (untrusted) manifest: check it before decoding that many symbols.
    if not isinstance(entry["labels"], dict) or entry["labels"].get("n") != int(mask.sum()):
        raise ModelFileError(f"the labels stream claims {entry['labels'].get('n') if isinstance(entry['labels'], dict) else '?'} "
                             f"symbols for {int(mask.sum())} kept weights")
    kept = decode_stream(entry["labels"], label_blob)
    if kept.size != int(mask.sum()):
        raise ModelFileError(f"{kept.size} labels for {int(mask.sum())} kept weights")
    labels = np.zeros(numel, dtype=np.int64)
    labels[mask] = kept + 1
    return labels
