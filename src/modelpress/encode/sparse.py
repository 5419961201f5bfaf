"""Sparse storage with relative indices (Han et al. 2016, Deep Compression, Fig. 2).

A flat array of cluster labels where 0 means "pruned" is stored as two parallel arrays: for each kept
entry, the number of zeros skipped since the previous stored entry (``gaps``, each fitting in
``index_bits``) and its value. A run of zeros too long for ``index_bits`` is bridged by *filler*
entries: a gap of ``2**index_bits - 1`` followed by a stored zero. Vectorised with NumPy.
"""

from __future__ import annotations

import numpy as np

from modelpress.core.errors import ConfigError, ModelFileError


def check_index_bits(index_bits: int, name: str = "index_bits") -> None:
    """Relative indices are stored as uint16 gaps: 1 to 16 bits."""
    if not 1 <= index_bits <= 16:
        raise ConfigError(f"{name} must be in [1, 16]; got {index_bits}")


def to_relative(values: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode a 1-D array in which 0 marks an absent entry.

    Args:
        values: ``(n,)`` non-negative integers (0 = pruned).
        index_bits: bits per relative index, 1..16.

    Returns:
        ``(gaps, stored)``: equal-length ``uint16`` / ``values.dtype`` arrays; ``stored`` holds 0 for fillers.
    """
    check_index_bits(index_bits)
    values = np.asarray(values).ravel()
    span = 1 << index_bits  # a gap field holds 0 .. span-1 skipped zeros
    positions = np.flatnonzero(values)  # (k,)
    zeros_before = np.diff(positions, prepend=-1) - 1  # zeros between consecutive kept entries
    fillers = zeros_before // span  # each filler stands for span-1 skipped zeros plus itself
    last_gap = zeros_before - fillers * span
    per_entry = fillers + 1
    gaps = np.full(int(per_entry.sum()), span - 1, dtype=np.uint16)
    stored = np.zeros(gaps.shape[0], dtype=values.dtype)
    ends = np.cumsum(per_entry) - 1  # where each real entry lands after its fillers
    gaps[ends] = last_gap
    stored[ends] = values[positions]
    return gaps, stored


def from_relative(gaps: np.ndarray, stored: np.ndarray, length: int) -> np.ndarray:
    """Invert :func:`to_relative`: rebuild the dense ``(length,)`` array.

    Raises:
        ModelFileError: the indices run past ``length`` (a corrupt payload).
    """
    gaps = np.asarray(gaps, dtype=np.int64)
    if gaps.shape != np.shape(stored):
        raise ModelFileError(f"{gaps.shape[0]} relative indices but {np.shape(stored)[0]} values")
    positions = np.cumsum(gaps + 1) - 1  # (m,) absolute position of each stored entry
    if positions.size and (positions[-1] >= length or gaps.min() < 0):
        raise ModelFileError(f"relative indices reach position {int(positions[-1])} of a {length}-entry tensor")
    dense = np.zeros(length, dtype=np.asarray(stored).dtype)
    dense[positions] = stored
    return dense
