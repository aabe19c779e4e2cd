"""Per-call CPU of the SIP core and B2BUA with no sockets: a caller and a callee are simulated
in the same process, every message is real bytes through the real parser, transaction layer and
B2BUA. Prints µs per call (INVITE/100/180/200/ACK/BYE/200 on both legs) and, with --profile,
the top functions.

    .venv/bin/python bench/sip_inmemory.py [--calls 20000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaultpbx.b2bua.b2bua import B2BUA  # noqa: E402
from vaultpbx.hooks.registry import HookRegistry  # noqa: E402
from vaultpbx.runtime.config import parse_config  # noqa: E402
from vaultpbx.sip.endpoint import Flow, TransactionLayer  # noqa: E402
from vaultpbx.sip.message import Request, build_response  # noqa: E402
from vaultpbx.sip.parser import parse_message  # noqa: E402

CONFIG = """
sip: {keepalive_probe_interval: 0}
auth: {trusted_sources: ["127.0.0.1"]}
trunks: {uas: {target: "sip:127.0.0.1:5070"}}
dialplan: [{match: '.*', trunk: uas}]
"""
CALLER = Flow("udp", "127.0.0.1", 5062)
INVITE = (
    "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{n}-1-0\r\n"
    "From: sipp <sip:sipp@127.0.0.1:5062>;tag={n}SIPpTag001\r\n"
    "To: service <sip:service@127.0.0.1:5060>\r\n"
    "Call-ID: {n}-1@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: sip:sipp@127.0.0.1:5062\r\n"
    "Max-Forwards: 70\r\n"
    "Subject: Performance Test\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n"
)
SDP = (
    "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def one_call(n: int, layer: TransactionLayer, now: float) -> None:
    outbox = layer.outbox
    body = SDP.encode()
    invite = INVITE.format(n=n, length=len(body)).encode() + body
    layer.receive(invite, CALLER, now)
    sent = list(outbox)
    outbox.clear()
    b_invite_bytes = next(d for d, f in sent if f.port == 5070)
    b_invite = parse_message(b_invite_bytes)
    assert isinstance(b_invite, Request)
    callee = Flow("udp", "127.0.0.1", 5070)
    for status in (180, 200):
        response = build_response(b_invite, status, to_tag=f"uas{n}",
                                  extra=[("contact", "<sip:uas@127.0.0.1:5070>")],
                                  body=body if status == 200 else b"")
        if status == 200:
            response.add("content-type", "application/sdp")
        layer.receive(response.serialize(), callee, now)
    sent = list(outbox)
    outbox.clear()
    ok = next(parse_message(d) for d, f in sent if f.port == 5062 and d.startswith(b"SIP/2.0 200"))
    to_tag = ok.to.tag
    ack = (
        f"ACK sip:vaultpbx@127.0.0.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-{n}-5-0\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5062>;tag={n}SIPpTag001\r\n"
        f"To: service <sip:service@127.0.0.1:5060>;tag={to_tag}\r\n"
        f"Call-ID: {n}-1@127.0.0.1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()
    layer.receive(ack, CALLER, now)
    bye = ack.replace(b"ACK sip", b"BYE sip").replace(b"1 ACK", b"2 BYE").replace(
        b"-5-0", b"-7-0")
    layer.receive(bye, CALLER, now)
    sent = list(outbox)
    outbox.clear()
    b_bye = next(parse_message(d) for d, f in sent if f.port == 5070 and d.startswith(b"BYE"))
    assert isinstance(b_bye, Request)
    layer.receive(build_response(b_bye, 200).serialize(), callee, now)
    outbox.clear()


def build() -> TransactionLayer:
    config = parse_config(CONFIG).config
    counter = itertools.count()
    b2bua = B2BUA(config, token=lambda: f"{next(counter):x}", hooks=HookRegistry(),
                  digest_secret=b"x" * 32)
    layer = TransactionLayer(b2bua, timers=config.sip.timers,
                             local_addresses={"udp": ("127.0.0.1", 5060)},
                             token=lambda: f"{next(counter):x}")
    b2bua.attach(layer)
    return layer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    layer = build()
    for n in range(200):  # warm up
        one_call(n, layer, 0.0)
    gc.collect()
    profiler = cProfile.Profile() if args.profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    for n in range(200, 200 + args.calls):
        one_call(n, layer, n / 1000.0)
        if n % 1000 == 0:
            layer.handle_timer(n / 1000.0)
    if profiler:
        profiler.disable()
    elapsed = time.process_time() - started
    # The simulated peers' own work (building and parsing their side) is included; it is
    # roughly the engine's parse+serialize work again, so the engine's share is below this.
    print(f"{args.calls} calls: {elapsed / args.calls * 1e6:.0f} µs CPU per call "
          f"(engine + simulated peers), {args.calls / elapsed:.0f} calls/s on one core")
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
