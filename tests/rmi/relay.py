"""A relaying TCP proxy on 127.0.0.1 that sits in the middle of an RMI connection.

It forwards the HTTP upgrade and then the stream frame by frame, each frame whole
and byte for byte, and on command injects bytes between frames, replaces a frame
(to alter it) or holds one back (to reorder). It parses the frame headers, which
travel in the clear (frames are authenticated, not encrypted); the first two
frames of each direction (HELLO and AUTH) carry no tag, every later one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bndl_like.rmi import protocol

TO_SERVER = "to_server"  # from the dialling node (client) to the node dialled (server)
TO_CLIENT = "to_client"
UNSEALED_FRAMES = 2  # HELLO and AUTH, in either direction


@dataclass
class RelayFrame:
    index: int  # in its direction, from 0
    kind: int
    sealed: bool
    head_len: int  # prefix and part lengths
    lengths: list  # main part first, then the out-of-band parts
    raw: bytes  # the whole frame as it came, tag included

    def part_offset(self, n: int) -> int:
        """Where out-of-band part ``n`` starts in ``raw``."""
        return self.head_len + sum(self.lengths[:n + 1])


# a rewrite takes the frame about to be forwarded and returns the chunks to send instead
# (``[frame.raw]`` unchanged, ``[]`` to hold it back), or None to stay in place and forward it
Rewrite = Callable[[RelayFrame], "list[bytes] | None"]


class Link:
    """One proxied connection: the dialling side (client) and the node dialled (server)."""

    def __init__(self, client: tuple, server: tuple):
        self.readers = {TO_SERVER: client[0], TO_CLIENT: server[0]}
        self.writers = {TO_SERVER: server[1], TO_CLIENT: client[1]}
        self.frames: dict[str, list[RelayFrame]] = {TO_SERVER: [], TO_CLIENT: []}
        self.rewrites: dict[str, Rewrite | None] = {TO_SERVER: None, TO_CLIENT: None}
        self.received = {d: hashlib.sha256() for d in (TO_SERVER, TO_CLIENT)}
        self.sent = {d: hashlib.sha256() for d in (TO_SERVER, TO_CLIENT)}
        self.injected = 0
        self.first_closed: str | None = None  # "client" or "server": whose stream ended first
        self.done = asyncio.Event()
        self._tasks = [asyncio.create_task(self._pump(d)) for d in (TO_SERVER, TO_CLIENT)]

    def untouched(self) -> bool:
        """Whether every byte was forwarded as it came, in both directions."""
        return all(self.received[d].digest() == self.sent[d].digest() for d in self.received)

    def kinds(self, direction: str) -> list[int]:
        return [f.kind for f in self.frames[direction]]

    def inject(self, direction: str, chunks) -> None:
        """Write ``chunks`` towards ``direction`` now, between two forwarded frames."""
        writer = self.writers[direction]
        for chunk in chunks:
            writer.write(bytes(chunk))
            self.sent[direction].update(chunk)
        self.injected += 1

    def last_sealed(self, direction: str, kind: int = protocol.MESSAGE) -> RelayFrame:
        return next(f for f in reversed(self.frames[direction]) if f.sealed and f.kind == kind)

    async def _read_frame(self, reader: asyncio.StreamReader, index: int) -> RelayFrame:
        prefix = await reader.readexactly(protocol.PREFIX.size)
        kind, _, nparts, main_len = protocol.PREFIX.unpack(prefix)
        lengths = [main_len]
        head = prefix
        if nparts:
            more = await reader.readexactly(8 * nparts)
            head += more
            lengths += struct.unpack(f"<{nparts}Q", more)
        sealed = index >= UNSEALED_FRAMES
        body = await reader.readexactly(sum(lengths) + (protocol.TAG_SIZE if sealed else 0))
        return RelayFrame(index, kind, sealed, len(head), lengths, head + body)

    async def _pump(self, direction: str) -> None:
        reader, writer = self.readers[direction], self.writers[direction]
        try:
            head = await reader.readuntil(b"\r\n\r\n")  # the upgrade request or answer
            self.received[direction].update(head)
            self.sent[direction].update(head)
            writer.write(head)
            index = 0
            while True:
                frame = await self._read_frame(reader, index)
                index += 1
                self.received[direction].update(frame.raw)
                rewrite = self.rewrites[direction]
                out = rewrite(frame) if rewrite is not None else None
                if out is None:
                    out = [frame.raw]
                    self.frames[direction].append(frame)
                for chunk in out:
                    writer.write(chunk)
                    self.sent[direction].update(chunk)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            if self.first_closed is None:
                self.first_closed = "client" if direction == TO_SERVER else "server"
            # the other side learns of the end as a proxy would tell it: its socket closes
            for w in self.writers.values():
                w.close()
            if all(t.done() or t is asyncio.current_task() for t in self._tasks):
                self.done.set()

    async def close(self) -> None:
        for w in self.writers.values():
            w.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self.writers.values():
            with contextlib.suppress(Exception):
                await w.wait_closed()


class Relay:
    """``async with Relay(target_address) as relay``: dial ``relay.address`` to reach the target."""

    def __init__(self, target: str):
        host, port = target[len("tcp://"):].rsplit(":", 1)
        self.target = (host, int(port))
        self.links: list[Link] = []
        self.server: asyncio.AbstractServer | None = None
        self.address = ""
        self.new_link = asyncio.Event()

    async def __aenter__(self) -> Relay:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = "tcp://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _accept(self, reader, writer) -> None:
        try:
            upstream = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links.append(Link((reader, writer), upstream))
        self.new_link.set()

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for link in self.links:
            await link.close()
        if server is not None:
            await server.wait_closed()  # (3.12+ waits for the links too: closed above)
