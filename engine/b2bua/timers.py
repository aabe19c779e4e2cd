"""Call timers. Two kinds, because they live very differently:

- short, precise ones (2xx retransmission to the caller, RFC 3261 §13.3.1.4) go on the transaction
  layer's heap through the call's single `CallTimer`, which is disarmed when the call ends so a
  stale heap entry never keeps an ended call alive;
- long, coarse ones (ring timeout, keep-alive probe, session expiry, maximum duration: seconds to
  hours) go into `CallTimerWheel`, one-second buckets that a call leaves when it ends. A heap
  entry per call per long deadline would hold every ended call until its 4-hour cap fires.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .call import Call


class CallTimerUser(Protocol):
    def on_call_timer(self, call: Call, now: float) -> None: ...


class CallTimer:
    __slots__ = ("user", "call")

    def __init__(self, user: CallTimerUser, call: Call) -> None:
        self.user = user
        self.call: Call | None = call

    def on_timer(self, now: float) -> None:
        call = self.call
        if call is not None:
            self.user.on_call_timer(call, now)


class _Bucket:
    __slots__ = ("wheel", "second", "calls")

    def __init__(self, wheel: CallTimerWheel, second: int) -> None:
        self.wheel = wheel
        self.second = second
        self.calls: dict[str, Call] = {}

    def on_timer(self, now: float) -> None:
        self.wheel.fire(self, now)


class CallTimerWheel:
    def __init__(self, user: CallTimerUser,
                 schedule: Callable[[_Bucket, float], None]) -> None:
        self.user = user
        self.schedule = schedule
        self._buckets: dict[int, _Bucket] = {}

    def add(self, call: Call, at: float) -> None:
        second = math.ceil(at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = _Bucket(self, second)
            self.schedule(bucket, float(second))
        bucket.calls[call.id] = call
        call.wheel_seconds.append(second)

    def cancel(self, call: Call) -> None:
        for second in call.wheel_seconds:
            bucket = self._buckets.get(second)
            if bucket is not None:
                bucket.calls.pop(call.id, None)
        call.wheel_seconds.clear()

    def fire(self, bucket: _Bucket, now: float) -> None:
        if self._buckets.get(bucket.second) is bucket:
            del self._buckets[bucket.second]
        for call in list(bucket.calls.values()):
            if bucket.second in call.wheel_seconds:
                call.wheel_seconds.remove(bucket.second)
            self.user.on_call_timer(call, now)

    def __len__(self) -> int:
        return sum(len(b.calls) for b in self._buckets.values())
