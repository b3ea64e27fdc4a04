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
from collections.abc import Callable
from pathlib import Path

import orjson
import sqlalchemy as sa

from aiplus.metering.events import UsageEvent, write_events
from aiplus.metering.journal import Journal, read_segment

__all__ = ["Ledger", "UsageEvent", "write_events"]

log = logging.getLogger(__name__)
# The errors of a database that is away (down, restarting, unreachable): the batch is retried later, unless the
# database answers and still refuses it STUBBORN times in a row, which only a bad event explains.
_AWAY = (sa.exc.OperationalError, sa.exc.InterfaceError)
OPEN = "running"  # marks a journal line that is a snapshot of a call in progress, not its final event
_RUNNING = b'{"' + OPEN.encode() + b'":true,'  # prepended to the event's own JSON object (no dict built)
STUBBORN = 5


def _line(event: UsageEvent) -> bytes:
    try:
        return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # a value orjson cannot encode either (an int beyond 64 bits)
        return orjson.dumps(repr(event), option=orjson.OPT_APPEND_NEWLINE)


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
        self._closing = False
        self._running: dict[str, list] = {}  # request id -> [snapshot function, progress last journaled]
        self.interrupted = 0  # calls found still running in leftover segments, recorded as interrupted
        self._flushing = asyncio.Lock()
        self._strikes = 0  # failed tries of the batch at the head of the backlog
        self.replayed = 0  # events found in leftover segments at start
        self.written = 0  # new rows this process inserted

    async def start(self) -> None:
        """Replay what crashed processes left in the journal (idempotent), then start the batch writer."""
        self._journal.open()
        segments = [(path, *self._readable(path)) for path in self._journal.leftovers()]
        finished = {event.request_id for _path, events, _running in segments for event in events}
        running = {event.request_id: event for _path, _events, snaps in segments for event in snaps}
        for (
            request_id,
            event,
        ) in running.items():  # the last snapshot of each call a dead process left running
            if request_id not in finished:
                self.record(event)  # journaled here before the segments holding its snapshots are deleted
                self.interrupted += 1
        for path, events, _running in segments:
            self.replayed += len(events)
            try:
                await self._write(events)
            except Exception as exc:  # the database is away: the writer retries them; the server still starts
                log.warning("ledger: replay of %s deferred (%s)", path.name, exc)
                self._backlog.append((path, events))
                continue
            path.unlink(missing_ok=True)
        if self.replayed:
            log.info("ledger: replayed %d journaled events", self.replayed)
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._run(), name="aiplus-ledger-writer")

    def _readable(self, path: Path) -> tuple[list[UsageEvent], list[UsageEvent]]:
        """The events of a leftover segment, and its snapshots of calls still running; a line that is neither
        goes to the dead-letter file."""
        events, running = [], []
        for row in read_segment(path):
            try:
                (running if row.get(OPEN) else events).append(UsageEvent.from_row(row))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self._dead_letter(orjson.dumps(row), f"{path.name}: not a usage event ({exc!r:.200})")
        return events, running

    def open(self, request_id: str, snapshot: Callable[[], UsageEvent]) -> None:
        """Journal a call as it is admitted, and then its progress: should this process die before the call's
        ``record``, the next start records the last snapshot (status ``interrupted``, the tokens known then)."""
        with self._lock:
            self._running[request_id] = [snapshot, None]
            self._snapshot(request_id)

    def _snapshot(self, request_id: str, force: bool = False) -> None:
        entry = self._running[request_id]
        event = entry[0]()
        progress = (event.prompt_tokens, event.completion_tokens)
        if progress == entry[1] and not force:
            return
        entry[1] = progress
        try:
            self._journal.append(_RUNNING + orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)[1:])
        except (OSError, TypeError) as exc:  # the call itself is recorded when it ends
            log.warning("usage journal: cannot note call %s in progress (%s)", request_id, exc)

    def _dead_letter(self, line: bytes, why: str) -> None:
        """Keep an event the database will not take out of the way of the others, for an operator to look at."""
        log.error("ledger: %s; kept in %s", why, self._quarantine)
        try:
            with self._quarantine.open("ab") as fh:
                fh.write(line if line.endswith(b"\n") else line + b"\n")
            self._quarantine.chmod(0o600)
        except OSError as exc:
            log.error("ledger: cannot write the dead-letter file (%s); dropped: %.500s", exc, line)

    def record(self, event: UsageEvent) -> None:
        """Journal one event (durable against kill -9 once this returns) and queue it for the database."""
        if event.started_at.tzinfo is None:
            raise ValueError(f"usage event {event.request_id}: started_at must be timezone-aware UTC")
        try:
            line = orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # e.g. an int beyond 64 bits: no database column would take it either
            self._dead_letter(_line(event), f"event {event.request_id!r} cannot be journaled ({exc})")
            return
        with self._lock:
            self._running.pop(event.request_id, None)
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
                for request_id in self._running:  # a new segment gets them all: the old one is deleted soon
                    self._snapshot(request_id, force=path is not None)
            if batch:
                self._backlog.append((path, batch))
            while self._backlog:
                path, batch = self._backlog[0]
                try:
                    await self._write(batch)
                except Exception:
                    self._strikes += 1
                    raise
                self._strikes = 0
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
        except _AWAY:
            if self._strikes < STUBBORN or not self._reachable():
                raise  # the database is away: retry the whole batch later
        except Exception:  # some event is malformed (or overflows a column): find it below
            pass
        return self._write_one_by_one(chunk)

    def _write_one_by_one(self, chunk: list[UsageEvent]) -> int:
        """Write events alone, so that the ones the database refuses go to the dead letter, not back in line."""
        written = 0
        for event in chunk:
            try:
                with self._engine.begin() as conn:
                    written += write_events(conn, [event])
            except _AWAY as exc:
                if self._strikes < STUBBORN or not self._reachable():
                    raise
                self._dead_letter(_line(event), f"event {event.request_id!r} refused again and again ({exc})")
            except Exception as exc:  # whatever this event does, it must not block the rest
                self._dead_letter(_line(event), f"event {event.request_id!r} refused by the database ({exc})")
        return written

    def _reachable(self) -> bool:
        """Whether the database answers at all: if it does, a batch it refuses over and over is at fault."""
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    async def _run(self) -> None:
        delay = self._flush_interval
        while not self._closing:
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
            # not cancelled: a batch it is writing (in a thread, which runs on regardless) would be written again
            self._closing = True
            self._wake.set()
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
