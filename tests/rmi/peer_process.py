"""A node in its own process for the tests: ``python -m tests.rmi.peer_process --name N``.

Prints ``READY <addresses as JSON>`` once listening and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from bndl_like.rmi import Node, takes_peer


class TestService:
    def __init__(self, node: Node):
        self.node = node

    def noop(self):
        return None

    def echo(self, value):
        return value

    def nbytes(self, array):
        return int(array.nbytes)

    def make_bytes(self, size):
        return b"x" * size

    def pid(self):
        return os.getpid()

    def boom(self, message="boom"):
        raise KeyError(message)

    def unpicklable_error(self):
        class LocalError(Exception):
            def __reduce__(self):
                raise TypeError("this exception refuses to be pickled")
        raise LocalError("cannot travel")

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    def block(self, seconds, started_path=None):
        if started_path:
            open(started_path, "w").close()
        time.sleep(seconds)
        return seconds

    def peers(self):
        return sorted(self.node.peers)

    @takes_peer
    async def call_back(self, peer, service, method, *args):
        return await peer.call(service, method, *args)

    async def call_peer(self, name, service, method, *args):
        return await self.node.peers[name].call(service, method, *args)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--seeds", default=None)
    parser.add_argument("--cluster", default=None)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument("--heartbeat-timeout", type=float, default=None)
    parser.add_argument("--max-message-size", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"%(levelname)s {args.name} %(name)s: %(message)s")
    node = Node(args.name, "worker", listen="tcp://127.0.0.1:0", seeds=args.seeds,
                cluster=args.cluster, heartbeat_interval=args.heartbeat_interval,
                heartbeat_timeout=args.heartbeat_timeout, max_message_size=args.max_message_size)
    node.add_service("test", TestService(node))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await node.start()
    print("READY " + json.dumps(node.addresses), flush=True)
    try:
        await stop.wait()
    finally:
        await node.stop()


if __name__ == "__main__":
    asyncio.run(main())
