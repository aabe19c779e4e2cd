"""The control protocol between the signalling process and a media worker. No I/O.

Frames are a 4-octet big-endian length followed by one UTF-8 JSON object (no msgpack, no
bencode: the commands are few and small, and JSON is readable in a capture). Message shapes
follow rtpengine's ng protocol: a request names its `command` and carries an `id`; the reply has
the same `id` and `result` "ok" or "error" with an `error-reason`; hyphenated keys
(`call-id`, `from-tag` style). Workers also send unsolicited events, which carry `event` and no
`id`.

Commands (signalling → worker; the SDP work stays in the signalling process, see controller.py):
  ping                                            → {"result": "pong"}
  open    {session, call-id}                      → {"ports": [port_a, port_b]}
  update  {session, leg: 0|1, remote: [host, port] | null, rtcp-remote: [host, port] | null,
           rtcp-mux, send, receive, srtp-in, srtp-out (null or {suite, key: base64}),
           new-source: bool}                      → {}
  play    {session, leg: 0|1, source: path of an 8 kHz mono 16-bit WAV, payload-type,
           encoding: "PCMU"|"PCMA" (optional for 0 and 8)}  → {}
          music on hold to that leg's peer, through its rewriter and SRTP sender, until stop-play
          or delete (player.py); relayed media into the leg is held back meanwhile
  stop-play {session, leg}                        → {"stopped": bool}
  delete  {session}                               → {"stats": {...}}  (stops its players too)
  query   {session}                               → {"stats": {...}}
  stats                                           → {"stats": {...worker totals}, "sessions": n,
                                                     "players": n, "player-frames": n,
                                                     recording totals, ...}
  record  {session, path, recording-id, key-id (hex), data-key (base64), codec: PCMU|PCMA|L16,
           rate, payload-types: [pt, ...], metadata: {caller, callee, call_id, queue, extra},
           chunk-seconds, fsync-every}        → {}  the worker creates the sealed file and taps
                                                    the session (the data key travels only on
                                                    this private socketpair, as SRTP keys do)
  sensitive {session, on: bool}                   → {}  PCI pause of the session's recording
Events (worker → signalling):
  timeout {session, idle: seconds}                — no media for the configured time
  recording {session, call-id, recording-id, state: closed|failed, seconds, chunks, bytes,
             frames, frames-sensitive, frames-late, skipped, malformed[, reason]}
                                                  — a recording ended (delete, or a write error)
"""

from __future__ import annotations

import json
import struct
from typing import Any

__all__ = [
    "MAX_FRAME",
    "FrameDecoder",
    "ProtocolError",
    "encode_frame",
]

MAX_FRAME = 1 << 20  # a stats reply for thousands of sessions stays far below this
_LENGTH = struct.Struct("!I")


class ProtocolError(Exception):
    """A frame that is too large or not a JSON object: the control channel is broken."""


def encode_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"control frame of {len(body)} octets exceeds {MAX_FRAME}")
    return _LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Bytes from the stream in, whole messages out (h11 style: feed, then take)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise ProtocolError(f"control frame of {length} octets exceeds {MAX_FRAME}")
            if len(buffer) - offset - 4 < length:
                break
            body = bytes(buffer[offset + 4 : offset + 4 + length])
            offset += 4 + length
            try:
                message = json.loads(body)
            except ValueError as error:
                raise ProtocolError(f"control frame is not JSON: {error}") from None
            if not isinstance(message, dict):
                raise ProtocolError("control frame is not a JSON object")
            messages.append(message)
        del buffer[:offset]
        return messages
