"""An append-only local journal of usage events: what a process recorded survives its kill -9.

Each process appends to its own segment file (held under an exclusive ``flock`` while open) and rotates to a
new segment whenever it hands a batch to the database; a segment is deleted only after its events are
committed. A segment nobody holds a lock on is a leftover of a dead process and is replayed on start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import orjson

from aiplus.storage.db import private_directory

log = logging.getLogger(__name__)

SUFFIX = ".jsonl"


class Journal:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._count = 0

    def open(self) -> None:
        private_directory(self.directory)
        self._fd, self._path = self._new_segment()
        self._count = 0

    def _new_segment(self) -> tuple[int, Path]:
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}{SUFFIX}"
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, path

    def append(self, line: bytes) -> None:
        """Write one line with one ``write`` call: in the page cache, it outlives a crash of this process."""
        with self._lock:
            if self._fd < 0:  # recorded after close (a straggler at shutdown): keep it for the next start
                self._fd, self._path = self._new_segment()
                self._count = 0
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._count += 1

    def rotate(self) -> Path | None:
        """Start a new segment; return the finished one (None if it was empty and so removed)."""
        fd, path = self._new_segment()
        with self._lock:
            old_fd, old_path, count = self._fd, self._path, self._count
            self._fd, self._path, self._count = fd, path, 0
        os.close(old_fd)
        if count == 0:
            old_path.unlink(missing_ok=True)
            return None
        return old_path

    def sync(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.fdatasync(self._fd)

    def close(self) -> Path | None:
        """Close the open segment; return it if it holds events (the caller deletes it once they are saved)."""
        with self._lock:
            fd, path, count = self._fd, self._path, self._count
            self._fd, self._path = -1, None
        if fd < 0:
            return None
        os.close(fd)
        if count == 0:
            path.unlink(missing_ok=True)
            return None
        return path

    def leftovers(self) -> list[Path]:
        """Segments of dead processes (nobody holds their lock), oldest first."""
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path == self._path:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is still appending to it
            finally:
                os.close(fd)
            found.append(path)
        return found


def read_segment(path: Path) -> list[dict]:
    """The events of a segment; a torn last line (the process died inside ``write``) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            log.warning("ledger journal %s: line %d is torn or corrupt; skipped", path.name, number)
    return rows
