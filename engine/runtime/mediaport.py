"""The B2BUA's media port over the asyncio media controller.

The B2BUA has no I/O: it asks for an offer or answer and continues in a callback. Here each
request becomes a task on the loop; when it completes, the callback runs with the loop's `now`
and the engine flushes what the B2BUA decided to send. Errors carry their SIP status (400, 488,
503) from the media layer; anything else becomes 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..b2bua.b2bua import MediaDone, MusicDone
from ..media.controller import LocalAnswer, MediaController
from ..media.prompts import PromptError, PromptLibrary
from ..sdp import MediaPolicy

log = structlog.get_logger("vaultpbx.media")


class AsyncMediaPort:
    def __init__(self, controller: MediaController, loop: asyncio.AbstractEventLoop,
                 after: Callable[[], None]) -> None:
        self.controller = controller
        self.loop = loop
        self.after = after  # the engine's flush
        self._tasks: set[asyncio.Task[Any]] = set()
        self.errors = 0
        # Announcements (set by the engine): prompt files by name, and what a queued caller
        # hears before its music (the ACD bridge's `opening_prompts`).
        self.prompts: PromptLibrary | None = None
        self.opening: Callable[[str], tuple[tuple[str, ...], bool]] | None = None
        self.prompt_errors = 0

    @staticmethod
    def _policy(srtp: str | None) -> MediaPolicy | None:
        return MediaPolicy(srtp=srtp) if srtp else None  # type: ignore[arg-type]

    def offer(self, call_id: str, leg: str, sdp: bytes, policy: str | None,
              other_policy: str | None, done: MediaDone) -> None:
        self._spawn(self.controller.offer(call_id, leg, sdp, policy=self._policy(policy),
                                          other_policy=self._policy(other_policy)), done)

    def answer(self, call_id: str, leg: str, sdp: bytes, done: MediaDone) -> None:
        self._spawn(self.controller.answer(call_id, leg, sdp), done)

    def delete(self, call_id: str) -> None:
        self._spawn(self.controller.delete(call_id), None)

    def play_music(self, call_id: str, source: str, done: MusicDone) -> None:
        # Decided now, before the queue sees the call: the greeting (or the refusal) and the
        # music go to the worker in one command, so the caller hears no music before them.
        names, music = self.opening(call_id) if self.opening is not None else ((), True)
        prompts = self._files(names)
        task = asyncio.ensure_future(
            self._answer_and_play(call_id, source if music else None, prompts), loop=self.loop)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._music_started(t, done))

    def play_prompts(self, call_id: str, prompts: tuple[str, ...], *,
                     resume: bool = True) -> None:
        """The ACD bridge's `Announcer`: prompts interrupt the caller's music."""
        files = self._files(prompts)
        if files:
            self._spawn(self._play_prompts(call_id, files, resume), None)

    async def _play_prompts(self, call_id: str, files: tuple[str, ...], resume: bool) -> None:
        try:
            await self.controller.interrupt(call_id, files, resume=resume)
        except Exception as exc:  # noqa: BLE001 - the caller keeps its music: counted, logged
            if call_id in self.controller.calls:
                self.prompt_errors += 1
                log.error("media.prompts_failed", error=repr(exc))

    def _files(self, names: tuple[str, ...]) -> tuple[str, ...]:
        if not names or self.prompts is None:
            return ()
        try:
            return self.prompts.files(names)
        except PromptError as exc:  # the config check makes this unlikely (a file removed)
            self.prompt_errors += 1
            log.error("media.prompt_missing", error=str(exc))
            return ()

    async def _answer_and_play(self, call_id: str, source: str | None,
                               prompts: tuple[str, ...] = ()) -> LocalAnswer:
        local = await self.controller.answer_locally(call_id)
        try:
            await self.controller.play(call_id, source, prompts)
        except Exception as exc:  # noqa: BLE001 - the caller is answered: silence, not failure
            if call_id in self.controller.calls:  # else the call ended meanwhile: nothing lost
                self.errors += 1
                log.error("media.music_failed", source=source, error=repr(exc))
        return local

    def _music_started(self, task: asyncio.Task[LocalAnswer], done: MusicDone) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        now = self.loop.time()
        exc = task.exception()
        if exc is not None:
            status = int(getattr(exc, "status_code", 500) or 500)
            if status == 500:
                self.errors += 1
                log.error("media.local_answer_failed", error=repr(exc))
            done(None, None, status, str(exc), now)
        else:
            local = task.result()
            done(local.answer, local.offer, 0, "", now)
        self.after()

    def _spawn(self, work: Awaitable[Any], done: MediaDone | None) -> None:
        task = asyncio.ensure_future(work, loop=self.loop)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finish(t, done))

    def _finish(self, task: asyncio.Task[Any], done: MediaDone | None) -> None:
        self._tasks.discard(task)
        now = self.loop.time()
        if task.cancelled():
            return
        exc = task.exception()
        if done is not None:
            if exc is not None:
                status = int(getattr(exc, "status_code", 500) or 500)
                if status == 500:
                    self.errors += 1
                    log.error("media.request_failed", error=repr(exc))
                done(None, status, str(exc), now)
            else:
                result = task.result()
                done(result if isinstance(result, bytes) else None, 0, "", now)
        elif exc is not None:
            self.errors += 1
            log.warning("media.delete_failed", error=repr(exc))
        self.after()

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
