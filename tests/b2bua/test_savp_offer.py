"""The body of the RTP/SAVP retry (test_srtp_retry_pjsua2.py runs it against pjsua2): only the
profile of m= lines that carry a=crypto changes, byte for byte otherwise, and a body with
nothing to change gives None, so a second 488 is final."""

from __future__ import annotations

from vaultpbx.b2bua.b2bua import savp_offer

HEAD = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
CRYPTO = b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"


def test_avp_with_crypto_becomes_savp_and_nothing_else_changes() -> None:
    body = (HEAD + b"m=audio 4000 RTP/AVP 0 101\r\n" + CRYPTO + b"a=rtpmap:0 PCMU/8000\r\n"
            + b"m=audio 4002 RTP/AVPF 0\r\n" + CRYPTO + b"m=audio 4004 RTP/AVP 0\r\n")
    retried = savp_offer(body)
    assert retried == body.replace(b"4000 RTP/AVP ", b"4000 RTP/SAVP ").replace(
        b"4002 RTP/AVPF ", b"4002 RTP/SAVPF ")  # the third stream has no crypto: unchanged
    assert savp_offer(retried) is None


def test_nothing_to_retry() -> None:
    assert savp_offer(HEAD + b"m=audio 4000 RTP/AVP 0\r\n") is None  # plain RTP: a real 488
    assert savp_offer(HEAD + b"m=audio 4000 RTP/SAVP 0\r\n" + CRYPTO) is None
    head, crypto = HEAD.replace(b"\r\n", b"\n"), CRYPTO.replace(b"\r\n", b"\n")
    assert savp_offer(head + b"m=audio 4000 RTP/AVP 0\n" + crypto) == (
        head + b"m=audio 4000 RTP/SAVP 0\n" + crypto)  # bare LF bodies too
