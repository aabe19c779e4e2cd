from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaultpbx.codecs.l16 import l16_decode, l16_encode
from vaultpbx.codecs.telephone_event import (
    DIGIT_EVENTS,
    TelephoneEvent,
    TelephoneEventError,
    parse_telephone_event,
)


def test_l16_is_network_byte_order():
    samples = np.array([1, -2, 0x1234], dtype=np.int16)
    assert l16_encode(samples) == b"\x00\x01\xff\xfe\x12\x34"
    decoded = l16_decode(b"\x00\x01\xff\xfe\x12\x34")
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [1, -2, 0x1234]


def test_l16_odd_length_rejected():
    with pytest.raises(ValueError, match="odd length"):
        l16_decode(b"\x00\x01\x02")


def test_rfc4733_example_digit_5_end_of_event():
    # event 5, E=1, volume 10 (-10 dBm0), duration 1600 (200 ms at 8 kHz)
    payload = bytes([0x05, 0x8A, 0x06, 0x40])
    event = parse_telephone_event(payload)
    assert event == TelephoneEvent(event=5, end=True, volume=10, duration=1600)
    assert event.digit == "5"
    assert event.to_bytes() == payload


def test_reserved_bit_is_ignored_on_receipt_and_not_sent():
    event = parse_telephone_event(bytes([11, 0x40 | 0x05, 0, 160]))
    assert event == TelephoneEvent(event=11, end=False, volume=5, duration=160)
    assert event.digit == "#"
    assert event.to_bytes() == bytes([11, 0x05, 0, 160])


@pytest.mark.parametrize("payload", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_wrong_length_is_a_clear_error(payload):
    with pytest.raises(TelephoneEventError, match="must be 4 octets"):
        parse_telephone_event(payload)


@pytest.mark.parametrize(
    "fields",
    [
        {"event": 256, "end": False, "volume": 0, "duration": 0},
        {"event": 1, "end": False, "volume": 64, "duration": 0},
        {"event": 1, "end": False, "volume": 0, "duration": 65536},
    ],
)
def test_out_of_range_fields_rejected(fields):
    with pytest.raises(TelephoneEventError, match="out of range"):
        TelephoneEvent(**fields)


def test_digit_table():
    assert [DIGIT_EVENTS[d] for d in "0123456789*#ABCD"] == list(range(16))


@given(st.integers(0, 255), st.booleans(), st.integers(0, 63), st.integers(0, 0xFFFF))
def test_round_trip(event, end, volume, duration):
    value = TelephoneEvent(event=event, end=end, volume=volume, duration=duration)
    assert parse_telephone_event(value.to_bytes()) == value
