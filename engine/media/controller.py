"""The media controller: the signalling process's handle on the media workers.

API (asyncio, every call non-blocking for the event loop; `leg` is "caller" or "callee"):
  controller = MediaController(MediaConfig.from_dict(raw), on_calls_lost=cb, on_media_timeout=cb)
  await controller.start() / await controller.close()
  await offer(call_id, leg, sdp, *, policy, other_policy=None) -> bytes: SDP for the other leg
      (INVITE or re-INVITE with SDP from `leg`; policies are remembered per leg for re-offers)
  await answer(call_id, leg, sdp) -> bytes: our answer for the leg that offered (183/2xx)
  await answer_locally(call_id) -> LocalAnswer: answer the leg that offered from the media plane
      alone (music on hold while queued): one codec the player can send; the other leg's offer
      is narrowed to it, and the other leg's answer later returns this same SDP (RFC 6337 §3.1)
  await play(call_id, source, prompts=()) / await stop_play(call_id): music (after prompts) to
      the locally answered leg;  await interrupt(call_id, prompts): prompts over that music
  await delete(call_id) -> dict | None: BYE/CANCEL/failure; frees ports, returns final counters
  await query(call_id) -> dict;  await stats() -> dict  (per worker and totals)
  on_calls_lost(call_ids, reason): a worker died; end those calls (their media is gone).
  on_media_timeout(call_id): no media for media.timeout seconds; end the call on both legs.
  recordable(call_id) -> (encoding, clock rate, payload types) | None: what a recorder can store
      of the call's agreed codec (G.711 or L16; None before an answer or for other codecs)
  await record(call_id, **fields); await sensitive(call_id, on): see protocol.py
  on_recording_event(message): a worker closed (or failed) a recording: {recording-id, state...}
Errors carry their SIP answer: SdpParseError 400, SdpNegotiationError 488 (e.g. srtp: required and
no acceptable a=crypto), MediaUnavailable 503 (no worker or no port): `.status_code`.

Why SDP stays here and workers get low-level commands: a worker then knows only sockets, addresses,
directions and keys (open / update / delete / query / stats), so the per-packet process stays small
and never spends CPU on text; policy, offer/answer state and codec choice live in one process that
already has the call. We never transcode: the other leg is offered only the codecs the offerer's
leg accepted, and the offerer is answered with what the other leg chose (payload types pass
through unchanged).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import structlog

from ..sdp import (
    Attribute,
    Direction,
    LocalMedia,
    MediaDescription,
    MediaPolicy,
    NegotiatedStream,
    Offer,
    SdpError,
    SdpNegotiationError,
    SessionDescription,
    SrtpKeys,
    build_answer,
    create_offer,
    parse_sdp,
    process_answer,
)
from .config import MediaConfig
from .player import ENCODINGS
from .protocol import FrameDecoder, ProtocolError, encode_frame

__all__ = ["LocalAnswer", "MediaController", "MediaLeg", "MediaUnavailable"]

MediaLeg = Literal["caller", "callee"]
_LEG_INDEX = {"caller": 0, "callee": 1}
_REQUEST_TIMEOUT = 5.0
_RESTART_WAIT = 3.0  # how long a new call waits for a restarting worker when none is alive
_DIRECTIONS = {d.value for d in Direction}

log = structlog.get_logger("vaultpbx.media")


class MediaUnavailable(SdpError):
    """No media worker or port could take the call. Answer 503."""

    status_code = 503
    reason_phrase = "Service Unavailable"


# --- worker handles -----------------------------------------------------------------------


class _Channel(asyncio.Protocol):
    def __init__(self, handle: _WorkerHandle) -> None:
        self.handle = handle
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data)
        except ProtocolError:
            if self.transport is not None:
                self.transport.close()
            return
        for message in messages:
            self.handle.received(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handle.lost()


class _WorkerHandle:
    def __init__(self, controller: MediaController, index: int, settings: dict[str, Any]) -> None:
        self.controller = controller
        self.index = index
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: _Channel | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.calls: set[str] = set()
        self.alive = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vaultpbx.media.worker",
                    "--control-fd",
                    str(theirs.fileno()),
                    "--settings",
                    json.dumps(self.settings),
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self.channel = _Channel(self)
        await loop.create_unix_connection(lambda: self.channel, sock=ours)  # type: ignore[arg-type,return-value]
        self.alive = True
        await self.request("ping", timeout=30.0)

    def received(self, message: dict[str, Any]) -> None:
        if "event" in message:
            self.controller._worker_event(self, message)
            return
        future = self.pending.pop(message.get("id", -1), None)
        if future is not None and not future.done():
            future.set_result(message)

    def lost(self) -> None:
        was_alive, self.alive = self.alive, False
        for future in self.pending.values():
            if not future.done():
                future.set_exception(MediaUnavailable(f"media worker {self.index} exited"))
        self.pending.clear()
        if was_alive:
            self.controller._worker_lost(self)

    def submit(self, command: str, **fields: Any) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Write the command to the worker now; the future gets its reply. (A caller that
        must not return before the command is on its way, such as a PCI pause switched from a
        synchronous handler, submits; everyone else awaits `request`.)"""
        if not self.alive or self.channel is None or self.channel.transport is None:
            raise MediaUnavailable(f"media worker {self.index} is not running")
        request_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        self.channel.transport.write(encode_frame({"id": request_id, "command": command, **fields}))
        return request_id, future

    async def request(
        self, command: str, *, timeout: float = _REQUEST_TIMEOUT, **fields: Any
    ) -> dict[str, Any]:
        request_id, future = self.submit(command, **fields)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.pending.pop(request_id, None)
            raise MediaUnavailable(f"media worker {self.index} did not answer {command}") from None
        if reply.get("result") == "error":
            raise MediaUnavailable(f"media worker {self.index}: {reply.get('error-reason')}")
        return reply

    async def stop(self) -> None:
        self.alive = False
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.close()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 5.0)
            except TimeoutError:
                process.kill()
                await asyncio.to_thread(process.wait)


# --- per-call state -------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _PendingOffer:
    offerer: int
    offer: SessionDescription  # as the offerer sent it
    our_offer: Offer  # what we sent to the other leg
    answered: tuple[bytes, bytes] | None = None  # (their answer, our answer): 183 then 200


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalAnswer:
    """What `answer_locally` decided: the offerer's answer and the other leg's narrowed offer."""

    answer: bytes  # for the leg that offered (183 now, the same bytes again in the 200)
    offer: bytes  # for the other leg: only the codec the offerer was answered with
    payload_type: int
    encoding: str


@dataclass(slots=True, kw_only=True)
class _LocalAnswer:
    pending: _PendingOffer  # the offer/answer exchange this answer belongs to
    sdp: bytes
    stream: NegotiatedStream  # the offerer's leg as answered (applied at once)
    payload_type: int
    encoding: str
    playing: bool = False


@dataclass(slots=True, kw_only=True)
class _CallMedia:
    call_id: str
    session_id: str
    worker: _WorkerHandle
    ports: tuple[int, int]
    policies: list[MediaPolicy]
    sdp_session_ids: tuple[str, str]
    sdp_versions: list[int] = field(default_factory=lambda: [0, 0])
    pending: _PendingOffer | None = None
    negotiated: int = 0  # completed offer/answer exchanges
    local: _LocalAnswer | None = None  # answered by the media plane alone (music on hold)
    recordable: tuple[str, int, tuple[int, ...]] | None = None


_RECORDABLE = ("PCMU", "PCMA", "L16")


def _recordable(*streams: NegotiatedStream) -> tuple[str, int, tuple[int, ...]] | None:
    """The codec the answerer chose, when the recording container can store it as is, and every
    payload type either leg may use for it (no transcoding: both legs carry the same codec)."""
    chosen = streams[-1].codecs[0] if streams[-1].codecs else None
    if chosen is None or chosen.encoding.upper() not in _RECORDABLE:
        return None
    types = sorted({c.payload_type for stream in streams for c in stream.codecs
                    if c.encoding.upper() == chosen.encoding.upper()
                    and c.clock_rate == chosen.clock_rate})
    return chosen.encoding.upper(), chosen.clock_rate, tuple(types)


def _keys(send_or_receive: bytes, keys: SrtpKeys | None) -> dict[str, str] | None:
    if keys is None:
        return None
    return {"suite": keys.suite, "key": base64.b64encode(send_or_receive).decode("ascii")}


def _with_direction(media: MediaDescription, direction: Direction) -> MediaDescription:
    attributes = tuple(a for a in media.attributes if a.name not in _DIRECTIONS)
    return replace(media, attributes=(*attributes, Attribute(name=direction.value)))


# --- the controller -----------------------------------------------------------------------


class MediaController:
    def __init__(
        self,
        config: MediaConfig,
        *,
        on_calls_lost: Callable[[tuple[str, ...], str], None] | None = None,
        on_media_timeout: Callable[[str], None] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.on_calls_lost = on_calls_lost
        self.on_media_timeout = on_media_timeout
        self.random_bytes = random_bytes
        self.calls: dict[str, _CallMedia] = {}
        self.workers: list[_WorkerHandle] = []
        self.worker_restarts = 0
        self.calls_lost = 0
        self.media_timeouts = 0
        self.calls_anchored = 0
        self.on_recording_event: Callable[[dict[str, Any]], None] | None = None
        self._sessions = itertools.count(1)
        self._closing = False
        self._restarting: set[asyncio.Task[None]] = set()
        self._worker_up = asyncio.Event()
        for index, (address, part) in enumerate(config.worker_bindings()):
            settings = {
                "index": index,
                "address": address,
                "port_low": part.low,
                "port_high": part.high,
                "timeout": config.timeout,
                "hold_timeout": config.hold_timeout,
                "latch": config.latch,
                "relatch_idle": config.relatch_idle,
            }
            self.workers.append(_WorkerHandle(self, index, settings))

    async def start(self) -> None:
        await asyncio.gather(*(worker.start() for worker in self.workers))

    async def close(self) -> None:
        self._closing = True
        for task in list(self._restarting):
            task.cancel()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        self.calls.clear()

    # --- offer / answer -------------------------------------------------------------------

    async def offer(
        self,
        call_id: str,
        leg: MediaLeg,
        sdp: bytes,
        *,
        policy: MediaPolicy | None = None,
        other_policy: MediaPolicy | None = None,
    ) -> bytes:
        """`leg` offered `sdp`; returns our offer for the other leg. A re-INVITE is an offer too."""
        offerer = _LEG_INDEX[leg]
        other = 1 - offerer
        offered = parse_sdp(sdp)
        call = self.calls.get(call_id)
        new_call = call is None
        if call is None:
            base = policy or MediaPolicy()
            call = await self._open(call_id, base, other_policy or base)
        if policy is not None:
            call.policies[offerer] = policy
        if other_policy is not None:
            call.policies[other] = other_policy
        try:
            # Answer the offerer now (discarded) so a 488 comes before we offer the other leg.
            trial = build_answer(
                offered,
                policy=call.policies[offerer],
                local=self._local(call, offerer, bump=False),
                random_bytes=self.random_bytes,
            )
            accepted = next(s for s in trial.streams if s.accepted)
            template = offered.media[accepted.index]
            kept = {str(c.payload_type) for c in accepted.codecs}
            if accepted.telephone_event_payload_type is not None:
                kept.add(str(accepted.telephone_event_payload_type))
            template = replace(template, formats=tuple(f for f in template.formats if f in kept))
            like = replace(
                offered,
                media=(template,),
                connection=offered.connection_for(accepted.index),
            )
            our_offer = create_offer(
                policy=call.policies[other],
                local=self._local(call, other),
                random_bytes=self.random_bytes,
                like=like,
            )
        except BaseException:
            if new_call:
                await self.delete(call_id)
            raise
        call.pending = _PendingOffer(offerer=offerer, offer=offered, our_offer=our_offer)
        return our_offer.sdp.to_bytes()

    async def answer(self, call_id: str, leg: MediaLeg, sdp: bytes) -> bytes:
        """`leg` answered our offer with `sdp`; returns our answer for the leg that offered."""
        call = self._call(call_id)
        pending = call.pending
        answerer = _LEG_INDEX[leg]
        if pending is None or pending.offerer == answerer:
            raise SdpNegotiationError(f"no offer to {leg} is waiting for an answer")
        if pending.answered is not None and pending.answered[0] == sdp:
            return pending.answered[1]  # the same answer again (183 then 200): same SDP
        if call.local is not None and call.local.pending is pending:
            return await self._answer_after_local(call, call.local, answerer, sdp)
        offerer = pending.offerer
        answer_sdp = parse_sdp(sdp)
        stream_b = next(s for s in process_answer(pending.our_offer, answer_sdp) if s.accepted)
        base = call.policies[offerer]
        narrowed = replace(
            base,
            codecs=tuple(c.encoding for c in stream_b.codecs),
            telephone_event=base.telephone_event
            and stream_b.telephone_event_payload_type is not None,
        )
        negotiation = build_answer(
            pending.offer,
            policy=narrowed,
            local=self._local(call, offerer),
            random_bytes=self.random_bytes,
        )
        stream_a = next(s for s in negotiation.streams if s.accepted)
        # Relay only what both ends agreed to: we send to the offerer what the answerer sends us.
        direction_a = Direction.of(
            sends=stream_a.direction.sends and stream_b.direction.receives,
            receives=stream_a.direction.receives and stream_b.direction.sends,
        )
        our_answer = negotiation.sdp.with_media(
            stream_a.index, _with_direction(negotiation.sdp.media[stream_a.index], direction_a)
        )
        stream_a = replace(stream_a, direction=direction_a)
        renegotiation = call.negotiated > 0
        await asyncio.gather(
            self._apply(call, offerer, stream_a, renegotiation),
            self._apply(call, answerer, stream_b, renegotiation),
        )
        call.negotiated += 1
        call.recordable = _recordable(stream_a, stream_b)
        answer_bytes = our_answer.to_bytes()
        pending.answered = (sdp, answer_bytes)
        return answer_bytes

    async def answer_locally(
        self, call_id: str, *, encodings: tuple[str, ...] = ENCODINGS
    ) -> LocalAnswer:
        """Answer the pending offer ourselves with one of `encodings`, before the other leg has
        answered. Why one codec: we never transcode, so the other leg must use what this leg
        was answered with — its offer is narrowed to that codec (and telephone-event) here."""
        call = self._call(call_id)
        pending = call.pending
        if pending is None or pending.answered is not None or call.local is not None:
            raise SdpNegotiationError("no fresh offer to answer locally")
        offerer, other = pending.offerer, 1 - pending.offerer
        policy = call.policies[offerer]
        playable = tuple(c for c in policy.codecs if c.upper() in encodings)
        if not playable:
            raise SdpNegotiationError("the offerer's policy allows no codec the player can send")
        trial = build_answer(
            pending.offer,
            policy=replace(policy, codecs=playable),
            local=self._local(call, offerer, bump=False),
            random_bytes=self.random_bytes,
        )
        tried = next(s for s in trial.streams if s.accepted)
        if not tried.direction.sends:
            raise SdpNegotiationError("the offerer does not receive media (sendonly/inactive)")
        chosen = tried.codecs[0]
        template = pending.offer.media[tried.index]
        kept = {str(chosen.payload_type)}
        if tried.telephone_event_payload_type is not None:
            kept.add(str(tried.telephone_event_payload_type))
        like = replace(
            pending.offer,
            media=(replace(template, formats=tuple(f for f in template.formats if f in kept)),),
            connection=pending.offer.connection_for(tried.index),
        )
        our_offer = create_offer(
            policy=call.policies[other],
            local=self._local(call, other),
            random_bytes=self.random_bytes,
            like=like,
        )
        negotiation = build_answer(
            pending.offer,
            policy=replace(policy, codecs=(chosen.encoding,)),
            local=self._local(call, offerer),
            random_bytes=self.random_bytes,
        )
        stream = next(s for s in negotiation.streams if s.accepted)
        await self._apply(call, offerer, stream, renegotiation=False)
        pending.our_offer = our_offer
        answer_bytes = negotiation.sdp.to_bytes()
        call.local = _LocalAnswer(
            pending=pending,
            sdp=answer_bytes,
            stream=stream,
            payload_type=chosen.payload_type,
            encoding=chosen.encoding.upper(),
        )
        return LocalAnswer(
            answer=answer_bytes,
            offer=our_offer.sdp.to_bytes(),
            payload_type=chosen.payload_type,
            encoding=chosen.encoding.upper(),
        )

    async def play(self, call_id: str, source: str | None,
                   prompts: tuple[str, ...] = ()) -> None:
        """Music from `source` (a WAV path the worker reads) to the locally answered leg, after
        `prompts` (WAV paths played once); with `source` None the prompts alone, then quiet."""
        call = self._call(call_id)
        local = call.local
        if local is None:
            raise SdpNegotiationError(f"call {call_id} was not answered locally")
        fields: dict[str, Any] = {"encoding": local.encoding, "payload-type": local.payload_type}
        if source is not None:
            fields["source"] = source
        if prompts:
            fields["prompts"] = list(prompts)
        await call.worker.request(
            "play", session=call.session_id, leg=local.pending.offerer, **fields)
        local.playing = True

    async def interrupt(self, call_id: str, prompts: tuple[str, ...], *,
                        resume: bool = True) -> bool:
        """`prompts` (WAV paths) interrupt the music playing to the locally answered leg; it
        resumes after them unless `resume` is False. False, and nothing sent, when no music
        plays (e.g. an agent answered meanwhile: prompts must never reach a connected call)."""
        call = self.calls.get(call_id)
        local = call.local if call is not None else None
        if call is None or local is None or not local.playing or not prompts:
            return False
        fields: dict[str, Any] = {"encoding": local.encoding, "payload-type": local.payload_type,
                                  "prompts": list(prompts)}
        if not resume:
            fields["resume"] = False
        await call.worker.request(
            "play", session=call.session_id, leg=local.pending.offerer, **fields)
        return True

    async def stop_play(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        local = call.local if call is not None else None
        if call is None or local is None or not local.playing:
            return False
        local.playing = False
        await call.worker.request("stop-play", session=call.session_id, leg=local.pending.offerer)
        return True

    async def _answer_after_local(
        self, call: _CallMedia, local: _LocalAnswer, answerer: int, sdp: bytes
    ) -> bytes:
        """The other leg answered the narrowed offer: connect it, keep the offerer's answer."""
        pending = local.pending
        stream_b = next(
            s for s in process_answer(pending.our_offer, parse_sdp(sdp)) if s.accepted
        )
        if local.playing:
            await self.stop_play(call.call_id)  # before any relayed packet can reach the leg
        a = local.stream
        stream_a = replace(
            a,
            direction=Direction.of(
                sends=a.direction.sends and stream_b.direction.receives,
                receives=a.direction.receives and stream_b.direction.sends,
            ),
        )
        await asyncio.gather(
            self._apply(call, pending.offerer, stream_a, False),
            self._apply(call, answerer, stream_b, False),
        )
        call.negotiated += 1
        call.recordable = _recordable(stream_a, stream_b)
        pending.answered = (sdp, local.sdp)
        return local.sdp

    async def delete(self, call_id: str) -> dict[str, Any] | None:
        """End the call's media: close its sockets, return its final counters."""
        call = self.calls.pop(call_id, None)
        if call is None:
            return None
        call.worker.calls.discard(call_id)
        try:
            reply = await call.worker.request("delete", session=call.session_id)
        except MediaUnavailable:
            return None
        return reply.get("stats")

    def recordable(self, call_id: str) -> tuple[str, int, tuple[int, ...]] | None:
        call = self.calls.get(call_id)
        return None if call is None else call.recordable

    async def record(self, call_id: str, **fields: Any) -> None:
        """Start recording the call in its worker (fields: protocol.py, `record`)."""
        call = self._call(call_id)
        await call.worker.request("record", session=call.session_id, **fields)

    async def sensitive(self, call_id: str, on: bool) -> None:
        """PCI pause of the call's recording on or off; the command is written to the worker
        before this returns its awaitable (see `_WorkerHandle.submit`)."""
        await self.sensitive_now(call_id, on)

    def sensitive_now(self, call_id: str, on: bool) -> asyncio.Future[dict[str, Any]]:
        call = self._call(call_id)
        _, future = call.worker.submit("sensitive", session=call.session_id, on=on)
        return future

    async def query(self, call_id: str) -> dict[str, Any]:
        call = self._call(call_id)
        reply = await call.worker.request("query", session=call.session_id)
        return dict(reply["stats"], worker=call.worker.index, ports=list(call.ports))

    async def stats(self) -> dict[str, Any]:
        replies = await asyncio.gather(
            *(w.request("stats") for w in self.workers if w.alive), return_exceptions=True
        )
        workers = [r for r in replies if isinstance(r, dict)]
        totals: dict[str, int] = {}
        for reply in workers:
            for name, value in reply["stats"].items():
                totals[name] = totals.get(name, 0) + value
        return {
            "calls": len(self.calls),
            "workers": [
                {k: v for k, v in reply.items() if k not in ("id", "result")} for reply in workers
            ],
            "workers_alive": sum(1 for w in self.workers if w.alive),
            "worker_restarts": self.worker_restarts,
            "calls_lost": self.calls_lost,
            "media_timeouts": self.media_timeouts,
            "totals": totals,
        }

    def metric_samples(self) -> list[tuple[str, str, float, str]]:
        """What /metrics shows without asking the workers (no round trip per scrape)."""
        alive = sum(1 for w in self.workers if w.alive)
        return [
            ("vaultpbx_media_calls", "gauge", len(self.calls), "Calls with anchored media"),
            ("vaultpbx_media_calls_anchored", "counter", self.calls_anchored,
             "Calls whose media was anchored"),
            ("vaultpbx_media_workers", "gauge", len(self.workers), "Media worker processes"),
            ("vaultpbx_media_workers_alive", "gauge", alive, "Media workers running"),
            ("vaultpbx_media_worker_restarts", "counter", self.worker_restarts,
             "Media workers restarted after they died"),
            ("vaultpbx_media_calls_lost", "counter", self.calls_lost,
             "Calls ended because their media worker died"),
            ("vaultpbx_media_timeouts", "counter", self.media_timeouts,
             "Calls ended for no media"),
        ]

    # --- internals ------------------------------------------------------------------------

    def _call(self, call_id: str) -> _CallMedia:
        try:
            return self.calls[call_id]
        except KeyError:
            raise SdpNegotiationError(f"no media for call {call_id}") from None

    async def _open(
        self, call_id: str, policy: MediaPolicy, other_policy: MediaPolicy
    ) -> _CallMedia:
        alive = [w for w in self.workers if w.alive]
        if not alive and self._restarting:
            # Every worker is down and at least one is being restarted (it takes a few hundred
            # ms): hold the call briefly rather than refuse it with 503.
            self._worker_up.clear()
            try:
                await asyncio.wait_for(self._worker_up.wait(), _RESTART_WAIT)
            except TimeoutError:
                pass
            alive = [w for w in self.workers if w.alive]
        if not alive:
            raise MediaUnavailable("no media worker is running")
        worker = min(alive, key=lambda w: len(w.calls))
        session_id = f"{worker.index}-{next(self._sessions)}"
        worker.calls.add(call_id)  # counted at once, so concurrent offers spread
        try:
            reply = await worker.request("open", session=session_id, **{"call-id": call_id})
        except BaseException:
            worker.calls.discard(call_id)
            raise
        ids = tuple(str(int.from_bytes(self.random_bytes(6), "big")) for _ in range(2))
        call = _CallMedia(
            call_id=call_id,
            session_id=session_id,
            worker=worker,
            ports=(reply["ports"][0], reply["ports"][1]),
            policies=[policy, other_policy],
            sdp_session_ids=(ids[0], ids[1]),
        )
        self.calls[call_id] = call
        self.calls_anchored += 1
        return call

    def _local(self, call: _CallMedia, index: int, *, bump: bool = True) -> LocalMedia:
        if bump:
            call.sdp_versions[index] += 1  # RFC 3264 §8: each new SDP version +1
        return LocalMedia(
            address=self.config.advertised_address or call.worker.settings["address"],
            ports=(call.ports[index],),
            session_id=call.sdp_session_ids[index],
            session_version=str(call.sdp_versions[index]),
        )

    async def _apply(
        self, call: _CallMedia, index: int, stream: NegotiatedStream, renegotiation: bool
    ) -> None:
        keys = stream.srtp
        remote = [stream.remote_address, stream.remote_port]
        held_address = stream.remote_address in ("", "0.0.0.0") or stream.remote_port == 0
        await call.worker.request(
            "update",
            session=call.session_id,
            leg=index,
            remote=None if held_address else remote,
            **{
                "rtcp-remote": None
                if held_address
                else [stream.remote_rtcp_address, stream.remote_rtcp_port],
                "rtcp-mux": stream.rtcp_mux,
                "send": stream.direction.sends,
                "receive": stream.direction.receives,
                "srtp-in": _keys(keys.receive_key, keys) if keys else None,
                "srtp-out": _keys(keys.send_key, keys) if keys else None,
                "new-source": renegotiation,
            },
        )

    def _worker_event(self, worker: _WorkerHandle, message: dict[str, Any]) -> None:
        if message.get("event") == "recording":
            if self.on_recording_event is not None:
                self.on_recording_event(message)
            return
        if message.get("event") == "timeout":
            call_id = str(message.get("call-id"))
            if call_id in self.calls:
                self.media_timeouts += 1
                log.info("media_timeout", call_id=call_id, idle=message.get("idle"))
                if self.on_media_timeout is not None:
                    self.on_media_timeout(call_id)

    def _worker_lost(self, worker: _WorkerHandle) -> None:
        if self._closing:
            return
        lost = tuple(sorted(worker.calls))
        worker.calls.clear()
        for call_id in lost:
            self.calls.pop(call_id, None)
        self.calls_lost += len(lost)
        log.error("media_worker_lost", worker=worker.index, pid=worker.pid, calls=len(lost))
        if self.on_calls_lost is not None and lost:
            self.on_calls_lost(lost, f"media worker {worker.index} exited")
        task = asyncio.get_running_loop().create_task(self._restart(worker))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _restart(self, worker: _WorkerHandle) -> None:
        process = worker.process
        if process is not None:
            await asyncio.to_thread(process.wait)  # reap it; its sockets are closed by now
        delay = 0.0
        while not self._closing:
            try:
                await worker.start()
            except (OSError, MediaUnavailable) as error:
                log.error("media_worker_restart_failed", worker=worker.index, error=str(error))
                delay = min(5.0, delay * 2 or 0.1)
                await asyncio.sleep(delay)
                continue
            worker.restarts += 1
            self.worker_restarts += 1
            self._worker_up.set()
            log.warning("media_worker_restarted", worker=worker.index, pid=worker.pid)
            return
