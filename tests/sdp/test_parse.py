from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaultpbx.sdp import (
    Attribute,
    CryptoAttribute,
    Direction,
    RtcpAttribute,
    SdpParseError,
    parse_sdp,
)


def crlf(text: str) -> bytes:
    return text.strip("\n").replace("\n", "\r\n").encode() + b"\r\n"


PJSUA_OFFER = crlf("""
v=0
o=- 3912345 3912346 IN IP4 192.0.2.10
s=pjmedia
i=A Seminar on the session description protocol
u=http://www.example.com/seminars/sdp.pdf
e=j.doe@example.com (Jane Doe)
b=AS:84
t=0 0
r=7d 1h 0 25h
z=2882844526 -1h 2898848070 0
k=prompt
y=an unknown line type kept in place
a=X-nat:0
a=group:BUNDLE audio
m=audio 4000 RTP/SAVP 0 8 101
i=voice
c=IN IP4 192.0.2.10
b=TIAS:64000
a=rtcp:4001 IN IP4 192.0.2.11
a=sendonly
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:KEY256
a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4
a=x-unknown-with-colons:a:b:c
a=ssrc:1234 cname:{3f6b}
m=video 0 RTP/AVP 96
a=rtpmap:96 H264/90000
""").replace(b"KEY256", b"8Rl2ZjOyafQcZAivOjMGlRpm4Hcgx+Qon8vI5vMUfBdW1vT3h2W6LoKt0bfyzQ==")


def test_round_trip_is_byte_exact_with_unknown_lines_and_attributes():
    assert parse_sdp(PJSUA_OFFER).to_bytes() == PJSUA_OFFER


def test_fields_and_typed_views():
    sdp = parse_sdp(PJSUA_OFFER)
    assert (sdp.origin.session_id, sdp.origin.session_version) == ("3912345", "3912346")
    assert sdp.session_name == "pjmedia"
    audio, video = sdp.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio",
        4000,
        "RTP/SAVP",
        ("0", "8", "101"),
    )
    assert audio.connection is not None and audio.connection.address == "192.0.2.10"
    assert audio.rtpmaps()[101].encoding == "telephone-event"
    assert audio.fmtp(101) == "0-16" and audio.fmtp(0) is None
    assert audio.ptime == 20
    assert audio.rtcp == RtcpAttribute.parse("4001 IN IP4 192.0.2.11")
    assert not audio.rtcp_mux
    assert sdp.direction_for(0) is Direction.SENDONLY
    assert sdp.direction_for(1) is Direction.SENDRECV
    assert video.port == 0
    assert Attribute(name="x-unknown-with-colons", value="a:b:c") in audio.attributes


def test_crypto_attribute_rfc4568():
    sdp = parse_sdp(PJSUA_OFFER)
    first, second = sdp.media[0].cryptos()
    assert first.suite == "AES_256_CM_HMAC_SHA1_80" and len(first.key_material) == 46
    assert (second.tag, second.suite) == (2, "AES_CM_128_HMAC_SHA1_80")
    key = second.keys[0]
    assert (key.lifetime, key.mki, key.mki_length) == (2**20, 1, 4)
    assert key.key_material == base64.b64decode("WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz")
    assert second.to_value() == sdp.media[0].attribute_values("crypto")[1]


def test_crypto_session_params_and_decimal_lifetime_round_trip():
    value = "7 AEAD_AES_128_GCM inline:" + base64.b64encode(bytes(28)).decode() + "|1000 KDR=1"
    crypto = CryptoAttribute.parse(value)
    assert crypto.keys[0].lifetime == 1000 and crypto.session_params == ("KDR=1",)
    assert crypto.to_value() == value


def test_session_level_connection_and_direction_and_lf_only_lines():
    sdp = parse_sdp(
        b"v=0\no=- 1 1 IN IP4 0.0.0.0\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\na=inactive\n"
        b"m=audio 5004 RTP/AVP 0\n"
    )
    connection = sdp.connection_for(0)
    assert connection is not None and connection.is_hold_address
    assert sdp.direction_for(0) is Direction.INACTIVE


def test_ipv6_connection():
    sdp = parse_sdp(
        crlf("v=0\no=- 1 1 IN IP6 ::1\ns=-\nc=IN IP6 2001:db8::1\nt=0 0\nm=audio 5004 RTP/AVP 0")
    )
    assert sdp.connection is not None and sdp.connection.addrtype == "IP6"


BASE = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "empty body"),
        ("o=- 1 1 IN IP4 192.0.2.1\n", 1, "first line must be v=0"),
        ("v=1\n", 1, "first line must be v=0"),
        ("v=0\ns=-\nt=0 0\n", None, "no o= line"),
        ("v=0\no=- 1 1 IN IP4 192.0.2.1\nt=0 0\n", None, "no s= line"),
        ("v=0\no=- 1 IN IP4 192.0.2.1\n", 2, "o=: expected"),
        (BASE + "garbage\n", 6, "expected '<type>=<value>'"),
        (BASE + "m=audio 5004 RTP/AVP\n", 6, "m=: expected"),
        (BASE + "m=audio 70000 RTP/AVP 0\n", 6, "m=: bad port"),
        (BASE + "m=audio x RTP/AVP 0\n", 6, "m=: bad port"),
        (BASE + "c=IN IP4\n", 6, "c=: expected"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU\n", 7, "a=rtpmap: expected"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=rtpmap:200 X/8000\n", 7, "a=rtpmap: expected"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=rtcp:abc\n", 7, "a=rtcp: expected"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=ptime:x\n", 7, "a=ptime: not a number"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=crypto:1 AES_CM_128_HMAC_SHA1_80\n", 7, "a=crypto"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=crypto:x S inline:AAAA\n", 7, "tag 'x'"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=crypto:1 S key:AAAA\n", 7, "must be 'inline:'"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=crypto:1 S inline:A*A\n", 7, "not valid base64"),
        (BASE + "m=audio 5004 RTP/AVP 0\na=crypto:1 S inline:AAAA|soon\n", 7, "bad lifetime"),
        (
            "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0\n",
            None,
            "media 0 (audio) has no c= line",
        ),
        (
            BASE + "m=audio 5004 RTP/AVP 0\nc=IN IP4 192.0.2.2\nc=IN IP4 192.0.2.3\n",
            8,
            "more than one c= line",
        ),
    ],
)
def test_parse_errors_name_the_line_and_answer_400(text, line, message):
    with pytest.raises(SdpParseError, match=re.escape(message)) as caught:
        parse_sdp(text.encode())
    assert caught.value.line_number == line
    assert caught.value.status_code == 400
    if line is not None:
        assert str(caught.value).startswith(f"SDP line {line}: ")


def test_not_utf8():
    with pytest.raises(SdpParseError, match="not UTF-8"):
        parse_sdp(b"v=0\r\ns=\xff\r\n")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_sdp_parse_error(data):
    try:
        parse_sdp(data)
    except SdpParseError:
        pass


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["rtpmap:0 PCMU/8000", "sendrecv", "rtcp-mux", "x-foo:bar baz", "ptime:30"]
            ),
        ),
        max_size=6,
    ),
    st.integers(0, 65535),
)
def test_generated_descriptions_round_trip(attributes, port):
    text = BASE + f"m=audio {port} RTP/AVP 0 8\n" + "".join(f"a={a[0]}\n" for a in attributes)
    data = crlf(text)
    assert parse_sdp(data).to_bytes() == data
