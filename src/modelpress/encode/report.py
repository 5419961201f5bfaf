"""Per-layer and summary tables of a compressed file, in the form of Han et al.'s Tables 1, 4 and 5.

Everything is computed from the file's manifest, so ``modelpress inspect`` needs nothing else.
"""

from __future__ import annotations

import math


def _stream_bytes(stream: dict) -> int:
    if "nbytes" in stream:  # the context-coded mask (mask.py) records its size
        return int(stream["nbytes"])
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
        # one code for the filler / pruned zero; a per-row-magnitude codebook (binary/ternary rows) has
        # k = rows floats but only three label values: 0, -m_row, +m_row
        symbols = 3 if t.get("codebook") == "row_magnitudes" else k + 1
        weight_bits = max(1, math.ceil(math.log2(symbols)))
        # the mask layout (version 3) codes positions as a mask instead of gaps, the spatial one (version 5)
        # both in one stream shared out by code length; per entry all the same
        if t.get("sparse") == "spatial":
            label_bytes = int(t["spatial"]["label_bytes"])
            gap_bytes = int(t["spatial"]["nbytes"]) - label_bytes
        else:
            label_bytes, gap_bytes = _stream_bytes(t["labels"]), _stream_bytes(t["gaps"] if "gaps" in t else t["mask"])
        codebook_bits = (16 if t.get("centroid_dtype") == "float16" else 32) * k
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


def byte_budget(stats: dict, file_bytes: int) -> dict:
    """Where a compressed file's bytes go, beside the entropy floor of its coded streams.

    Args:
        stats: what :func:`~modelpress.encode.save_compressed` returned for the file.
        file_bytes: the file's size on disk.

    Returns:
        Bytes of ``labels`` and ``indices`` (as coded, as pure Huffman, as pure ANS, and their
        empirical-entropy floor), ``codebooks``, ``raw`` tensors, and ``overhead`` (header, manifest and
        checksum; each stream's own code table counts in its bytes); ``floor_bytes`` is the file with both streams at their entropy.
    """
    budget = {f"{stream}_{what}": 0.0 for stream in ("labels", "indices") for what in ("bytes", "huffman", "ans", "entropy")}
    budget.update(codebooks=0, raw=0)
    for tensor in stats.values():
        if tensor["kind"] != "shared":
            budget["raw"] += tensor["bytes"]
            continue
        stream_bytes = 0
        for stream, info in zip(("labels", "indices"), tensor["streams"]):
            budget[f"{stream}_bytes"] += info.nbytes
            budget[f"{stream}_huffman"] += info.huffman_bytes
            budget[f"{stream}_ans"] += info.ans_bytes
            budget[f"{stream}_entropy"] += info.entropy_bits * info.n_symbols / 8
            stream_bytes += info.nbytes
        budget["codebooks"] += tensor["bytes"] - stream_bytes
    coded = budget["labels_bytes"] + budget["indices_bytes"]
    budget["overhead"] = file_bytes - coded - budget["codebooks"] - budget["raw"]
    budget["floor_bytes"] = file_bytes - coded + budget["labels_entropy"] + budget["indices_entropy"]
    budget["file_bytes"] = file_bytes
    return budget


BUDGET_COLUMNS = ["part", "bytes", "huffman", "ans", "entropy"]
BUDGET_HEADERS = ["Part", "Bytes (as written)", "All Huffman", "All ANS", "Entropy floor"]


def budget_rows(budget: dict) -> list[dict]:
    """:func:`byte_budget` as table rows: the coded streams under each codec, then the fixed parts."""
    rows = [{"part": "weight labels" if s == "labels" else "positions (relative indices, mask or spatial)",
             **{what: budget[f"{s}_{what}"] for what in ("bytes", "huffman", "ans", "entropy")}}
            for s in ("labels", "indices")]
    for part, key in (("codebooks (centroids)", "codebooks"), ("raw tensors (biases, unshared)", "raw"),
                      ("header, manifest, checksum", "overhead")):
        rows.append({"part": part, **{what: budget[key] for what in ("bytes", "huffman", "ans", "entropy")}})
    rows.append({"part": "file", **{what: sum(r[what] for r in rows) for what in ("bytes", "huffman", "ans", "entropy")}})
    return rows
