"""Wrong admin tokens, counted per client address: slowed after a few, then refused for a while, and logged.

A guesser was answered 401 at 1,490 tries a second for ever. Now, within ``window_s``, the failures after
``slow_after`` are each answered ``delay_s`` late, and after ``lock_after`` the address gets 429 (even with the
right token, or the lock would only slow the guessing) until ``lock_s`` has passed. The address is the TCP peer:
behind a reverse proxy every client shares the proxy's, so a lock there stops the admin API for all until it ends
(the operator can restart the server); the CLI on the server's machine never goes through HTTP.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("aiplus")


@dataclass(slots=True)
class _Record:
    first: float
    failures: int = 0
    locked_until: float = 0.0


class Lockout:
    def __init__(
        self,
        *,
        slow_after: int = 5,
        lock_after: int = 10,
        window_s: float = 60.0,
        delay_s: float = 0.5,
        lock_s: float = 300.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.slow_after = slow_after
        self.lock_after = lock_after
        self.window_s = window_s
        self.delay_s = delay_s
        self.lock_s = lock_s
        self.max_addresses = max_addresses  # the oldest records go first: memory stays bounded under a flood
        self.clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def locked(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: it may now)."""
        record = self._records.get(address)
        if record is None:
            return 0.0
        return max(0.0, record.locked_until - self.clock())

    def failed(self, address: str) -> float:
        """Count a wrong token from ``address``; the seconds to wait before answering it."""
        now = self.clock()
        record = self._records.get(address)
        if record is None or now - record.first > self.window_s:
            record = _Record(first=now)
            self._records[address] = record
            while len(self._records) > self.max_addresses:
                self._records.popitem(last=False)
        record.failures += 1
        n = record.failures
        if n == 1:
            log.warning("wrong admin token from %s", address)
        elif n == self.slow_after + 1:
            log.warning(
                "wrong admin token from %s: %d in %.0f s; answers are now slowed",
                address,
                n,
                now - record.first,
            )
        if n >= self.lock_after:
            record.locked_until = now + self.lock_s
            record.first = now  # the lock outlives the window: the next failure after it starts afresh
            record.failures = 0
            log.warning(
                "wrong admin token from %s: %d in a row; admin routes refused to it for %.0f s",
                address,
                n,
                self.lock_s,
            )
            return self.delay_s
        return self.delay_s if n > self.slow_after else 0.0

    def succeeded(self, address: str) -> None:
        self._records.pop(address, None)
