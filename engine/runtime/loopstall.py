"""How long the event loop (the SIP loop) was held: a tick every `interval` that measures how late
it ran. A late tick means nothing else ran either: no SIP message, no timer.

Two measures, because this host is shared: `lag` is wall-clock lateness (it includes the time
the OS gave other processes), `cpu_lag` the part of it this thread spent on the CPU (our own
callbacks: an argon2 hash or a WAV export on the loop shows here, a busy neighbour does not).
`cpu_lag` may overstate by up to one `interval` when the loop was busy just before the stall.

Besides the longest stall since start, stalls are counted by size (`over_ms`, wall clock and CPU)
so that any window's worst stall can be read from two scrapes.

Invariants: one timer handle at a time; a tick costs two clock reads and a `call_at`.
"""

from __future__ import annotations

import asyncio
import time

from ..api.metrics import Sample

OVER_MS = (5, 10, 20, 50, 100, 500)


class LoopStallMonitor:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, interval: float = 0.005,
                 threshold: float = 0.020) -> None:
        self.loop = loop
        self.interval = interval
        self.threshold = threshold
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.stalls = 0
        self.cpu_stalls = 0
        self.ticks = 0
        self.over = [0] * len(OVER_MS)
        self.over_cpu = [0] * len(OVER_MS)
        self._due = 0.0
        self._cpu = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._cpu = time.thread_time()
        self._due = self.loop.time() + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.loop.time()
        cpu = time.thread_time()
        lag = now - self._due
        if lag > 0.0:
            cpu_lag = min(lag, cpu - self._cpu)
            if lag > self.longest:
                self.longest = lag
            if cpu_lag > self.longest_cpu:
                self.longest_cpu = cpu_lag
            if lag >= self.threshold:
                self.stalls += 1
            if cpu_lag >= self.threshold:
                self.cpu_stalls += 1
            if lag >= 0.005:
                for index, limit in enumerate(OVER_MS):
                    if lag * 1000 >= limit:
                        self.over[index] += 1
                    if cpu_lag * 1000 >= limit:
                        self.over_cpu[index] += 1
        self.ticks += 1
        self._cpu = cpu
        self._due = now + self.interval
        self._handle = self.loop.call_at(self._due, self._tick)

    def samples(self) -> list[Sample]:
        limit = f"{self.threshold * 1000:g} ms"
        return [
            ("vaultpbx_loop_stalls", "counter", self.stalls,
             f"Times the event loop was held {limit} or more (wall clock)"),
            ("vaultpbx_loop_cpu_stalls", "counter", self.cpu_stalls,
             f"Times the event loop was held {limit} or more by its own CPU work"),
            ("vaultpbx_loop_longest_stall_seconds", "gauge", self.longest,
             "Longest event loop stall since start (wall clock)"),
            ("vaultpbx_loop_longest_cpu_stall_seconds", "gauge", self.longest_cpu,
             "Longest event loop stall since start spent on this thread's CPU"),
            ("vaultpbx_loop_ticks", "counter", self.ticks, "Loop stall monitor ticks"),
            *[(f"vaultpbx_loop_stalls_over_{ms}ms", "counter", count,
               f"Event loop stalls of {ms} ms or more (wall clock)")
              for ms, count in zip(OVER_MS, self.over, strict=True)],
            *[(f"vaultpbx_loop_cpu_stalls_over_{ms}ms", "counter", count,
               f"Event loop stalls of {ms} ms or more on this thread's CPU")
              for ms, count in zip(OVER_MS, self.over_cpu, strict=True)],
        ]
