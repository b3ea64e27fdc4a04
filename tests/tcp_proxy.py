"""A TCP proxy on loopback in front of a real server (PostgreSQL, Redis, an upstream), that can be told to drop
everything, or to reset every connection.

``blackhole()`` makes it accept connections and swallow their bytes in both directions without answering — to a
client, the server's packets are lost, yet nothing is refused or reset — until ``restore()``. Connections made
while blackholed stay dead after ``restore()`` (their bytes were lost); new ones work. ``reset()`` sends a TCP
reset on every open connection and on each new one until ``restore()`` — a server that crashed or a firewall
that rejects. Loopback only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.dropping = False
        self.resetting = False
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def blackhole(self) -> None:
        self.dropping = True

    def reset(self) -> None:
        self.resetting = True
        self._loop.call_soon_threadsafe(lambda: [self._abort(w) for w in list(self._open)])

    def restore(self) -> None:
        self.dropping = False
        self.resetting = False

    @staticmethod
    def _abort(writer: asyncio.StreamWriter) -> None:
        """Close with a TCP reset (SO_LINGER 0), not a FIN."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        writer.transport.abort()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.resetting:
            self._abort(writer)
            return
        if self.dropping:
            await self._swallow(reader)
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = {writer, up_writer}
        self._open |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open -= pair

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.dropping:
                    await self._swallow(reader)  # from now on, this connection is a black hole
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    @staticmethod
    async def _swallow(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except OSError:
            pass
