"""What vaultpbx answers to each RFC 4475 message (and why), shared by the in-memory and the
on-the-wire table tests. `None` means: dropped without an answer (a response with no
transaction, or bytes that cannot be answered), counted.

Sources with the `trusted` address route INVITEs to a trunk without auth; others are
challenged first, which is what a PBX does with an unknown caller."""

from __future__ import annotations

# file: (status when the source is trusted, status otherwise, reason)
EXPECTED: dict[str, tuple[int | None, int | None, str]] = {
    # §3.1.1 valid messages: parsed and processed
    "wsinv.dat": (481, 481, "§3.1.1.1 parses; it carries a To tag of no dialog we have: 481"),
    "intmeth.dat": (501, 501, "§3.1.1.2 unknown method at an endpoint: 501 with Allow"),
    "esc01.dat": (100, 407, "§3.1.1.3 escaped URI accepted and routed"),
    "escnull.dat": (401, 401, "§3.1.1.4 REGISTER parsed; registrar challenges"),
    "esc02.dat": (501, 501, "§3.1.1.5 RE%47IST%45R is not REGISTER: unknown method"),
    "lwsdisp.dat": (200, 200, "§3.1.1.6 no LWS before <: OPTIONS answered"),
    "longreq.dat": (100, 407, "§3.1.1.7 long values: routed"),
    "dblreq.dat": (401, 401, "§3.1.1.8 REGISTER processed, trailing INVITE ignored"),
    "semiuri.dat": (200, 200, "§3.1.1.9 ';' in the user part"),
    "transports.dat": (200, 200, "§3.1.1.10 unknown transports in Via"),
    "mpart01.dat": (405, 405, "§3.1.1.11 MESSAGE parsed (NULs framed by length); not offered"),
    "unreason.dat": (None, None, "§3.1.1.12 a response with no transaction: dropped"),
    "noreason.dat": (None, None, "§3.1.1.13 a response with no transaction: dropped"),
    # §3.1.2 invalid messages
    "badinv01.dat": (400, 400, "§3.1.2.1 empty Via/Contact parameters"),
    "clerr.dat": (400, 400, "§3.1.2.2 Content-Length larger than the datagram"),
    "ncl.dat": (400, 400, "§3.1.2.3 negative Content-Length"),
    "scalar02.dat": (400, 400, "§3.1.2.4 CSeq over 2**31-1, Max-Forwards 300, huge Expires"),
    "scalarlg.dat": (None, None, "§3.1.2.5 response with overlarge scalars: dropped"),
    "quotbal.dat": (400, 400, "§3.1.2.6 unterminated quoted display name"),
    "ltgtruri.dat": (400, 400, "§3.1.2.7 <> around the Request-URI"),
    "lwsruri.dat": (400, 400, "§3.1.2.8 LWS inside the Request-URI"),
    "lwsstart.dat": (400, 400, "§3.1.2.9 several SP in the request line"),
    "trws.dat": (400, 400, "§3.1.2.10 trailing SP on the request line"),
    "escruri.dat": (100, 407, "§3.1.2.11 tolerated: escaped headers never become headers"),
    "baddate.dat": (100, 407, "§3.1.2.12 tolerated: Date does not matter here"),
    "regbadct.dat": (400, 400, "§3.1.2.13 addr-spec with '?' not enclosed in <>"),
    "badaspec.dat": (200, 200, "§3.1.2.14 tolerated: spaces in the To addr-spec"),
    "baddn.dat": (400, 400, "§3.1.2.15 display name is not a token list"),
    "baddn.fixed.dat": (400, 400, "§3.1.2.15 (with its final CRLF restored)"),
    "badvers.dat": (505, 505, "§3.1.2.16 SIP/7.0"),
    "mismatch01.dat": (400, 400, "§3.1.2.17 CSeq method differs from the request line"),
    "mismatch02.dat": (400, 400, "§3.1.2.18 unknown method, CSeq mismatch (400 acceptable)"),
    "bigcode.dat": (None, None, "§3.1.2.19 status code 4294967301: dropped"),
    # §3.2 transaction layer
    "badbranch.dat": (200, 200, "§3.2.1 branch without magic cookie: RFC 2543 matching"),
    # §3.3 application layer
    "insuf.dat": (400, 400, "§3.3.1 missing From/To/Call-ID/Max-Forwards"),
    "unkscm.dat": (416, 416, "§3.3.2 unknown Request-URI scheme"),
    "novelsc.dat": (416, 416, "§3.3.3 soap.beep Request-URI"),
    "unksm2.dat": (400, 400, "§3.3.4 registrar: To must be a SIP AOR"),
    "bext01.dat": (420, 420, "§3.3.5 Require/Proxy-Require of unknown options"),
    "invut.dat": (415, 415, "§3.3.6 unknown Content-Type"),
    "regaut01.dat": (401, 401, "§3.3.7 unknown auth scheme: challenge with Digest"),
    "multi01.dat": (400, 400, "§3.3.8 several values in single-value headers"),
    "mcl01.dat": (400, 400, "§3.3.9 two Content-Length values"),
    "bcast.dat": (None, None, "§3.3.10 a response with no transaction: dropped"),
    "zeromf.dat": (200, 200, "§3.3.11 Max-Forwards 0 to the element itself: answered"),
    "cparam01.dat": (401, 401, "§3.3.12 REGISTER parsed; registrar challenges"),
    "cparam02.dat": (401, 401, "§3.3.13 REGISTER parsed; registrar challenges"),
    "regescrt.dat": (401, 401, "§3.3.14 REGISTER parsed; registrar challenges"),
    "sdp01.dat": (406, 406, "§3.3.15 Accept without application/sdp"),
    # §3.4
    "inv2543.dat": (100, 407, "§3.4.1 RFC 2543 INVITE accepted for compatibility"),
    "test.dat": (None, None, "no section: a request line without version: dropped"),
}
