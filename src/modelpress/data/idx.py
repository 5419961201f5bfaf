"""Read and write IDX files, the format MNIST and Fashion-MNIST are published in.

An IDX file is a 4-byte magic number ``00 00 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the values in C order, big-endian. The published files are
gzipped; we detect that from the gzip magic bytes rather than the ``.gz`` suffix, because
copies are often renamed or decompressed in place.
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from modelpress.core.errors import ConfigError, DataError, DataNotFoundError
from modelpress.core.io import atomic_write

__all__ = ["read_idx", "write_idx", "IDX_DTYPES"]

GZIP_MAGIC = b"\x1f\x8b"

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_NAMES = {0x08: "ubyte", 0x09: "byte", 0x0B: "short", 0x0C: "int", 0x0D: "float", 0x0E: "double"}
# numpy kind+itemsize -> IDX code, for writing (byte order is normalised to big-endian).
_CODES_BY_NUMPY = {(dtype.kind, dtype.itemsize): code for code, dtype in IDX_DTYPES.items()}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or raw, into a native-byte-order numpy array.

    Args:
        path: the file. Gzip compression is detected from the content (bytes ``1f 8b``),
            so ``train-images-idx3-ubyte`` and ``train-images-idx3-ubyte.gz`` both work
            whatever they actually hold.

    Returns:
        A writable array with the shape and dtype the header declares, e.g. uint8
        ``(60000, 28, 28)`` for an MNIST training image file, uint8 ``(60000,)`` for labels.

    Raises:
        DataNotFoundError: the file does not exist.
        DataError: the file is not a valid IDX file: corrupt or truncated gzip stream, bad
            magic number, unknown dtype code, incomplete header, too few data bytes
            (truncated) or bytes left over after the data. The message names the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip(path, raw)
    dtype, dims, header_len = _parse_header(path, raw)
    return _parse_payload(path, raw, dtype, dims, header_len)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` as an IDX file, atomically.

    Args:
        path: destination file; parent folders are created. The name is used as given
            (add ``.gz`` yourself when ``gzip=True`` if you want the usual name).
        array: 1 to 255 dimensions, each below 2**32, of dtype uint8, int8, int16, int32,
            float32 or float64 (any byte order; the file is always big-endian).
        gzip: compress the file with gzip (deterministic: no timestamp in the header).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: the dtype or shape cannot be stored in IDX; the message says which
            dtypes can.
    """
    array = np.asarray(array)
    code = _CODES_BY_NUMPY.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        allowed = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
        raise ConfigError(
            f"cannot write dtype {array.dtype} to IDX file {path}; IDX stores {allowed}. "
            f"Convert the array first, e.g. array.astype(np.uint8) for pixels or labels"
        )
    if not 1 <= array.ndim <= 255 or any(size >= 2**32 for size in array.shape):
        raise ConfigError(
            f"cannot write an array of shape {array.shape} to IDX file {path}; "
            f"IDX needs 1 to 255 dimensions, each smaller than 2**32"
        )
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    content = header + payload
    if gzip:
        content = _gzip.compress(content, mtime=0)
    with atomic_write(path) as tmp:
        tmp.write_bytes(content)
    return Path(path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataNotFoundError(f"IDX file {path} does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not an IDX file") from None
    except OSError as error:
        raise DataError(f"cannot read IDX file {path}: {error.strerror or error}") from None


def _gunzip(path: Path, raw: bytes) -> bytes:
    """Decompress a whole gzip file (all members), turning every kind of damage into a DataError.

    Done member by member with zlib rather than ``gzip.decompress`` so the message can say
    exactly what is wrong: a stream cut short, a corrupt stream, or junk after the last member.
    """
    advice = "delete it and copy or download it again"
    parts: list[bytes] = []
    rest = raw
    while rest:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # expect a gzip header
        try:
            parts.append(decompressor.decompress(rest))
        except zlib.error as error:
            raise DataError(f"{path} is a corrupt gzip file ({error}); {advice}") from None
        if not decompressor.eof:
            # The stream stops before its end marker: the classic interrupted download.
            raise DataError(
                f"{path} is truncated: its gzip stream ends early, after {len(raw)} compressed bytes "
                f"(an interrupted download or copy?); {advice}"
            )
        rest = decompressor.unused_data
        if rest and rest[:2] != GZIP_MAGIC:
            if rest.strip(b"\0"):  # gzip tolerates zero padding, as tar and some tools write
                raise DataError(
                    f"{path} has {len(rest)} bytes of trailing garbage after its gzip stream; "
                    f"the file is corrupt: {advice}"
                )
            break
    return b"".join(parts)


def _parse_header(path: Path, raw: bytes) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the magic number and dimension sizes; return (dtype, dims, header length)."""
    if len(raw) < 4:
        raise DataError(
            f"{path} is truncated: {len(raw)} bytes is too short for the 4-byte IDX magic number"
        )
    zero0, zero1, code, ndim = raw[:4]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path} is not an IDX file: bad magic number 0x{raw[:4].hex()} "
            f"(IDX files start with two zero bytes; is this an HTML error page or another format?)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, n in _DTYPE_NAMES.items())
        raise DataError(
            f"{path} has bad IDX magic number 0x{raw[:4].hex()}: unknown dtype code 0x{code:02X} "
            f"(known: {known})"
        )
    if ndim == 0:
        raise DataError(f"{path} has bad IDX magic number 0x{raw[:4].hex()}: it declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"{path} is truncated: its header declares {ndim} dimensions and needs {header_len} bytes, "
            f"but the file has only {len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return IDX_DTYPES[code], dims, header_len


def _parse_payload(path: Path, raw: bytes, dtype: np.dtype, dims: tuple[int, ...], header_len: int) -> np.ndarray:
    expected = math.prod(dims) * dtype.itemsize
    found = len(raw) - header_len
    layout = " x ".join(str(d) for d in dims) + f" {_DTYPE_NAMES[_code_of(dtype)]}"
    if found < expected:
        raise DataError(
            f"{path} is truncated: expected {expected} bytes of data ({layout}), found {found}; "
            f"delete it and copy or download it again"
        )
    if found > expected:
        raise DataError(
            f"{path} has {found - expected} bytes of trailing garbage after the {expected} bytes of data "
            f"its header declares ({layout}); the file is corrupt or not an IDX file"
        )
    values = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header_len)
    # astype copies, which both makes the array writable (frombuffer on bytes is read-only)
    # and converts to native byte order so torch.from_numpy accepts it.
    return values.astype(dtype.newbyteorder("=")).reshape(dims)


def _code_of(dtype: np.dtype) -> int:
    return _CODES_BY_NUMPY[(dtype.kind, dtype.itemsize)]
