"""A media worker process: one uvloop, one `Relay`, commanded over a stream socket.

Started by the controller as `python -m vaultpbx.media.worker --control-fd N --settings JSON`;
the control socket is one end of a socketpair inherited from the signalling process. Commands
are length-prefixed JSON (protocol.py) and are executed one at a time in arrival order, so an
`update` never overtakes the `open` of its session. The worker keeps no SDP and no policy: it
opens sockets, applies addresses, directions and keys, relays, counts and reports timeouts —
everything that can be decided once per call stays in the signalling process.

Invariants:
- End of file on the control socket means the signalling process is gone: the worker exits
  (its sockets close with it), so no orphan keeps ports bound.
- A bad command gets an error reply and changes nothing else; only a broken frame (protocol
  error) ends the worker, because after that the stream cannot be trusted.
- Recorded sessions (the `record` command) are written by this process: the relay's tap feeds
  `LiveRecordings`, which seals a chunk about once a second. When the control channel ends, the
  worker seals what it has buffered as ordinary chunks (no final chunk: the recording is
  incomplete, nothing is lost) before it exits.
- SIGINT is ignored (a terminal's Ctrl-C is for the signalling process, which stops us);
  SIGTERM exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from ..recording.live import LiveRecordings
from .player import Players, static_encoding
from .ports import PortPool, PortRange
from .protocol import FrameDecoder, ProtocolError, encode_frame
from .relay import MediaSession, Relay, RelayError

__all__ = ["WorkerSettings", "main", "run_worker"]

_SWEEP_SECONDS = 1.0


class WorkerSettings(dict[str, Any]):
    """address, port_low, port_high, timeout, hold_timeout, latch, relatch_idle, index."""


def _address(value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    host, port = value
    return str(host), int(port)


def _keys(value: Any) -> tuple[str, bytes] | None:
    if value is None:
        return None
    return str(value["suite"]), base64.b64decode(value["key"])


class _ControlChannel(asyncio.Protocol):
    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError as error:
            print(f"media worker: control channel broken: {error}", file=sys.stderr)
            self.worker.stop()
            return
        for message in messages:
            self.worker.queue.put_nowait(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.stop()

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(message))


class _Worker:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.done = asyncio.Event()
        self.channel = _ControlChannel(self)
        self.relay = Relay(
            address=settings.get("address", "127.0.0.1"),
            pool=PortPool(PortRange(int(settings["port_low"]), int(settings["port_high"]))),
            timeout=float(settings.get("timeout", 60.0)),
            hold_timeout=float(settings.get("hold_timeout", 3600.0)),
            latch=str(settings.get("latch", "host")),
            relatch_idle=float(settings.get("relatch_idle", 0.25)),
            on_timeout=self._report_timeout,
        )
        self.players = Players(self.relay, clock=time.monotonic)
        self.recordings = LiveRecordings(on_event=self.channel.send)
        self._next_recording_sweep = 0.0  # loop time of the next recording sweep (a grid)
        self.started = time.monotonic()

    def stop(self) -> None:
        if not self.done.is_set():
            self.done.set()
            self.queue.put_nowait(None)

    def _report_timeout(self, session: MediaSession, idle: float) -> None:
        self.channel.send(
            {
                "event": "timeout",
                "session": session.session_id,
                "call-id": session.call_id,
                "idle": round(idle, 3),
            }
        )

    def _sweep(self) -> None:
        if self.done.is_set():
            return
        self.relay.check_timeouts(time.monotonic())
        asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)

    def _sweep_recordings(self) -> None:
        if self.done.is_set():
            return
        if self.recordings.sessions:
            started = time.thread_time()
            self.recordings.sweep(time.monotonic())
            self.recordings.cpu += time.thread_time() - started
        # On a fixed grid, not `interval` after this sweep ended: the seal cadence
        # (live.seal_period) counts sweeps, so drift would stretch what a SIGKILL loses.
        loop = asyncio.get_running_loop()
        interval = self.recordings.interval
        self._next_recording_sweep = max(self._next_recording_sweep + interval,
                                         loop.time() + interval / 4)
        loop.call_at(self._next_recording_sweep, self._sweep_recordings)

    async def serve(self) -> None:
        asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)
        loop = asyncio.get_running_loop()
        self._next_recording_sweep = loop.time() + self.recordings.interval
        loop.call_at(self._next_recording_sweep, self._sweep_recordings)
        while True:
            message = await self.queue.get()
            if message is None:
                break
            reply = await self.execute(message)
            reply["id"] = message.get("id")
            self.channel.send(reply)
        self.players.close()
        self.recordings.close_all_unfinished()
        self.relay.close()

    async def execute(self, message: dict[str, Any]) -> dict[str, Any]:
        command = message.get("command")
        relay = self.relay
        try:
            if command == "ping":
                return {"result": "pong", "pid": os.getpid()}
            if command == "open":
                ports = await relay.open_session(str(message["session"]), str(message["call-id"]))
                return {"result": "ok", "ports": list(ports)}
            if command == "update":
                await relay.update_leg(
                    str(message["session"]),
                    int(message["leg"]),
                    remote=_address(message.get("remote")),
                    rtcp_remote=_address(message.get("rtcp-remote")),
                    rtcp_mux=bool(message.get("rtcp-mux", True)),
                    send=bool(message.get("send", True)),
                    receive=bool(message.get("receive", True)),
                    srtp_in=_keys(message.get("srtp-in")),
                    srtp_out=_keys(message.get("srtp-out")),
                    new_source=bool(message.get("new-source", False)),
                )
                return {"result": "ok"}
            if command == "delete":
                session_id = str(message["session"])
                self.players.stop_session(session_id)
                self.recordings.stop(session_id, time.monotonic())
                return {"result": "ok", "stats": relay.delete_session(session_id)}
            if command == "play":
                payload_type = int(message["payload-type"])
                encoding = message.get("encoding") or static_encoding(payload_type)
                if encoding is None:
                    raise ValueError(f"say the encoding of payload type {payload_type}")
                source = message.get("source")
                prompts = message.get("prompts") or []
                if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                    raise ValueError("prompts: a list of file paths")
                self.players.play(str(message["session"]), int(message["leg"]),
                                  None if source is None else str(source), payload_type,
                                  str(encoding).upper(), tuple(prompts),
                                  resume=bool(message.get("resume", True)))
                return {"result": "ok"}
            if command == "stop-play":
                stopped = self.players.stop(str(message["session"]), int(message["leg"]))
                return {"result": "ok", "stopped": stopped}
            if command == "record":
                session = relay.sessions.get(str(message["session"]))
                if session is None:
                    return {"result": "error", "error-reason": "no such session"}
                legs = session.legs

                def detach() -> None:
                    for leg in legs:
                        leg.recording = None

                buffers = self.recordings.start(session.session_id, session.call_id, message,
                                                time.monotonic(), detach=detach)
                for leg, buffer in zip(legs, buffers, strict=True):
                    leg.recording = buffer
                return {"result": "ok"}
            if command == "sensitive":
                found = self.recordings.set_sensitive(
                    str(message["session"]), bool(message["on"]), time.monotonic())
                if not found:
                    return {"result": "error", "error-reason": "session is not recorded"}
                return {"result": "ok"}
            if command == "query":
                return {"result": "ok", "stats": relay.query(str(message["session"]))}
            if command == "stats":
                return {
                    "result": "ok",
                    "stats": relay.totals(),
                    "sessions": len(relay.sessions),
                    "sessions-opened": relay.sessions_opened,
                    "timeouts": relay.timeouts_reported,
                    "ports-free": relay.pool.free,
                    **self.players.counters(),
                    **self.recordings.totals(),
                    "pid": os.getpid(),
                    "cpu": time.process_time(),
                    "uptime": time.monotonic() - self.started,
                }
            return {"result": "error", "error-reason": f"unknown command {command!r}"}
        except RelayError as error:
            return {"result": "error", "error-reason": str(error)}
        except OSError as error:  # a recording file that cannot be created
            return {"result": "error", "error-reason": f"{command}: {error.strerror}"}
        except (KeyError, TypeError, ValueError) as error:
            return {"result": "error", "error-reason": f"bad {command} command: {error!r}"}


async def run_worker(control: socket.socket, settings: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = _Worker(settings)
    await loop.create_unix_connection(lambda: worker.channel, sock=control)
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    gc.collect()
    gc.freeze()  # start-up objects never need scanning again
    await worker.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vaultpbx.media.worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--settings", required=True, help="JSON object")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settings = json.loads(args.settings)
    control = socket.socket(fileno=args.control_fd)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(run_worker(control, settings))
    else:
        uvloop.run(run_worker(control, settings))


if __name__ == "__main__":
    main()
