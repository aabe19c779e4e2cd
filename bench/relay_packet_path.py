"""µs of Python (and libsrtp) per relayed packet in `Leg.datagram_received`, without the kernel.

    .venv/bin/python bench/relay_packet_path.py [--packets 200000] [--repeat 5]

Two real `Leg`s of a real `Relay`, keyed the way `update_leg` keys them, but with a transport
whose `sendto` does nothing: what is left is the relay's own per-packet work (source check,
SRTP unprotect, hold check, rewriter, tap check, SRTP protect, counters). The socket calls
(recvmsg/sendmsg, which dominate a real worker) are measured by bench/media_relay.py instead.
Prints the best of `--repeat` runs for RTP→RTP and SRTP→SRTP (AES_CM_128_HMAC_SHA1_80).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time

from vaultpbx.media.ports import PortPool, PortRange
from vaultpbx.media.relay import Relay
from vaultpbx.media.srtp import SrtpSession

SUITE = "AES_CM_128_HMAC_SHA1_80"
PHONE_KEY = bytes(range(30))
RELAY_KEY = bytes(range(30, 60))
PHONE_A = ("127.0.0.1", 5000)


class DiscardTransport:
    def close(self) -> None:
        pass

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        pass


async def per_packet(packets: list[bytes], srtp: bool) -> float:
    relay = Relay(address="127.0.0.1", pool=PortPool(PortRange(20000, 20099)))
    try:
        await relay.open_session("s", "bench")
        keys_a = {"srtp_in": (SUITE, PHONE_KEY)} if srtp else {}
        keys_b = {"srtp_out": (SUITE, RELAY_KEY)} if srtp else {}
        await relay.update_leg("s", 0, remote=PHONE_A, **keys_a)  # type: ignore[arg-type]
        await relay.update_leg("s", 1, remote=("127.0.0.1", 5002), **keys_b)  # type: ignore[arg-type]
        a, b = relay.sessions["s"].legs
        for leg in (a, b):
            leg.transport.close()  # type: ignore[union-attr]
            leg.transport = DiscardTransport()  # type: ignore[assignment]
        receive = a.datagram_received
        start = time.perf_counter()
        for packet in packets:
            receive(packet, PHONE_A)
        elapsed = time.perf_counter() - start
        assert b.packets_out == len(packets), "every packet must be relayed"
        return elapsed / len(packets) * 1e6
    finally:
        relay.close()


def build_packets(count: int, srtp: bool) -> list[bytes]:
    sender = SrtpSession.sender(SUITE, PHONE_KEY) if srtp else None
    packets = []
    for index in range(count):
        plain = struct.pack("!BBHII", 0x80, 0, (index + 1) & 0xFFFF, 160 * index, 0x5EED)
        plain += b"\xd5" * 160
        packet = sender.protect(plain) if sender is not None else plain
        assert packet is not None
        packets.append(packet)
    return packets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for name, srtp in (("RTP→RTP", False), ("SRTP→SRTP", True)):
        packets = build_packets(args.packets, srtp)
        best = min(asyncio.run(per_packet(packets, srtp)) for _ in range(args.repeat))
        print(f"{name}: {best:.2f} µs per relayed packet (best of {args.repeat})")


if __name__ == "__main__":
    main()
