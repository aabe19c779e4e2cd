"""The audit sweep behind tests/sip/test_linear_cost.py: every header slot of a REGISTER with
credentials, filled with a long run of each separator the parsers branch on, through the real
parser, checks, transaction layer and registrar (in memory, UDP and TCP rules), at n and 8n.
Prints every shape whose cost grows more than `--limit` times (linear ~8, quadratic ~64) and the
largest ratio seen.

    .venv/bin/python bench/sip_growth_sweep.py [--n 2000] [--limit 24]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vaultpbx.sip.endpoint import Flow  # noqa: E402

from tests.sip.growth import GROWTH, growth_ratio  # noqa: E402
from tests.sip.inmemory import InMemoryEngine  # noqa: E402

TEMPLATE = (
    "REGISTER sip:{ruri}vaultpbx.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{via}\r\n"
    "From: {fromd}<sip:1001@vaultpbx.test>;tag={fromtag}\r\n"
    "To: <sip:1001@vaultpbx.test{touri}>\r\n"
    "Call-ID: {callid}c1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:1001@127.0.0.1:5070>{contact}\r\n"
    'Authorization: Digest {auth}username="1001"\r\n'
    "X-{hname}: v\r\n"
    "Supported: {supported}\r\n"
    "Expires: 60\r\n"
    "Content-Length: 0\r\n\r\n"
)
DEFAULTS = {"ruri": "", "via": "abc", "fromd": "", "fromtag": "t1", "touri": "", "callid": "",
            "contact": "", "auth": "", "hname": "a", "supported": "timer"}
FILLERS = [" ", "\t", ";", ",", "=", "<", ">", '"', "\\", ":", "@", "/", "a", "0", "[", "]",
           ".", "\r\n ", "%", "?", '"\\', ";a", ",<", "a=b;", '\\"', " ,", "@a", ":0", "\n\t",
           'a="b",', "Digest ", "\r\n"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--limit", type=float, default=24.0)
    args = parser.parse_args()
    engine = InMemoryEngine()
    worst = (0.0, "")
    flagged = 0
    shapes = 0
    for slot, filler, transport in itertools.product(DEFAULTS, FILLERS, ("udp", "tcp")):
        flow = Flow(transport, "127.0.0.1", 5070, 1 if transport == "tcp" else 0)

        def work(n: int, slot: str = slot, filler: str = filler,
                 flow: Flow = flow) -> Callable[[], None]:
            values = dict(DEFAULTS)
            values[slot] = DEFAULTS[slot] + filler * (n // len(filler))
            data = TEMPLATE.format(**values).encode()

            def run() -> None:
                engine.layer.receive(data, flow, engine.now)
                engine.layer.outbox.clear()
                engine.layer.server_transactions.clear()

            return run

        ratio = growth_ratio(work, args.n, repeats=3)
        shapes += 1
        name = f"{slot} <- {filler!r} x n ({transport})"
        if ratio > worst[0]:
            worst = (ratio, name)
        if ratio > args.limit:
            flagged += 1
            print(f"SUPER-LINEAR? t({GROWTH}n)/t(n) = {ratio:.1f}: {name}", flush=True)
    print(f"{shapes} shapes, n = {args.n} and {GROWTH * args.n}; {flagged} above {args.limit}; "
          f"largest ratio {worst[0]:.1f} ({worst[1]})")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
