"""The usage ledger: one event per request, recorded cheaply and durably, written to the database in batches.

``record`` appends the event to this process's journal segment (one ``os.write``: a few microseconds, and
the OS keeps it if the process is killed) and queues it; a background task writes queued events to the
database in batches with ``write_events`` (idempotent by request id), then deletes the segment. ``start``
replays segments that dead processes left behind. At-least-once delivery into an idempotent insert gives
exactly one row per request. See docs/metering.md for the guarantee.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path

import orjson
import sqlalchemy as sa

from aiplus.metering.events import UsageEvent, write_events
from aiplus.metering.journal import Journal, read_segment

__all__ = ["Ledger", "UsageEvent", "write_events"]

log = logging.getLogger(__name__)


class Ledger:
    def __init__(
        self,
        engine: sa.Engine,
        data_dir: str | Path,
        *,
        flush_interval: float = 0.2,
        max_batch: int = 5000,
        fsync: bool = False,
    ):
        self._engine = engine
        self._journal = Journal(Path(data_dir) / "journal")
        self._quarantine = Path(data_dir) / "journal" / "rejected.events"
        self._flush_interval = flush_interval
        self._max_batch = max_batch
        self._fsync = fsync
        self._lock = threading.Lock()
        self._pending: list[UsageEvent] = []
        self._backlog: list[tuple[Path | None, list[UsageEvent]]] = []  # rotated, not yet committed
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task | None = None
        self._flushing = asyncio.Lock()
        self.replayed = 0  # events found in leftover segments at start
        self.written = 0  # new rows this process inserted

    async def start(self) -> None:
        """Replay what crashed processes left in the journal (idempotent), then start the batch writer."""
        self._journal.open()
        for path in self._journal.leftovers():
            events = [UsageEvent.from_row(row) for row in read_segment(path)]
            await self._write(events)
            path.unlink(missing_ok=True)
            self.replayed += len(events)
        if self.replayed:
            log.info("ledger: replayed %d journaled events", self.replayed)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._run(), name="aiplus-ledger-writer")

    def record(self, event: UsageEvent) -> None:
        """Journal one event (durable against kill -9 once this returns) and queue it for the database."""
        if event.started_at.tzinfo is None:
            raise ValueError(f"usage event {event.request_id}: started_at must be timezone-aware UTC")
        line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        with self._lock:
            self._pending.append(event)  # first: a failed journal write must not lose the event in memory too
            try:
                self._journal.append(line)
            except OSError as exc:  # disk full or failing: the database write still carries it
                log.error(
                    "usage journal write failed (%s): event %s is held in memory only", exc, event.request_id
                )
            if len(self._pending) >= self._max_batch and self._wake is not None:
                self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._pending) + sum(len(batch) for _path, batch in self._backlog)

    async def flush(self) -> None:
        """Write everything recorded so far to the database (raises if the database refuses)."""
        async with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
                path = self._journal.rotate() if batch else None
            if batch:
                self._backlog.append((path, batch))
            while self._backlog:
                path, batch = self._backlog[0]
                await self._write(batch)
                self._backlog.pop(0)
                if path is not None:
                    path.unlink(missing_ok=True)

    async def _write(self, events: list[UsageEvent]) -> None:
        for start in range(0, len(events), self._max_batch):
            chunk = events[start : start + self._max_batch]
            self.written += await asyncio.to_thread(self._write_chunk, chunk)

    def _write_chunk(self, chunk: list[UsageEvent]) -> int:
        try:
            with self._engine.begin() as conn:
                return write_events(conn, chunk)
        except (sa.exc.OperationalError, sa.exc.InterfaceError):
            raise  # the database is away: retry the whole batch later
        except (sa.exc.DBAPIError, ValueError):
            return self._write_one_by_one(chunk)  # some event is malformed: keep it from blocking the rest

    def _write_one_by_one(self, chunk: list[UsageEvent]) -> int:
        written = 0
        for event in chunk:
            try:
                with self._engine.begin() as conn:
                    written += write_events(conn, [event])
            except (sa.exc.OperationalError, sa.exc.InterfaceError):
                raise
            except (sa.exc.DBAPIError, ValueError) as exc:
                log.error(
                    "ledger: event %s rejected by the database (%s); kept in %s",
                    event.request_id,
                    exc,
                    self._quarantine.name,
                )
                with self._quarantine.open("ab") as fh:
                    fh.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
        return written

    async def _run(self) -> None:
        delay = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                if self._fsync:
                    await asyncio.to_thread(self._journal.sync)
                await self.flush()
                delay = self._flush_interval
            except Exception as exc:  # events stay journaled and queued; retry with backoff
                delay = min(max(delay * 2, self._flush_interval), 10.0)
                log.warning(
                    "ledger: cannot write %d events (%s); retrying in %.1fs", self.pending, exc, delay
                )

    async def close(self) -> None:
        """Flush everything (graceful shutdown). Unwritten events stay in the journal for the next start."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        try:
            await self.flush()
        except Exception as exc:  # the journal keeps them for the next start
            log.error(
                "ledger: %d events not written at shutdown; they replay from the journal: %s",
                self.pending,
                exc,
            )
            self._journal.close()
            return
        self._journal.close()
