from __future__ import annotations

import base64
import itertools

import pytest
from vaultpbx.media.srtp import SRTP_SUITES, SrtpSession
from vaultpbx.sdp import (
    SDES_SUITES,
    Direction,
    LocalMedia,
    MediaPolicy,
    SdpNegotiationError,
    build_answer,
    create_offer,
    parse_sdp,
    process_answer,
)

LOCAL = LocalMedia(
    address="203.0.113.5", ports=(20000, 20002), session_id="77", session_version="1"
)


def counting_random():
    counter = itertools.count(1)
    return lambda n: bytes(next(counter) % 256 for _ in range(n))


def key(n: int) -> str:
    return base64.b64encode(bytes(range(n))).decode()


SUITE_LINES = {
    "AES_256_CM_HMAC_SHA1_80": f"AES_256_CM_HMAC_SHA1_80 inline:{key(46)}",
    "AEAD_AES_256_GCM": f"AEAD_AES_256_GCM inline:{key(44)}",
    "AEAD_AES_128_GCM": f"AEAD_AES_128_GCM inline:{key(28)}",
    "AES_CM_128_HMAC_SHA1_80": f"AES_CM_128_HMAC_SHA1_80 inline:{key(30)}",
    "AES_CM_128_HMAC_SHA1_32": f"AES_CM_128_HMAC_SHA1_32 inline:{key(30)}",
}


def offer(
    *,
    proto="RTP/SAVP",
    suites=(),
    formats="0 8 101",
    extra="",
    connection="192.0.2.10",
    more_media="",
):
    crypto = "".join(f"a=crypto:{tag} {SUITE_LINES[s]}\r\n" for tag, s in enumerate(suites, 1))
    return parse_sdp(
        (
            "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\n"
            f"c=IN IP4 {connection}\r\nt=0 0\r\n"
            f"m=audio 4000 {proto} {formats}\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"
            f"{crypto}{extra}{more_media}"
        ).encode()
    )


def answer(sdp, **policy):
    return build_answer(
        sdp, policy=MediaPolicy(**policy), local=LOCAL, random_bytes=counting_random()
    )


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (
            (
                "AES_CM_128_HMAC_SHA1_32",
                "AES_CM_128_HMAC_SHA1_80",
                "AEAD_AES_128_GCM",
                "AEAD_AES_256_GCM",
                "AES_256_CM_HMAC_SHA1_80",
            ),
            "AEAD_AES_256_GCM",
        ),
        (("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"), "AEAD_AES_128_GCM"),
        (
            ("AES_256_CM_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AES_CM_128_HMAC_SHA1_80"),
            "AES_CM_128_HMAC_SHA1_80",
        ),
        (("AES_256_CM_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"), "AES_CM_128_HMAC_SHA1_32"),
    ],
)
def test_suite_preference_never_aes_256_cm(offered, chosen):
    result = answer(offer(suites=offered), srtp="required")
    stream = result.streams[0]
    assert stream.srtp is not None and stream.srtp.suite == chosen
    assert stream.srtp.tag == offered.index(chosen) + 1
    (crypto,) = result.sdp.media[0].cryptos()
    assert (crypto.tag, crypto.suite) == (stream.srtp.tag, chosen)
    assert crypto.key_material == stream.srtp.send_key
    assert len(stream.srtp.send_key) == SDES_SUITES[chosen].key_material_length
    assert stream.srtp.receive_key == bytes(range(SDES_SUITES[chosen].key_material_length))
    assert result.sdp.media[0].proto == "RTP/SAVP"


def test_required_with_only_aes_256_cm_is_488():
    with pytest.raises(SdpNegotiationError) as caught:
        answer(offer(suites=("AES_256_CM_HMAC_SHA1_80",)), srtp="required")
    assert caught.value.status_code == 488
    message = str(caught.value)
    assert message.startswith("488 Not Acceptable Here: ")
    assert "SRTP required but no acceptable a=crypto (offered: AES_256_CM_HMAC_SHA1_80" in message


def test_required_with_plain_rtp_offer_is_488():
    with pytest.raises(SdpNegotiationError, match="488 Not Acceptable Here.*offered: none"):
        answer(offer(proto="RTP/AVP"), srtp="required")


def test_unusable_crypto_lines_are_skipped():
    # MKI, session parameters or a key of the wrong length are not acceptable to us.
    extra = (
        f"a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{key(30)}|2^20|1:4\r\n"
        f"a=crypto:8 AEAD_AES_256_GCM inline:{key(44)} KDR=4\r\n"
        f"a=crypto:9 AEAD_AES_128_GCM inline:{key(30)}\r\n"
        f"a=crypto:10 AES_CM_128_HMAC_SHA1_32 inline:{key(30)}|2^31\r\n"
    )
    stream = answer(offer(extra=extra), srtp="required").streams[0]
    assert stream.srtp is not None and (stream.srtp.tag, stream.srtp.suite) == (
        10,
        "AES_CM_128_HMAC_SHA1_32",
    )


def test_optional_uses_srtp_when_offered_and_plain_rtp_otherwise():
    best_effort = answer(offer(proto="RTP/AVP", suites=("AEAD_AES_128_GCM",)), srtp="optional")
    assert best_effort.streams[0].srtp is not None
    assert best_effort.sdp.media[0].proto == "RTP/AVP"
    plain = answer(offer(proto="RTP/AVP", suites=("AES_256_CM_HMAC_SHA1_80",)), srtp="optional")
    assert plain.streams[0].srtp is None and not plain.sdp.media[0].cryptos()
    with pytest.raises(SdpNegotiationError, match="488"):
        answer(offer(suites=("AES_256_CM_HMAC_SHA1_80",)), srtp="optional")  # RTP/SAVP


def test_off_ignores_crypto_on_avp_and_rejects_savp():
    result = answer(offer(proto="RTP/AVP", suites=("AEAD_AES_256_GCM",)), srtp="off")
    assert result.streams[0].srtp is None and not result.sdp.media[0].cryptos()
    with pytest.raises(SdpNegotiationError, match="RTP/SAVP offered but SRTP is off"):
        answer(offer(suites=("AEAD_AES_256_GCM",)), srtp="off")


@pytest.mark.parametrize(
    ("offered", "answered"),
    [
        ("a=sendrecv\r\n", Direction.SENDRECV),
        ("", Direction.SENDRECV),
        ("a=sendonly\r\n", Direction.RECVONLY),
        ("a=recvonly\r\n", Direction.SENDONLY),
        ("a=inactive\r\n", Direction.INACTIVE),
    ],
)
def test_direction_answer_rules(offered, answered):
    result = answer(offer(proto="RTP/AVP", extra=offered), srtp="off")
    assert result.streams[0].direction is answered
    assert result.sdp.direction_for(0) is answered


def test_legacy_hold_c_0_0_0_0_is_answered_recvonly():
    result = answer(offer(proto="RTP/AVP", connection="0.0.0.0"), srtp="off")
    assert result.streams[0].direction is Direction.RECVONLY
    assert result.streams[0].remote_address == "0.0.0.0"


def test_answer_is_anchored_on_our_address_and_port_with_fresh_keys():
    sdp = offer(suites=("AEAD_AES_256_GCM",))
    first = answer(sdp, srtp="required")
    text = first.sdp.to_bytes()
    assert b"c=IN IP4 203.0.113.5\r\n" in text and b"m=audio 20000 RTP/SAVP 0 8 101\r\n" in text
    assert b"192.0.2.10" not in text
    assert parse_sdp(text).to_bytes() == text
    stream = first.streams[0]
    assert (stream.local_port, stream.remote_address, stream.remote_port) == (
        20000,
        "192.0.2.10",
        4000,
    )
    other = build_answer(
        sdp, policy=MediaPolicy(srtp="required"), local=LOCAL, random_bytes=lambda n: b"\xaa" * n
    )
    assert other.streams[0].srtp is not None and stream.srtp is not None
    assert other.streams[0].srtp.send_key != stream.srtp.send_key


def test_rtcp_address_rules():
    mux = answer(offer(proto="RTP/AVP", extra="a=rtcp-mux\r\na=rtcp:4000\r\n"), srtp="off")
    assert mux.streams[0].rtcp_mux and mux.streams[0].remote_rtcp_port == 4000
    assert mux.sdp.media[0].rtcp_mux
    no_mux = answer(offer(proto="RTP/AVP", extra="a=rtcp-mux\r\n"), srtp="off", rtcp_mux=False)
    assert not no_mux.streams[0].rtcp_mux and no_mux.streams[0].remote_rtcp_port == 4001
    assert not no_mux.sdp.media[0].rtcp_mux
    explicit = answer(offer(proto="RTP/AVP", extra="a=rtcp:5555 IN IP4 192.0.2.99\r\n"), srtp="off")
    assert (explicit.streams[0].remote_rtcp_address, explicit.streams[0].remote_rtcp_port) == (
        "192.0.2.99",
        5555,
    )


def test_codecs_in_policy_order_with_telephone_event_and_ptime():
    result = answer(
        offer(proto="RTP/AVP", formats="18 0 8 101", extra="a=ptime:30\r\n"),
        srtp="off",
        codecs=("PCMA", "PCMU"),
    )
    stream = result.streams[0]
    assert [c.encoding for c in stream.codecs] == ["PCMA", "PCMU"]
    assert stream.telephone_event_payload_type == 101
    media = result.sdp.media[0]
    assert media.formats == ("8", "0", "101")
    assert media.fmtp(101) == "0-15" and media.ptime == 30
    no_dtmf = answer(offer(proto="RTP/AVP"), srtp="off", telephone_event=False)
    assert no_dtmf.sdp.media[0].formats == ("0", "8")


def test_no_common_codec_is_488():
    with pytest.raises(SdpNegotiationError, match="no codec in common"):
        answer(offer(proto="RTP/AVP", formats="18 101"), srtp="off")


def test_video_and_disabled_streams_are_rejected_in_place():
    more = "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP 0\r\n"
    result = answer(offer(proto="RTP/AVP", more_media=more), srtp="off")
    assert [s.accepted for s in result.streams] == [True, False, False]
    assert [m.port for m in result.sdp.media] == [20000, 0, 0]
    assert result.sdp.media[1].formats == ("96",)


def test_not_enough_ports_rejects_the_extra_stream():
    more = "m=audio 4002 RTP/AVP 0\r\n"
    local = LocalMedia(address="203.0.113.5", ports=(20000,), session_id="1", session_version="1")
    result = build_answer(
        offer(proto="RTP/AVP", more_media=more),
        policy=MediaPolicy(srtp="off"),
        local=local,
        random_bytes=counting_random(),
    )
    assert [s.accepted for s in result.streams] == [True, False]
    assert "no media port" in result.streams[1].rejection


@pytest.mark.parametrize("srtp", ["required", "optional", "off"])
def test_two_legs_offer_answer_and_exchange_srtp(srtp):
    """We offer to a peer running this same code; the keys must cross and decrypt."""
    ours = create_offer(policy=MediaPolicy(srtp=srtp), local=LOCAL, random_bytes=counting_random())
    wire = ours.sdp.to_bytes()
    expected_proto = b"RTP/SAVP" if srtp == "required" else b"RTP/AVP"
    assert b"m=audio 20000 " + expected_proto + b" 0 8 101\r\n" in wire
    assert (b"a=crypto:" in wire) == (srtp != "off")
    peer_local = LocalMedia(
        address="198.51.100.7", ports=(30000,), session_id="9", session_version="1"
    )
    peer = build_answer(
        parse_sdp(wire),
        policy=MediaPolicy(srtp=srtp),
        local=peer_local,
        random_bytes=lambda n: bytes(reversed(range(n))),
    )
    (stream,) = process_answer(ours, parse_sdp(peer.sdp.to_bytes()))
    assert (stream.remote_address, stream.remote_port, stream.local_port) == (
        "198.51.100.7",
        30000,
        20000,
    )
    assert stream.direction is Direction.SENDRECV and stream.rtcp_mux
    assert stream.telephone_event_payload_type == 101
    if srtp == "off":
        assert stream.srtp is None
        return
    theirs = peer.streams[0].srtp
    assert stream.srtp is not None and theirs is not None
    assert stream.srtp.suite == theirs.suite == "AEAD_AES_256_GCM"
    assert stream.srtp.send_key == theirs.receive_key
    assert stream.srtp.receive_key == theirs.send_key
    rtp = bytes.fromhex("80000001000000a0cafebabe") + b"\xff" * 160
    sent = SrtpSession.sender(stream.srtp.suite, stream.srtp.send_key).protect(rtp)
    assert sent is not None
    assert SrtpSession.receiver(theirs.suite, theirs.receive_key).unprotect(sent) == rtp


def test_offer_like_another_leg_passes_codecs_and_hold_through():
    held = offer(proto="RTP/AVP", formats="8 101", extra="a=sendonly\r\na=ptime:20\r\n")
    ours = create_offer(
        policy=MediaPolicy(srtp="off"), local=LOCAL, random_bytes=counting_random(), like=held
    )
    media = ours.sdp.media[0]
    assert media.formats == ("8", "101") and media.ptime == 20
    assert ours.sdp.direction_for(0) is Direction.SENDONLY
    assert media.fmtp(101) == "0-15"


def test_answer_with_unoffered_crypto_tag_or_missing_crypto_is_refused():
    ours = create_offer(
        policy=MediaPolicy(srtp="required"), local=LOCAL, random_bytes=counting_random()
    )
    bad_tag = parse_sdp(
        (
            "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
            "m=audio 30000 RTP/SAVP 0\r\n"
            f"a=crypto:9 AEAD_AES_256_GCM inline:{key(44)}\r\n"
        ).encode()
    )
    with pytest.raises(SdpNegotiationError, match="tag 9 AEAD_AES_256_GCM was not offered"):
        process_answer(ours, bad_tag)
    no_crypto = parse_sdp(bad_tag.to_bytes().replace(b"a=crypto:9", b"a=x-crypto:9"))
    with pytest.raises(SdpNegotiationError, match="no a=crypto"):
        process_answer(ours, no_crypto)
    two_lines = parse_sdp(bad_tag.to_bytes() + b"m=audio 0 RTP/AVP 0\r\n")
    with pytest.raises(SdpNegotiationError, match="2 m= lines, our offer had 1"):
        process_answer(ours, two_lines)


def test_sdp_suite_table_agrees_with_the_srtp_layer():
    assert list(SDES_SUITES) == list(SRTP_SUITES)
    for name, suite in SDES_SUITES.items():
        assert suite.key_material_length == SRTP_SUITES[name].key_material_length
    assert "AES_256_CM_HMAC_SHA1_80" not in SDES_SUITES


def test_policy_rejects_suites_the_srtp_layer_lacks():
    with pytest.raises(ValueError, match="AES_256_CM_HMAC_SHA1_80"):
        MediaPolicy(crypto_suites=("AES_256_CM_HMAC_SHA1_80",))
