import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.bitpack import pack_uint, packed_size, unpack_uint


@pytest.mark.parametrize(
    ("values", "width", "hex_bytes"),
    [
        ([1, 0, 1, 1, 0, 0, 0, 1, 1], 1, "8d01"),  # LSB first: 0b10001101, then 0b1
        ([1, 2, 3, 0, 3], 2, "3903"),  # 1 | 2<<2 | 3<<4 | 0<<6 = 0x39
        ([0xA, 0x5, 0xF], 4, "5a0f"),
        ([200, 7], 8, "c807"),
        ([5, 3], 3, "1d"),  # 5 | 3<<3 = 29, 6 bits -> one byte
    ],
)
def test_golden_packing(values, width, hex_bytes):
    packed = pack_uint(np.array(values), width)
    assert len(packed) == packed_size(len(values), width)
    assert packed.hex() == hex_bytes
    assert unpack_uint(packed, width, len(values)).tolist() == values


def test_twelve_bit_stream_layout():
    # three 12-bit ones: bits 0, 12, 24 set -> bytes 01 10 00 01 00 (36 bits -> 5 bytes)
    assert pack_uint(np.array([1, 1, 1]), 12).hex() == "0110000100"


@settings(deadline=None)
@given(st.integers(1, 32), st.lists(st.integers(0, 2**32 - 1), max_size=300))
def test_round_trip_any_width(width, raw):
    values = np.array([v % (1 << width) for v in raw], dtype=np.uint64).astype(np.uint32)
    packed = pack_uint(values, width)
    assert len(packed) == packed_size(values.size, width)
    assert np.array_equal(unpack_uint(packed, width, values.size), values)


@settings(deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.lists(st.integers(0, 255), max_size=300))
def test_uint8_codes_pack_and_unpack_as_uint32_codes_do(width, raw):
    """The quantizer's uint8 codes take a copy-free path; the bytes must not change."""
    values = np.array([v % (1 << width) for v in raw], dtype=np.uint8)
    packed = pack_uint(values, width)
    assert packed == pack_uint(values.astype(np.uint32), width)
    unpacked = unpack_uint(packed, width, values.size)
    assert unpacked.dtype == np.uint8 and np.array_equal(unpacked, values)


def test_refuses_values_too_wide_and_bad_lengths():
    with pytest.raises(ValueError, match="fit"):
        pack_uint(np.array([4]), 2)
    with pytest.raises(ValueError, match="exactly"):
        unpack_uint(b"\x00\x00", 4, 1)
    with pytest.raises(ValueError, match="width"):
        pack_uint(np.array([1]), 0)


def test_wide_values_straddling_five_bytes_round_trip():
    # width 31: value 1 starts at bit 31, so its bits reach byte 7 through a 5-byte window
    values = np.array([2**31 - 1, 2**31 - 2, 1, 2**30], dtype=np.uint32)
    packed = pack_uint(values, 31)
    assert unpack_uint(packed, 31, 4).tolist() == values.tolist()
    assert int.from_bytes(packed, "little") == sum(int(v) << (31 * i) for i, v in enumerate(values))
