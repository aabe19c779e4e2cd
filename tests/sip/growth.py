"""How the cost of a function grows with its input, measured so that a noisy machine cannot
make a linear function look quadratic (or the reverse).

Never an absolute time: the fastest of a few runs at sizes n and 8n, and the ratio between them.
Time is this thread's CPU time, not the wall clock: on a shared 2-core machine a 10 ms run of
the large input is often preempted and a 1 ms run of the small one rarely, which made linear
code look quadratic under load; CPU time does not count the time the thread was not running.
The fastest run is taken because interference (caches, interrupts) only ever adds time.
Linear work gives about 8, quadratic about 64; the limit (24 by default, three times linear)
sits far from both, so that load on a shared machine neither fails a linear function nor lets a
quadratic one through. A failed measurement is repeated (up to `attempts` times) before it
counts: noise makes single runs slow, never consistently 64 times slower.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

MAX_MESSAGE = 65535  # the engine's default sip.max_message_size


def _fastest_time(run: Callable[[], object], repeats: int) -> float:
    # The cyclic garbage collector is off while timing, as in `timeit`: a full collection costs
    # in proportion to every live object of the process, not to the work measured, and would
    # show a large input as slower per byte than it is.
    samples = []
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.thread_time()
            run()
            samples.append(time.thread_time() - start)
    finally:
        if enabled:
            gc.enable()
    return min(samples)


GROWTH = 8  # the large input is this many times the small one


def growth_ratio(work: Callable[[int], Callable[[], object]], n: int, *, repeats: int = 5
                 ) -> float:
    """t(8n) / t(n), where `work(size)` builds the input and returns the call to time."""
    small, large = work(n), work(GROWTH * n)
    small()  # warm caches (regex compilation, the URI cache) outside the measurement
    large()
    t_small = _fastest_time(small, repeats)
    t_large = _fastest_time(large, repeats)
    return t_large / max(t_small, 1e-7)


def assert_linear(work: Callable[[int], Callable[[], object]], n: int, *, limit: float = 24.0,
                  attempts: int = 3) -> None:
    """Fail when the cost grows faster than linearly between n and 8n (see module docstring).
    Every size used must stay within the maximum message size."""
    ratios = []
    for _ in range(attempts):
        ratio = growth_ratio(work, n)
        ratios.append(round(ratio, 2))
        if ratio < limit:
            return
    raise AssertionError(f"cost grows super-linearly: t(8n)/t(n) = {ratios} (limit {limit})")
