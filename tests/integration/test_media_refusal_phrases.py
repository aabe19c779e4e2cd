"""A media refusal reads like SIP: `SIP/2.0 488 Not Acceptable Here`, the status's own phrase,
with the reason in a Warning header (RFC 3261 §20.43), never the error text as the phrase
(`SIP/2.0 488 488 Not Acceptable Here: m=0: ...`, the code repeated and the text cut at 80).
A real engine with a media worker; the caller is a raw UDP socket offering what a browser offers
(DTLS-SRTP over ICE, which vaultpbx does not terminate on SIP legs)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from tests.integration.engine import start_engine

WEBRTC_OFFER = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    b"a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8\r\nc=IN IP4 0.0.0.0\r\n"
    b"a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Wm1X\r\na=ice-pwd:KQp7jbVjD3cE0z5nSpcSZGhr\r\n"
    b"a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB:"
    b"4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF\r\n"
    b"a=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\n"
    b"a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
)


def test_a_488_to_a_webrtc_offer_has_a_clean_phrase_and_a_warning(tmp_path: Path) -> None:
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind(("127.0.0.1", 0))
    engine = start_engine(tmp_path, {
        "media": {"anchor": True, "workers": 1},
        "auth": {"trusted_sources": ["127.0.0.1"]},
        "trunks": {"carrier": {"target": f"sip:127.0.0.1:{trunk.getsockname()[1]}"}},
        "dialplan": [{"match": "0(\\d+)", "trunk": "carrier", "number": "\\1"}],
    })
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind(("127.0.0.1", 0))
    caller.settimeout(5)
    port = caller.getsockname()[1]
    try:
        invite = (
            f"INVITE sip:0555@127.0.0.1:{engine.sip_port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-webrtc-1\r\n"
            f"From: <sip:browser@127.0.0.1>;tag=b1\r\nTo: <sip:0555@127.0.0.1>\r\n"
            f"Call-ID: webrtc-488@test\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:browser@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(WEBRTC_OFFER)}\r\n\r\n"
        ).encode() + WEBRTC_OFFER
        caller.sendto(invite, ("127.0.0.1", engine.sip_port))
        deadline = time.monotonic() + 5
        final = b""
        while time.monotonic() < deadline:
            data, _ = caller.recvfrom(65535)
            if not data.startswith(b"SIP/2.0 1"):
                final = data
                break
        status_line, _, rest = final.partition(b"\r\n")
        assert status_line == b"SIP/2.0 488 Not Acceptable Here", status_line
        warnings = re.findall(rb"(?im)^warning:\s*(.*)$", rest)
        assert len(warnings) == 1, rest
        match = re.fullmatch(rb'399 vaultpbx "(.+)"\r?', warnings[0])
        assert match is not None, warnings[0]
        detail = match.group(1)
        assert not detail.startswith(b"488"), detail  # the code is on the status line already
        assert b"m=0" in detail  # which stream, and why, for whoever reads a trace
    finally:
        caller.close()
        trunk.close()
        assert engine.stop() == 0
