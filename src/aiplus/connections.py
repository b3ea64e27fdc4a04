"""What a connection may send before it is answered: uvicorn's httptools protocol with a limit on the size and
the number of a request's headers (431), a deadline for the headers to arrive (408), and the idle limit applied
to a new connection too (uvicorn arms it only after a first answer).

uvicorn enforces none of these with httptools (h11's ``max_incomplete_event_size`` is h11's alone), and httptools
buffers an unfinished header: one 160 MB header grew the server by 160-250 MB and stalled other clients 10 s.
Here a head is refused as soon as it is larger than the limit, so the buffer never grows past the limit and one
socket read (at most 256 KB).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aiplus.api.serving import new_request_id
from aiplus.config import Settings


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int = 32 * 1024
    max_count: int = 100
    timeout_s: float = 10.0

    @classmethod
    def of(cls, settings: Settings) -> HeadLimits:
        return cls(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head that broke a limit."""


def refusal(status: int, reason: bytes, message: str, code: str) -> bytes:
    """A whole HTTP/1.1 answer, OpenAI-style, that closes the connection."""
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n\r\n"
    ) % (status, reason, len(body), new_request_id().encode())
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that refuses oversized or slow request heads. Named in uvicorn's ``http`` option
    by its import path, so that worker processes build it too; ``server.py`` sets ``limits`` in each process."""

    limits: ClassVar[HeadLimits] = HeadLimits()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # bytes received since the last head completed
        self._head_count = 0
        self._in_head = True  # between the end of a request's headers and the start of the next: False
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused: bytes | None = None

    def connection_made(self, transport):  # type: ignore[override]
        super().connection_made(transport)
        # a connection that never sends a byte is closed like an idle keep-alive one
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_bytes and not self.transport.is_closing():
            self._refuse_too_large()
            self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if self._refused is None:  # not HTTP/1.1 that httptools can parse: answered like any other error
            self._refused = refusal(400, b"Bad Request", "the request is not valid HTTP/1.1", "invalid_http")
        self._cancel_head_timer()
        self.transport.write(self._refused)
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_count = 0
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_bytes:
            self._refuse_too_large()
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_count:
            self._refused = refusal(
                431,
                b"Request Header Fields Too Large",
                f"the request has more than {self.limits.max_count} header fields",
                "request_header_fields_too_large",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_bytes:  # a large head that arrived in one read
            self._refuse_too_large()
            raise _Refused
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True

    def _refuse_too_large(self) -> None:
        self._refused = refusal(
            431,
            b"Request Header Fields Too Large",
            f"the request line and headers exceed {self.limits.max_bytes} bytes",
            "request_header_fields_too_large",
        )

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self._refused = refusal(
            408,
            b"Request Timeout",
            f"the request's headers did not arrive within {self.limits.timeout_s:g} s",
            "request_timeout",
        )
        self.send_400_response("")

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
