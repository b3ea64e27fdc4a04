"""Real and virtual time: the scheduler reads a clock, so the live server and the simulator share its code."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...


class RealClock:
    """Wall time from ``time.monotonic``, for the live server."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """Time that moves only when the simulation says so, so a 10-minute workload runs in a moment."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0):
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"virtual time cannot go backwards (advance by {seconds})")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Jump to ``when`` if it lies ahead; a time in the past leaves the clock where it is."""
        if when > self._now:
            self._now = when
        return self._now
