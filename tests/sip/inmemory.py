"""An engine without sockets: the real transaction layer and B2BUA, a manual clock, and the
outbox read by the test. Two peers, one wire, no I/O (STYLE.md habit 6)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vaultpbx.b2bua.b2bua import B2BUA
from vaultpbx.hooks.registry import HookRegistry
from vaultpbx.runtime.config import Config, parse_config
from vaultpbx.sip.endpoint import Flow, TransactionLayer
from vaultpbx.sip.message import Response
from vaultpbx.sip.parser import parse_message

CONFIG = """
sip:
  domain: vaultpbx.test
  keepalive_probe_interval: 0
extensions:
  "1001": {password: "secret-1001"}
  "1002": {password: "secret-1002"}
trunks:
  far: {target: "sip:127.0.0.1:5070"}
auth:
  trusted_sources: ["127.0.0.9"]
dialplan:
  - {match: '1\\d{3}', extension: '\\g<0>'}
  - {match: 'user|vivekg|t\\.watson|kumiko|j_user|UserB|.*', trunk: far}
"""


@dataclass
class InMemoryEngine:
    config: Config = field(default_factory=lambda: parse_config(CONFIG).config)
    now: float = 1000.0

    def __post_init__(self) -> None:
        counter = itertools.count(1)
        self.hooks = HookRegistry()
        self.b2bua = B2BUA(self.config, token=lambda: f"t{next(counter):06d}", hooks=self.hooks,
                           digest_secret=b"0123456789abcdef0123456789abcdef")
        self.layer = TransactionLayer(
            self.b2bua, timers=self.config.sip.timers,
            local_addresses={"udp": ("127.0.0.1", 5060), "tcp": ("127.0.0.1", 5060),
                             "tls": ("127.0.0.1", 5061)},
            token=lambda: f"b{next(counter):06d}",
        )
        self.b2bua.attach(self.layer)

    def receive(self, data: bytes, flow: Flow) -> list[tuple[bytes, Flow]]:
        self.layer.receive(data, flow, self.now)
        out = list(self.layer.outbox)
        self.layer.outbox.clear()
        return out

    def advance(self, seconds: float) -> list[tuple[bytes, Flow]]:
        self.now += seconds
        self.layer.handle_timer(self.now)
        out = list(self.layer.outbox)
        self.layer.outbox.clear()
        return out


def responses(out: list[tuple[bytes, Flow]]) -> list[Response]:
    parsed = [parse_message(data) for data, _ in out]
    return [m for m in parsed if isinstance(m, Response)]
