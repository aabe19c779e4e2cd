"""RFC 4733 telephone-event payloads (DTMF named events).

Invariants: a payload is exactly 4 octets (RFC 4733 §2.3):

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |     event     |E|R| volume    |          duration             |

The R bit is reserved: sent as 0, ignored on receipt. Volume is 0..63 (-dBm0), duration is in
timestamp units. Anything else raises `TelephoneEventError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "DIGIT_EVENTS",
    "EVENT_DIGITS",
    "TelephoneEvent",
    "TelephoneEventError",
    "parse_telephone_event",
]

# RFC 4733 §3.2 table 7: DTMF named events.
EVENT_DIGITS: dict[int, str] = {
    **{n: str(n) for n in range(10)},
    10: "*",
    11: "#",
    12: "A",
    13: "B",
    14: "C",
    15: "D",
    16: "flash",
}
DIGIT_EVENTS: dict[str, int] = {digit: event for event, digit in EVENT_DIGITS.items()}

_PAYLOAD = struct.Struct("!BBH")
_END_BIT = 0x80
_VOLUME_MASK = 0x3F


class TelephoneEventError(ValueError):
    """A telephone-event payload that is not 4 octets, or a field out of range."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TelephoneEvent:
    event: int  # 0..255; 0-15 are the DTMF digits (EVENT_DIGITS)
    end: bool  # E bit: the last packets of an event (sent three times, RFC 4733 §2.5.1.4)
    volume: int  # 0..63, power level in -dBm0
    duration: int  # 0..65535 timestamp units since the event's RTP timestamp

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise TelephoneEventError(f"event {self.event} out of range 0..255")
        if not 0 <= self.volume <= 63:
            raise TelephoneEventError(f"volume {self.volume} out of range 0..63")
        if not 0 <= self.duration <= 0xFFFF:
            raise TelephoneEventError(f"duration {self.duration} out of range 0..65535")

    @property
    def digit(self) -> str | None:
        """The DTMF digit this event names, or None for other events."""
        return EVENT_DIGITS.get(self.event)

    def to_bytes(self) -> bytes:
        flags = (_END_BIT if self.end else 0) | self.volume
        return _PAYLOAD.pack(self.event, flags, self.duration)


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    if len(payload) != _PAYLOAD.size:
        raise TelephoneEventError(f"telephone-event payload must be 4 octets, got {len(payload)}")
    event, flags, duration = _PAYLOAD.unpack(payload)
    return TelephoneEvent(
        event=event, end=bool(flags & _END_BIT), volume=flags & _VOLUME_MASK, duration=duration
    )
