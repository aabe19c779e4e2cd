"""The stream framer (RFC 3261 §18.3) and RFC 5626 CRLF keep-alive."""

from __future__ import annotations

import pytest
from vaultpbx.sip.errors import SipFramingError
from vaultpbx.sip.parser import KEEPALIVE_PING, StreamFramer

MESSAGE = (b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKf\r\n"
           b"Content-Length: 5\r\n\r\nhello")


def test_frames_split_anywhere_are_reassembled() -> None:
    stream = MESSAGE * 3
    for cut in range(1, len(stream)):
        framer = StreamFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert frames == [MESSAGE] * 3
        assert framer.pending == 0


def test_ping_gets_recognised_between_messages() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n" + MESSAGE + b"\r\n\r\n") == [
        KEEPALIVE_PING, MESSAGE, KEEPALIVE_PING]
    # A ping split across reads.
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [KEEPALIVE_PING]


def test_missing_or_bad_content_length_closes() -> None:
    with pytest.raises(SipFramingError):
        StreamFramer().feed(MESSAGE.replace(b"Content-Length: 5", b"X: 1"))
    with pytest.raises(SipFramingError):
        StreamFramer().feed(MESSAGE.replace(b"Content-Length: 5", b"Content-Length: -5"))


def test_oversize_message_and_header_block() -> None:
    with pytest.raises(SipFramingError) as info:
        StreamFramer(max_message_size=100).feed(MESSAGE.replace(b"hello", b"h" * 5)
                                                .replace(b"Length: 5", b"Length: 500"))
    assert info.value.status == 513
    with pytest.raises(SipFramingError):
        StreamFramer(max_message_size=100).feed(b"OPTIONS " + b"a" * 200)


def test_frames_before_a_bad_one_are_kept() -> None:
    framer = StreamFramer()
    frames = framer.feed(MESSAGE + b"INVITE sip:x SIP/2.0\r\nVia: x\r\n\r\n")
    assert frames == [MESSAGE]
    assert framer.error is not None
    with pytest.raises(SipFramingError):
        framer.feed(b"more")
