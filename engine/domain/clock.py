"""Time, as the engine sees it: milliseconds since the epoch, from one injectable source.

Expiry times are computed by the server process that makes a hold, so the server processes
of one deployment must keep their clocks in step (NTP); tests drive a manual clock.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start_ms: int = 1_767_225_600_000) -> None:
        self.now = start_ms

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms
