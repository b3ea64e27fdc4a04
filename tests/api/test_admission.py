"""Admission that refuses abuse cheaply, on a real ``aiplus serve`` over raw sockets: the key is checked from the
header before the body is read; heads that are too large, too many or too slow get 431/408 and a close; slow
bodies get 408; idle connections are closed. Timeouts here are set short (1-2 s) so that each refusal is seen
well within the socket's own 10 s patience: an answer that never comes fails the test, whatever the CPU's speed.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import start_server

CONFIG = """
header_timeout_s = 1.5
body_timeout_s = 1.5
idle_connection_timeout_s = 1.5
max_header_bytes = 16384
max_headers = 50

[[models]]
id = "sim"
engine = "simulated"
max_concurrency = 8
"""
PATIENCE_S = 10.0  # how long a test waits for an answer that should come within ~1.5 s


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("admission"), CONFIG)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server):
    return server.new_org("Admission School")["key"]


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=PATIENCE_S)
    return sock


def answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or has sent a whole small answer."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(body) >= length:
                break
    return data


def status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def header(data: bytes, name: bytes) -> bytes | None:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@pytest.mark.parametrize("authorization", [b"", b"authorization: Bearer aip_wrong\r\n"])
def test_the_key_is_checked_before_the_body_is_read(server, authorization):
    # Before: the server waited for the whole megabyte (and then parsed it) before answering 401.
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + authorization
            + b"content-length: 1000000\r\n\r\n"
            + b'{"model": "sim", "messages": ['
        )
        started = time.monotonic()
        data = answer(sock)
    assert status(data) == 401
    assert time.monotonic() - started < 1.2  # not after the body deadline: at once
    assert header(data, b"x-request-id")


def test_a_head_larger_than_the_limit_gets_431_before_it_is_all_sent(server):
    # Before: no limit; a 160 MB header grew the server by 160-250 MB.
    with connect(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        try:
            for _ in range(64):  # up to 4 MB, 64 KB at a time; the server refuses after ~16 KB
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = answer(sock)
    assert status(data) == 431, data[:300]
    assert b"request_header_fields_too_large" in data
    assert header(data, b"x-request-id")
    assert sent < 4 * 1024 * 1024  # the server closed the connection before the 4 MB were sent


def test_a_large_head_in_one_read_gets_431(server):
    with connect(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
        assert status(answer(sock)) == 431


def test_too_many_header_fields_get_431(server, key):
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(60))
    with connect(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
        data = answer(sock)
    assert status(data) == 431
    assert b"header fields" in data
    few = b"".join(b"x-h%d: v\r\n" % i for i in range(40))
    with connect(server) as sock:
        auth = b"authorization: Bearer " + key.encode() + b"\r\nconnection: close\r\n"
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + auth + few + b"\r\n")
        assert status(answer(sock)) == 200


def test_slow_headers_get_408_and_a_close(server):
    # Before: a connection sending its headers a byte at a time was held for ever.
    with connect(server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        started = time.monotonic()
        data = answer(sock)
    assert status(data) == 408
    assert 1.0 < time.monotonic() - started < PATIENCE_S


def test_a_slow_body_gets_408(server, key):
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + key.encode() + b"\r\ncontent-length: 100\r\n\r\n" + b'{"model": '
        )
        started = time.monotonic()
        data = answer(sock)
    assert status(data) == 408, data[:300]
    assert b"request_timeout" in data
    assert 1.0 < time.monotonic() - started < PATIENCE_S


def test_an_idle_connection_is_closed(server):
    # Before: uvicorn armed its keep-alive timeout only after a first answer; a silent connection stayed open.
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server (a timeout here would raise)
    assert time.monotonic() - started < PATIENCE_S


def test_admin_bodies_are_bounded_in_size_and_time(server):
    # Before: FastAPI read an admin body of any size, at any pace, before the admin token was checked.
    with connect(server) as sock:
        sock.sendall(
            b"POST /admin/orgs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 999999999\r\n\r\n{"
        )
        data = answer(sock)
    assert status(data) == 413 and header(data, b"x-request-id")
    with connect(server) as sock:
        sock.sendall(
            b"POST /admin/orgs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{"
        )
        started = time.monotonic()
        data = answer(sock)
    assert status(data) == 408, data[:300]
    assert 1.0 < time.monotonic() - started < PATIENCE_S


def test_what_is_not_http_gets_an_error_with_a_request_id(server):
    with connect(server) as sock:
        sock.sendall(b"HELLO\x00 THERE\r\n\r\n")
        data = answer(sock)
    assert status(data) == 400
    assert header(data, b"x-request-id") and b"invalid_http" in data
