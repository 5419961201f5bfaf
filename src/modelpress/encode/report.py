"""Per-layer and summary tables of a compressed file, in the form of Han et al.'s Tables 1, 4 and 5.

Everything is computed from the file's manifest, so ``modelpress inspect`` needs nothing else.
"""

from __future__ import annotations

import math


def _stream_bytes(stream: dict) -> int:
    if stream["codec"] == "ans":
        return 4 * (int(stream["alphabet"]) + int(stream["words"]))
    return int(stream["alphabet"]) + 4 * int(stream["blocks"]) + int(stream["data_bytes"])


def layer_rows(manifest: dict) -> list[dict]:
    """One row per stored weight tensor.

    Columns: ``layer``, ``weights`` (#), ``kept_percent`` (non-zero after pruning), ``weight_bits_pq``
    (bits per shared weight index), ``weight_bits_pqh`` (after entropy coding), ``index_bits_pq``,
    ``index_bits_pqh``, ``rate_pq`` and ``rate_pqh`` (32-bit dense weights over the stored bits,
    codebook included). Raw tensors (biases, normalisation) appear with rate 1.
    """
    rows = []
    for t in manifest["tensors"]:
        numel = math.prod(int(d) for d in t["shape"]) if t["shape"] else 1
        if t["kind"] != "shared":
            if t["name"].endswith("weight"):
                rows.append({"layer": t["name"], "weights": numel, "kept_percent": 100.0, "rate_pq": 1.0, "rate_pqh": 1.0})
            continue
        entries, k = int(t["entries"]), int(t["centroids"])
        kept = int(t["kept"])
        weight_bits = max(1, math.ceil(math.log2(k + 1)))  # one code for the filler / pruned zero
        label_bytes, gap_bytes = _stream_bytes(t["labels"]), _stream_bytes(t["gaps"])
        codebook_bits = 32 * k
        dense_bits = 32 * numel
        rows.append({
            "layer": t["name"], "weights": numel, "kept_percent": 100.0 * kept / numel,
            "weight_bits_pq": weight_bits, "weight_bits_pqh": 8 * label_bytes / max(entries, 1),
            "index_bits_pq": int(t["index_bits"]), "index_bits_pqh": 8 * gap_bytes / max(entries, 1),
            "rate_pq": dense_bits / (entries * (weight_bits + int(t["index_bits"])) + codebook_bits),
            "rate_pqh": dense_bits / (8 * (label_bytes + gap_bytes) + codebook_bits),
        })
    return rows


LAYER_COLUMNS = ["layer", "weights", "kept_percent", "weight_bits_pq", "weight_bits_pqh", "index_bits_pq",
                 "index_bits_pqh", "rate_pq", "rate_pqh"]
LAYER_HEADERS = ["Layer", "#Weights", "Weights% (P)", "Weight bits (P+Q)", "Weight bits (P+Q+H)", "Index bits (P+Q)",
                 "Index bits (P+Q+H)", "Compress rate (P+Q)", "Compress rate (P+Q+H)"]
