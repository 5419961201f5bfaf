import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpress.core.errors import ModelFileError
from modelpress.encode import ans, huffman
from modelpress.encode.sparse import from_relative, to_relative


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=400), st.integers(1, 8), st.floats(0, 1))
def test_relative_indices_round_trip_and_fit_their_bits(raw, index_bits, keep):
    values = np.array(raw, dtype=np.int64)
    values[np.random.default_rng(len(raw)).random(values.size) > keep] = 0
    gaps, stored = to_relative(values, index_bits)
    assert (gaps < 2**index_bits).all()
    assert np.array_equal(from_relative(gaps, stored, values.size), values)


def test_relative_indices_insert_a_filler_when_a_gap_overflows():
    # the paper's Figure 2: with 3-bit indices a run of 10 zeros needs one filler zero
    gaps, stored = to_relative(np.array([0, 3] + [0] * 10 + [4]), 3)
    assert gaps.tolist() == [1, 7, 2] and stored.tolist() == [3, 0, 4]


def test_relative_indices_past_the_end_are_rejected():
    with pytest.raises(ModelFileError, match="reach position"):
        from_relative(np.array([5, 9]), np.array([1, 2]), 10)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=0, max_size=3000), st.sampled_from([1, 7, 1024]))
def test_huffman_round_trips_any_stream(raw, block):
    symbols = np.array(raw, dtype=np.int64)
    stream = huffman.encode(symbols, 41, block=block)
    assert np.array_equal(huffman.decode(stream), symbols)


def test_huffman_is_within_one_bit_of_the_entropy_and_ans_reaches_it():
    rng = np.random.default_rng(0)
    symbols = rng.geometric(0.25, 200_000).clip(1, 32) - 1
    entropy = huffman.entropy_bits(symbols, 32)
    h = huffman.encode(symbols, 32)
    a = ans.encode(symbols, 32)
    assert entropy <= h.n_bits / symbols.size < entropy + 1
    assert a.words.nbytes * 8 / symbols.size < entropy * 1.002 + 64 / symbols.size
    assert np.array_equal(ans.decode(a), symbols)


def test_canonical_codes_are_prefix_free_golden():
    lengths = huffman.huffman_lengths(np.array([5, 9, 12, 13, 16, 45]))
    assert lengths.tolist() == [4, 4, 3, 3, 3, 1]  # the textbook example
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert words == ["1110", "1111", "100", "101", "110", "0"]


def test_huffman_length_limit_still_decodes():
    counts = np.array([2**i for i in range(40)])  # Fibonacci-like skew wants codes longer than 24 bits
    lengths = huffman.huffman_lengths(counts)
    assert lengths.max() <= huffman.MAX_CODE_LENGTH and np.sum(2.0 ** -lengths) <= 1.0
    symbols = np.repeat(np.arange(40), 1)[::-1]
    assert np.array_equal(huffman.decode(huffman.encode(symbols, 40)), symbols)


def test_damaged_huffman_streams_raise_model_file_errors():
    stream = huffman.encode(np.arange(50) % 7, 7)
    bad_book = huffman.HuffmanStream(np.ones(7, dtype=np.uint8), stream.data, stream.n_bits, 50, stream.block, stream.block_offsets)
    with pytest.raises(ModelFileError, match="Kraft"):
        huffman.decode(bad_book)
    short = huffman.HuffmanStream(stream.lengths, stream.data[:3], stream.n_bits, 50, stream.block, stream.block_offsets)
    with pytest.raises(ModelFileError):
        huffman.decode(short)
