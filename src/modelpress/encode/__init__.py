"""Encoding: relative-index sparse storage, context-coded sparsity masks, Huffman and ANS coding, and the
compressed model file."""

from modelpress.encode.container import (MAGIC, StreamInfo, is_compressed_file, load_compressed, read_any_model, read_manifest,
                                         round_to_float16_, save_compressed)
from modelpress.encode.huffman import HuffmanStream, canonical_codes, entropy_bits, huffman_lengths
from modelpress.encode.mask import decode_mask, encode_mask
from modelpress.encode.sparse import from_relative, to_relative

__all__ = [
    "MAGIC",
    "HuffmanStream",
    "StreamInfo",
    "canonical_codes",
    "decode_mask",
    "encode_mask",
    "entropy_bits",
    "from_relative",
    "huffman_lengths",
    "is_compressed_file",
    "load_compressed",
    "read_any_model",
    "read_manifest",
    "round_to_float16_",
    "save_compressed",
    "to_relative",
]
