"""The compressed model file (``.mpz``): Deep Compression's storage format, end to end.

Layout (all integers little-endian)::

    magic "MPRESSZ\\0" | version u16 | flags u16 | manifest length u32 | manifest | payload | SHA-256

The manifest is JSON, zlib-compressed when flag bit 0 is set (the writer always sets it: on a small
model the JSON would otherwise be a noticeable share of the file).

The trailing SHA-256 covers every byte before it. The manifest holds the architecture spec and, per
tensor, its shape, how it is stored, where its bytes are in the payload and their CRC-32. A weight
with few distinct values (pruned and/or weight-shared) is stored as a codebook of float32 centroids
plus cluster labels in the relative-index sparse format, each stream Huffman- or ANS-coded, whichever
is smaller; every other tensor is stored raw. On request every float32 the file holds (centroids and
raw tensors alike) is stored in float16 where that is exact, as after :func:`round_to_float16_`.
Loading rebuilds the module with bit-identical weights.

A binary or ternary layer with one scale per layer is such a weight (2 or 3 values: about 1 and
``H(p0, p-, p+)`` <= 1.58 bits per weight). One whose scale is per output channel (XNOR-Net's
``{-a_c, +a_c}``) would need a codebook entry per channel *and* a wide label alphabet, so it is stored
with ``"codebook": "row_magnitudes"``: one float32 magnitude per row plus labels 0 / 1 / 2 for
0 / -m / +m. Only files that use this are written as version 2; every other file stays version 1,
which older readers open.

Version 3 adds the context-coded mask layout (``"sparse": "mask"``, see ``mask.py``): the positions
of the kept weights as a bit mask coded with per-row x per-column probabilities, then the labels of
the kept weights only. It is chosen per tensor where it is smaller than relative indices; a file
in which no tensor uses it is written exactly as before (version 1 or 2).

Version 4 adds codebooks (centroids or row magnitudes) stored in float16 (``"centroid_dtype":
"float16"``), written on request (``float16=True``) where every value is exact in float16, as after
:func:`round_to_float16_`.

Version 5 adds the spatial layout (``"sparse": "spatial"``, see ``spatial.py``): positions and
labels of a convolution's kernels, or of an MLP's first layer on images, coded with the neighbouring
weights as context. Chosen per tensor where it is smaller.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelpress.core.errors import ModelFileError
from modelpress.core.io import atomic_write
from modelpress.encode.mask import decode_masked_labels, encode_masked_labels
from modelpress.encode.sparse import from_relative, to_relative
from modelpress.encode.spatial import decode_spatial_labels, encode_spatial_labels, geometry_for
from modelpress.encode.streams import StreamInfo
from modelpress.encode.streams import code_stream as _code_stream
from modelpress.encode.streams import decode_stream as _decode_stream
from modelpress.models.io import LoadedModel, read_model_file
from modelpress.models.zoo import ModelSpec, build_from_spec
from modelpress.prune.magnitude import effective_weight, prunable_layers
from modelpress.quantize.binary import is_binarized, quantized_weight
from modelpress.quantize.sharing import _shared_weight, is_shared

MAGIC = b"MPRESSZ\0"
VERSION = 5  # the newest format this module reads; it writes the oldest one that holds the file (see above)
ROW_MAGNITUDES = "row_magnitudes"
_HEADER = struct.Struct("<8sHHI")
MAX_SHARED_VALUES = 1 << 16
FLAG_ZLIB_MANIFEST = 1


def _effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict a fresh model of the same spec expects, with pruning/sharing folded in."""
    state = {}
    layers = {name: m for name, m in model.named_modules()}
    for key, value in model.state_dict().items():
        owner, _, attr = key.rpartition(".")
        module = layers[owner]
        if is_binarized(module) and attr.startswith("weight_"):  # weight_latent (+ TTQ's weight_wp, weight_wn)
            if attr == "weight_latent":
                state[f"{owner}.weight" if owner else "weight"] = quantized_weight(module).detach() + 0.0
        elif attr in ("weight_orig", "weight_centroids"):
            weight = _shared_weight(module).detach() if is_shared(module) else effective_weight(module)
            state[f"{owner}.weight" if owner else "weight"] = weight
        elif attr not in ("weight_mask", "weight_labels", "weight_keep"):
            state[key] = value.detach()
    return state


def codebook_and_labels(weight: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The distinct non-zero values ``(k,)`` of ``weight`` and, per element (flattened), its label:
    0 where pruned, ``i + 1`` where it equals value ``i``."""
    values, inverse = torch.unique(weight.detach().float().flatten(), return_inverse=True)
    centroid_of = torch.zeros(values.numel(), dtype=torch.long)
    centroid_of[values != 0] = torch.arange(1, int((values != 0).sum()) + 1)
    return values[values != 0], centroid_of[inverse].numpy()


def row_magnitudes_and_labels(weight: torch.Tensor) -> tuple[torch.Tensor, np.ndarray] | None:
    """If every row (output channel) ``r`` of ``weight`` holds only ``{-m_r, 0, +m_r}``: the magnitudes
    ``(rows,)`` and, per element (flattened), 0 for zero, 1 for ``-m_r``, 2 for ``+m_r``; else None."""
    if weight.dim() < 2 or weight.numel() == 0:
        return None
    rows = weight.detach().float().reshape(weight.shape[0], -1)  # (R, C)
    mags = rows.abs()
    m = mags.max(1).values  # (R,)
    if not bool(((mags == m[:, None]) | (mags == 0)).all()):  # NaN fails both tests: not this form
        return None
    labels = torch.where(rows > 0, 2, torch.where(rows < 0, 1, 0))
    return m, labels.flatten().numpy()


def _float16_if_exact(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` (float32) as float16 if that holds every value exactly, else None."""
    if tensor.dtype != torch.float32 or tensor.numel() == 0:
        return None
    half = tensor.to(torch.float16)
    return half if torch.equal(half.float(), tensor) else None


def _encode_labels(codebook: torch.Tensor, labels: np.ndarray, alphabet: int, index_bits: int,
                   extra: dict, rows: int | None = None, float16: bool = False,
                   geometry: list[int] | None = None) -> tuple[dict, list[bytes], list[StreamInfo]]:
    """A codebook (float32, or float16 where ``float16`` and exact) plus labels (0 = zero) in the
    relative-index sparse format, both streams coded; or, with ``rows`` and where it is smaller, in the
    context-coded mask layout (``mask.py``) or, with a ``geometry`` too, the spatial one (``spatial.py``)."""
    gaps, stored = to_relative(labels, index_bits)
    label_meta, label_blob, label_info = _code_stream(stored.astype(np.int64), alphabet)
    gap_meta, gap_blob, gap_info = _code_stream(gaps.astype(np.int64), 1 << index_bits)
    half = _float16_if_exact(codebook.float()) if float16 else None
    if half is not None:
        centroids, extra = half.numpy().astype("<f2").tobytes(), {**extra, "centroid_dtype": "float16"}
    else:
        centroids = codebook.numpy().astype("<f4").tobytes()
    meta = {"kind": "shared", "index_bits": index_bits, "entries": int(gaps.size), "kept": int((labels > 0).sum()),
            "centroids": int(codebook.numel()), **extra,
            "labels": label_meta, "gaps": gap_meta, "parts": [len(centroids), len(label_blob), len(gap_blob)]}
    relative = meta, [centroids, label_blob, gap_blob], [label_info, gap_info]
    masked = encode_masked_labels(labels, rows, alphabet, int(gaps.size), gap_info) if rows else None
    if masked is None:
        return relative
    mask_fields, (mask_labels, mask_blob), infos = masked
    common = {k: v for k, v in meta.items() if k not in ("gaps", "labels", "parts")}
    candidates = [relative, ({**common, **mask_fields, "parts": [len(centroids), len(mask_labels), len(mask_blob)]},
                             [centroids, mask_labels, mask_blob], infos)]
    spatial = encode_spatial_labels(labels, rows, geometry, alphabet - 1, *infos) if geometry else None
    if spatial is not None:
        spatial_fields, spatial_blob, spatial_infos = spatial
        candidates.append(({**common, **spatial_fields, "parts": [len(centroids), len(spatial_blob)]},
                           [centroids, spatial_blob], spatial_infos))
    # the context layouts' manifest entries are longer: count every entry as written (compressed)
    return min(candidates, key=lambda c: sum(map(len, c[1])) + len(zlib.compress(json.dumps(c[0]).encode(), 9)))


def _encode_shared(weight: torch.Tensor, index_bits: int, context_masks: bool = True, float16: bool = False,
                   input_shape: tuple[int, ...] | None = None) -> tuple[dict, list[bytes], list[StreamInfo]] | None:
    """Codebook + sparse labels for a weight with few distinct non-zero values (one codebook for the
    layer, or one magnitude per row, whichever file is smaller), else None. ``input_shape``: the
    model's input, whose picture an MLP's first layer sees (``spatial.geometry_for``)."""
    nonzero_values, labels = codebook_and_labels(weight)
    mask_rows = weight.shape[0] if context_masks and weight.dim() >= 2 else None  # None: relative indices only
    geometry = geometry_for(tuple(weight.shape), input_shape) if mask_rows else None
    candidates = []
    if nonzero_values.numel() <= MAX_SHARED_VALUES and nonzero_values.numel() <= weight.numel() // 4:
        candidates.append(_encode_labels(nonzero_values, labels, nonzero_values.numel() + 1, index_bits, {}, mask_rows,
                                         float16, geometry))
    if nonzero_values.numel() > 2:  # with at most two values one layer-wide codebook is never larger
        rows = row_magnitudes_and_labels(weight)
        if rows is not None and rows[0].numel() <= weight.numel() // 4:
            candidates.append(_encode_labels(rows[0], rows[1], 3, index_bits, {"codebook": ROW_MAGNITUDES}, mask_rows,
                                             float16, geometry))
    # None: a dense float tensor, for which raw float32 is smaller
    return min(candidates, key=lambda c: sum(len(part) for part in c[1]), default=None)


def _encode_raw(tensor: torch.Tensor, float16: bool) -> tuple[dict, list[bytes]]:
    """A tensor stored as it is; with ``float16``, a float32 one whose every value float16 holds exactly
    (e.g. biases rounded by :func:`round_to_float16_`) in half the bytes, read back to the same
    float32 bits. A reader that ignores ``restore`` still loads the same values: ``load_state_dict``
    casts them."""
    tensor = tensor.detach().contiguous().cpu()
    half = _float16_if_exact(tensor) if float16 else None
    if half is not None:
        return {"kind": "raw", "dtype": "float16", "restore": "float32"}, [half.numpy().tobytes()]
    return {"kind": "raw", "dtype": str(tensor.dtype).removeprefix("torch.")}, [tensor.numpy().tobytes()]


def round_to_float16_(model: nn.Module) -> nn.Module:
    """Round, in place, every float32 parameter and buffer to the nearest float16 value (shared
    weights' centroids, biases, normalisation statistics, ...), so that a file written with
    ``float16=True`` stores each float in 2 bytes. Pruned weights stay zero (0 is exact). Binary and
    ternary layers are left alone: their scales are computed from latent weights, so rounding those
    would not make the scales exact. Returns ``model``."""
    binarized = {name for name, module in model.named_modules() if is_binarized(module)}
    with torch.no_grad():
        for key, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if tensor.dtype == torch.float32 and key.rpartition(".")[0] not in binarized:
                tensor.copy_(tensor.to(torch.float16).float())
    return model


def save_compressed(model: nn.Module, path: str | os.PathLike[str], *, index_bits_fc: int = 5, index_bits_conv: int = 8,
                    spec: ModelSpec | None = None, extra: dict | None = None, context_masks: bool = True,
                    float16: bool = False) -> dict:
    """Write ``model`` (pruned and/or weight-shared, binary/ternary, or plain) as a compressed file, atomically.

    Args:
        model: a zoo model, possibly with masks, shared or binary/ternary weights still attached.
        index_bits_fc: bits per relative index of fully connected layers (the paper: 5).
        index_bits_conv: the same for convolutions (the paper: 8).
        context_masks: let a weight of 2 or more dimensions use the context-coded mask layout (a
            version-3 file) or, for a convolution or an MLP's first layer on images, the spatial one
            (version 5) where that is smaller; False writes only the layouts version 1/2 readers know.
        float16: store each float32 tensor kept raw (biases, ...) and each codebook in float16 where
            that is exact, as after :func:`round_to_float16_` (a version-4 file where a codebook is);
            off, the file is byte for byte what it always was.

    Returns:
        Per-tensor stats: ``{name: {"kind", "bytes", "streams": [StreamInfo...]}}``.
    """
    spec = spec or getattr(model, "modelpress_spec", None)
    if spec is None:
        raise ModelFileError("this model has no architecture spec: build it with modelpress.models.build_model")
    index_bits = {f"{name}.weight": index_bits_fc if isinstance(m, nn.Linear) else index_bits_conv
                  for name, m in prunable_layers(model).items()}
    entries, blobs, stats, offset = [], [], {}, 0
    for name, tensor in _effective_state(model).items():
        encoded = _encode_shared(tensor, index_bits[name], context_masks, float16, spec.input_shape) if name in index_bits else None
        if encoded is None:
            meta, parts, infos = *_encode_raw(tensor, float16), []
        else:
            meta, parts, infos = encoded
        blob = b"".join(parts)
        entries.append({"name": name, "shape": list(tensor.shape), "offset": offset, "length": len(blob),
                        "crc32": zlib.crc32(blob), **meta})
        blobs.append(blob)
        stats[name] = {"kind": meta["kind"], "bytes": len(blob), "numel": tensor.numel(), "streams": infos}
        offset += len(blob)
    manifest = zlib.compress(json.dumps({"format": "modelpress-compressed", "spec": spec.to_json(), "extra": extra or {},
                                         "tensors": entries}, separators=(",", ":")).encode(), 9)
    version = (5 if any(entry.get("sparse") == "spatial" for entry in entries)
               else 4 if any(entry.get("centroid_dtype") == "float16" for entry in entries)
               else 3 if any(entry.get("sparse") == "mask" for entry in entries)
               else 2 if any(entry.get("codebook") == ROW_MAGNITUDES for entry in entries) else 1)
    body = _HEADER.pack(MAGIC, version, FLAG_ZLIB_MANIFEST, len(manifest)) + manifest + b"".join(blobs)
    with atomic_write(path) as tmp:
        tmp.write_bytes(body + hashlib.sha256(body).digest())
    return stats


def is_compressed_file(path: str | os.PathLike[str]) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def read_manifest(path: str | os.PathLike[str]) -> tuple[dict, bytes]:
    """Verify a compressed file's framing and checksum; return its manifest and payload bytes."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"compressed model {path} does not exist")
    raw = path.read_bytes()
    if len(raw) < _HEADER.size + 32 or raw[: len(MAGIC)] != MAGIC:
        raise ModelFileError(f"{path} is not a modelpress compressed model (bad magic or too short)")
    magic, version, flags, manifest_len = _HEADER.unpack_from(raw)
    if version > VERSION:
        raise ModelFileError(f"{path} has format version {version}; this modelpress reads up to {VERSION}: upgrade it")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise ModelFileError(f"{path} is corrupt or truncated: its SHA-256 checksum does not match")
    if _HEADER.size + manifest_len > len(body):
        raise ModelFileError(f"{path}: manifest length runs past the end of the file")
    try:
        text = body[_HEADER.size : _HEADER.size + manifest_len]
        manifest = json.loads(zlib.decompress(text) if flags & FLAG_ZLIB_MANIFEST else text)
    except (json.JSONDecodeError, UnicodeDecodeError, zlib.error):
        raise ModelFileError(f"{path}: the manifest is not valid (compressed) JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "modelpress-compressed":
        raise ModelFileError(f"{path}: not a modelpress compressed manifest")
    return manifest, body[_HEADER.size + manifest_len :]


def _decode_tensor(entry: dict, blob: bytes) -> torch.Tensor:
    shape = [int(d) for d in entry["shape"]]
    numel = int(np.prod(shape)) if shape else 1
    if entry["kind"] == "raw":
        dtype = getattr(torch, entry["dtype"])
        if entry["dtype"] not in ("float32", "float16", "float64", "int64", "int32", "bfloat16", "uint8", "bool"):
            raise ModelFileError(f"unsupported dtype {entry['dtype']!r}")
        tensor = torch.frombuffer(bytearray(blob), dtype=dtype) if blob else torch.zeros(0, dtype=dtype)
        if tensor.numel() != numel:
            raise ModelFileError(f"holds {tensor.numel()} values, its shape needs {numel}")
        restore = entry.get("restore", entry["dtype"])
        if restore not in (entry["dtype"], "float32"):
            raise ModelFileError(f"cannot restore {entry['dtype']} values as {restore!r}")
        return tensor.reshape(shape).to(getattr(torch, restore)).clone()
    if entry["kind"] != "shared":
        raise ModelFileError(f"unknown tensor kind {entry['kind']!r}")
    centroid_dtype = {"float32": "<f4", "float16": "<f2"}.get(entry.get("centroid_dtype", "float32"))
    if centroid_dtype is None:
        raise ModelFileError(f"unknown centroid dtype {entry['centroid_dtype']!r}")
    sizes = [int(s) for s in entry["parts"]]
    if sum(sizes) != len(blob) or sizes[0] != np.dtype(centroid_dtype).itemsize * int(entry["centroids"]):
        raise ModelFileError("part sizes do not add up")
    centroids = np.frombuffer(blob[: sizes[0]], dtype=centroid_dtype).astype(np.float32)
    label_blob, index_blob = blob[sizes[0] : sizes[0] + sizes[1]], blob[sizes[0] + sizes[1] :]
    if entry.get("sparse", "relative") == "spatial":
        alphabet = 2 if entry.get("codebook", "values") == ROW_MAGNITUDES else int(entry["centroids"])
        if len(sizes) != 2:
            raise ModelFileError("the spatial layout has two parts")
        labels = decode_spatial_labels(entry, blob[sizes[0] :], shape, alphabet)
    elif entry.get("sparse", "relative") == "mask":
        labels = decode_masked_labels(entry, label_blob, index_blob, shape)
    elif entry.get("sparse", "relative") == "relative":
        # Every entry (a kept weight or a filler zero) sits at its own position, so at most numel of
        # them; checked before decoding, since the counts come from the manifest.
        counts = [stream.get("n") if isinstance(stream, dict) else None for stream in (entry["gaps"], entry["labels"])]
        if counts[0] != counts[1] or not isinstance(counts[0], int) or not 0 <= counts[0] <= numel:
            raise ModelFileError(f"index and label streams claim {counts[0]} and {counts[1]} entries for {numel} weights")
        labels = from_relative(_decode_stream(entry["gaps"], index_blob), _decode_stream(entry["labels"], label_blob), numel)
    else:
        raise ModelFileError(f"unknown sparse layout {entry['sparse']!r}")
    if entry.get("codebook", "values") == ROW_MAGNITUDES:
        return torch.from_numpy(_row_magnitude_values(centroids, labels, shape)).reshape(shape)
    if entry.get("codebook", "values") != "values":
        raise ModelFileError(f"unknown codebook layout {entry['codebook']!r}")
    if labels.size and labels.max() > centroids.size:
        raise ModelFileError("a label points past the codebook")
    values = np.concatenate([np.zeros(1, dtype=np.float32), centroids.astype(np.float32)])[labels]
    return torch.from_numpy(values).reshape(shape)


def _row_magnitude_values(magnitudes: np.ndarray, labels: np.ndarray, shape: list[int]) -> np.ndarray:
    """Invert :func:`row_magnitudes_and_labels`: ``(numel,)`` float32 values."""
    rows = shape[0] if shape else 0
    if rows == 0 or magnitudes.size != rows or labels.size % rows:
        raise ModelFileError(f"{magnitudes.size} row magnitudes do not fit shape {shape}")
    if labels.size and labels.max() > 2:
        raise ModelFileError("a label points past the codebook")
    table = np.stack([np.zeros_like(magnitudes), -magnitudes, magnitudes], 1).astype(np.float32)  # (R, 3)
    return table[np.arange(labels.size) // (labels.size // rows), labels]


def load_compressed(path: str | os.PathLike[str]) -> tuple[nn.Module, ModelSpec, dict]:
    """Rebuild the model stored in a compressed file (eval mode), verifying every checksum.

    Raises:
        ModelFileError: missing, truncated, corrupt, foreign or newer-version file, named precisely;
            never an exception from deep inside a decoder.
    """
    manifest, payload = read_manifest(path)
    try:
        spec = ModelSpec.from_json(manifest["spec"])
        entries = list(manifest["tensors"])
    except Exception as err:
        raise ModelFileError(f"{path}: malformed manifest ({err})") from None
    state = {}
    for entry in entries:
        name = str(entry.get("name", "?")) if isinstance(entry, dict) else "?"
        try:
            start, length = int(entry["offset"]), int(entry["length"])
            blob = payload[start : start + length]
            if start < 0 or len(blob) != length:
                raise ModelFileError("its bytes lie outside the payload")
            if zlib.crc32(blob) != int(entry["crc32"]):
                raise ModelFileError("CRC-32 mismatch")
            state[name] = _decode_tensor(entry, blob)
        except ModelFileError as err:
            raise ModelFileError(f"{path}: tensor {name}: {err}") from None
        except Exception as err:  # a well-formed checksum over a malformed manifest: still one clear line
            raise ModelFileError(f"{path}: tensor {name} is malformed ({type(err).__name__}: {err})") from None
    model = build_from_spec(spec)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: tensors do not match architecture {spec.arch!r}: {str(err).splitlines()[0]}") from None
    model.eval()
    return model, spec, dict(manifest.get("extra", {}))


def read_any_model(path: str | os.PathLike[str]) -> LoadedModel:
    """A ``.mpk`` model, a training checkpoint or a compressed ``.mpz`` file, told apart by content."""
    if Path(path).is_file() and is_compressed_file(path):
        model, spec, extra = load_compressed(path)
        return LoadedModel(model, spec, extra, Path(path))
    return read_model_file(path)
