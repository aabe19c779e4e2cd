"""Call recording in the signalling process: keys and index here, audio in the media workers.

When an anchored call is answered (the CALL_STATE hook says "answered"), the recorder makes the
recording's data key and index row (the row always comes before the file), then tells the
call's media worker to `record` it with that key. The worker seals the audio as it streams and
reports the end; the row then becomes 'closed' (or 'incomplete' when the worker failed or
died). The PCI pause (`set_sensitive`) is a command to the same worker.

Invariants:
- The engine holds the recording directory's writer lock from start to exit, and recovers
  what a crash left (`recover_unfinished`) before its first call; the CLI recovers only when no
  engine holds the lock, so a live recording is never taken for a dead one.
- Calls that cannot be recorded are counted, never refused: unanchored calls (the audio does
  not pass through us) and codecs the container cannot store as is.
- Neither the data key nor the caller's number is ever logged. The key goes to the worker over
  the private control socketpair, as SRTP keys do.
- Keys follow the keystore: every data key is wrapped under the KEK the keystore says is current
  at that moment (a `keys rotate` by the CLI applies to the next call, no restart). The engine
  registers itself in the keystore and, once a second, re-reads the KEK register, refreshes its
  provider when it changed and says which KEK it now wraps under; `keys rotate --retire` will
  not destroy a KEK a running engine still names.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog

from ..b2bua.b2bua import B2BUA
from ..b2bua.call import CallStateChanged
from ..hooks.registry import HookPoint, HookRegistry
from ..media.controller import MediaController
from ..recording.config import RecordingConfig
from ..recording.errors import RecordingError
from ..recording.keyring import HEARTBEAT_EVERY
from ..recording.keystore import Keystore, RecordingEvent
from ..recording.recorder import recover_unfinished, release_writer_lock, take_writer_lock

log = structlog.get_logger("vaultpbx.recording")

COUNTERS = ("recordings_started", "recordings_closed", "recordings_failed",
            "recordings_skipped_unanchored", "recordings_skipped_codec",
            "recordings_sensitive_switches")


class RecorderBusy(RuntimeError):
    """Another process holds the recording directory (a second engine on this data dir)."""


class CallRecorder:
    def __init__(self, config: RecordingConfig, store: Keystore, directory: Path, *,
                 controller: MediaController | None, b2bua: B2BUA, hooks: HookRegistry,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.controller = controller
        self.b2bua = b2bua
        self.hooks = hooks
        self.loop = loop
        self.active: dict[str, str] = {}  # call id -> recording id (hex)
        # Every recording made, by call, until the call's CDR takes it (the active entry goes
        # when the recording closes, which may be before the CDR is written).
        self.recorded: dict[str, str] = {}
        # Closes reported by the workers, written to the index together by `flush` (once a
        # second from housekeeping): a transaction per call cost the event loop ~3% of its CPU
        # at 400 calls/s. Until then the row says 'recording'; a crash meanwhile is mended by
        # recovery, which finds the file's final chunk and marks it closed.
        self._closed: list[tuple[str, float]] = []
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock: int | None = None
        self.engine_id: str | None = None  # our row in the keystore's engine register
        self.kek_following: str | None = None  # the KEK we told the register we wrap under
        self._kek_states: dict[str, str] = {}
        self._beat_at = 0.0
        self._kek_problem = ""  # logged once per distinct problem

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the writer lock, recover what a crash left, and listen for answered calls."""
        self._lock = take_writer_lock(self.directory)
        if self._lock is None:
            raise RecorderBusy(f"{self.directory} is being written by another engine")
        report = recover_unfinished(self.store, self.directory)
        if report.incomplete or report.closed:
            log.warning("recording.recovered", incomplete=len(report.incomplete),
                        closed=len(report.closed))
        self.store.check_kek()
        self._kek_states = self.store.keys.states()
        self.kek_following = self.store.current_kek_id()
        assert self.kek_following is not None  # check_kek registered one
        self.engine_id = self.store.keys.register_engine(self.kek_following)
        self._beat_at = time.monotonic()
        self.hooks.add_observer(HookPoint.CALL_STATE, self._call_state, name="recorder",
                                essential=True)
        self.hooks.controls["recording.sensitive"] = self.set_sensitive
        if self.controller is not None:
            self.controller.on_recording_event = self.recording_ended

    def take_recording_ids(self, call_ids: Iterable[str]) -> dict[str, str]:
        """The recording id of each of these ended calls that was recorded, forgotten here."""
        recorded = self.recorded
        return {call_id: rid for call_id in call_ids
                if (rid := recorded.pop(call_id, None)) is not None}

    def flush(self) -> None:
        """Write the closes reported since the last flush to the index, in one transaction."""
        if self._closed:
            closed, self._closed = self._closed, []
            self.store.mark_closed_many(closed)

    def follow_keys(self) -> None:
        """Once a second (housekeeping): follow a rotation or retirement made by another
        process, and tell the keystore we are alive and which KEK we wrap under."""
        keys = self.store.keys
        states = keys.states()
        now = time.monotonic()
        beat_due = now - self._beat_at >= HEARTBEAT_EVERY
        if states != self._kek_states or beat_due:
            self._kek_states = states
            try:
                keys.provider.refresh()  # drop retired keys, learn new ones, notice a loss
            except RecordingError as exc:
                self._problem("recording.kek_refresh_failed", error=str(exc))
            if getattr(keys.provider, "missing", False):
                self._problem("recording.kek_file_missing", where=keys.provider.where)
        current = next((k for k, state in states.items() if state == "current"), None)
        if current is not None and current != self.kek_following:
            if current not in keys.provider.key_ids():
                self._problem("recording.kek_unavailable", kek_id=current,
                              where=keys.provider.where)
                return
            log.info("recording.kek_followed", kek_id=current, previous=self.kek_following)
            self.kek_following = current
        elif not beat_due:
            return
        if self.engine_id is not None and self.kek_following is not None:
            keys.engine_heartbeat(self.engine_id, self.kek_following)
            self._beat_at = now

    def _problem(self, event: str, **fields: str) -> None:
        key = f"{event}:{sorted(fields.items())}"
        if key != self._kek_problem:
            self._kek_problem = key
            log.error(event, **fields)

    def close(self) -> None:
        self.flush()
        if self.engine_id is not None:
            self.store.keys.unregister_engine(self.engine_id)
            self.engine_id = None
        self.hooks.controls.pop("recording.sensitive", None)
        if self._lock is not None:
            release_writer_lock(self._lock)
            self._lock = None

    # -- calls --------------------------------------------------------------------------------

    def _call_state(self, point: HookPoint, event: object) -> None:
        if isinstance(event, CallStateChanged) and event.state == "answered":
            self.call_answered(event.call_id)

    def call_answered(self, call_id: str) -> None:
        call = self.b2bua.calls.get(call_id)
        controller = self.controller
        if call is None or call_id in self.active:
            return
        if not call.anchored or controller is None:
            self.counters["recordings_skipped_unanchored"] += 1
            return
        codec = controller.recordable(call_id)
        if codec is None:
            self.counters["recordings_skipped_codec"] += 1
            log.info("recording.skipped_codec", call_id=call_id)
            return
        encoding, rate, payload_types = codec
        queue = call.acd_queue or (call.route_name if call.route_kind == "queue" else "")
        try:
            new = self.store.create_recording(
                self.directory, retention_class=queue or "default",
                caller_number=call.caller or None, created_at=time.time())
        except RecordingError as exc:  # the current KEK is not available to us: loud, counted
            self.counters["recordings_failed"] += 1
            log.error("recording.key_failed", call_id=call_id, error=str(exc))
            return
        rid = new.recording_id.hex()
        self.active[call_id] = rid
        self.recorded[call_id] = rid
        sip_call_id = call.a.dialog.call_id if call.a is not None else ""
        fields = {
            "path": str(new.path), "recording-id": rid, "key-id": new.key_id.hex(),
            "data-key": base64.b64encode(new.data_key).decode("ascii"),
            "codec": encoding, "rate": rate, "payload-types": list(payload_types),
            "metadata": {"caller": call.caller, "callee": call.callee, "call_id": sip_call_id,
                         "queue": queue},
            "chunk-seconds": self.config.chunk_seconds, "fsync-every": self.config.fsync_every,
        }
        self._spawn(self._record(call_id, rid, fields))

    async def _record(self, call_id: str, rid: str, fields: dict[str, Any]) -> None:
        assert self.controller is not None
        try:
            await self.controller.record(call_id, **fields)
        except Exception as exc:  # no worker, the call ended meanwhile, file not created
            self.counters["recordings_failed"] += 1
            self.active.pop(call_id, None)
            self.store.mark_incomplete(rid)
            log.error("recording.start_failed", call_id=call_id, recording_id=rid,
                      error=type(exc).__name__)
            return
        self.counters["recordings_started"] += 1
        self.hooks.notify(HookPoint.RECORDING_STARTED, RecordingEvent(
            action="started", recording_id=rid, actor="system:media", at=time.time()))

    def recording_ended(self, message: dict[str, Any]) -> None:
        """A worker's `recording` event: the call's recording is closed or failed."""
        rid = str(message.get("recording-id", ""))
        call_id = str(message.get("call-id", ""))
        if self.active.get(call_id) == rid:
            del self.active[call_id]
        if message.get("state") == "closed":
            self.counters["recordings_closed"] += 1
            self._closed.append((rid, float(message.get("wall-end") or time.time())))
            self.hooks.notify(HookPoint.RECORDING_STOPPED, RecordingEvent(
                action="stopped", recording_id=rid, actor="system:media", at=time.time(),
                detail=f"{message.get('chunks', 0)} chunks"))
        else:
            self.counters["recordings_failed"] += 1
            self.store.mark_incomplete(rid)
            log.error("recording.failed", call_id=call_id, recording_id=rid,
                      reason=message.get("reason", ""))

    def calls_lost(self, call_ids: tuple[str, ...]) -> None:
        """Their media worker died: the audio it had not sealed is gone; the rest stays."""
        for call_id in call_ids:
            rid = self.active.pop(call_id, None)
            if rid is not None:
                self.counters["recordings_failed"] += 1
                self.store.mark_incomplete(rid)

    # -- PCI pause ----------------------------------------------------------------------------

    def set_sensitive(self, call_id: str, on: bool, actor: str) -> bool:
        """Switch the PCI pause of a recorded call. The command is on its way to the worker
        when this returns; False if the call is not being recorded."""
        call_id = self._resolve(call_id)
        rid = self.active.get(call_id)
        if rid is None or self.controller is None:
            return False
        try:
            future = self.controller.sensitive_now(call_id, on)
        except Exception as exc:  # MediaUnavailable, or no media any more: the call is ending
            log.warning("recording.sensitive_failed", call_id=call_id, error=type(exc).__name__)
            return False
        future.add_done_callback(self._sensitive_reply)
        self.counters["recordings_sensitive_switches"] += 1
        self.hooks.notify(HookPoint.RECORDING_SENSITIVE, {
            "actor": actor, "action": "recording.sensitive_on" if on else
            "recording.sensitive_off", "target": rid, "details": {"call_id": call_id}})
        return True

    def _resolve(self, call_id: str) -> str:
        """The engine's call id, also when given the caller leg's SIP Call-ID (what a phone,
        an IVR or a CTI client knows)."""
        if call_id in self.active:
            return call_id
        for engine_id in self.active:
            call = self.b2bua.calls.get(engine_id)
            if call is not None and call.a is not None and call.a.dialog.call_id == call_id:
                return engine_id
        return call_id

    @staticmethod
    def _sensitive_reply(future: asyncio.Future[dict[str, Any]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        reply = None if exc is not None else future.result()
        if exc is not None or (reply is not None and reply.get("result") == "error"):
            log.error("recording.sensitive_not_applied",
                      error=type(exc).__name__ if exc else reply.get("error-reason") if reply
                      else "")

    def _spawn(self, work: Any) -> None:
        task = self.loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def metric_samples(self) -> list[tuple[str, str, float, str]]:
        samples = [(f"vaultpbx_{name}", "counter", float(value), name.replace("_", " "))
                   for name, value in self.counters.items()]
        samples.append(("vaultpbx_recordings_active", "gauge", float(len(self.active)),
                        "Calls being recorded"))
        return samples
