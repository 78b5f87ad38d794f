"""The ``bndl-like`` command: ``worker`` and ``demo`` (more to come)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time

from . import config


def _worker_parser(sub) -> None:
    p = sub.add_parser("worker", help="run one worker process")
    p.add_argument("--listen", default=None,
                   help="address to listen on, tcp://host:port (env BNDL_LIKE_LISTEN; "
                        "default tcp://127.0.0.1:0)")
    p.add_argument("--seeds", default=None,
                   help="comma separated addresses of nodes to join (env BNDL_LIKE_SEEDS)")
    p.add_argument("--cluster", default=None, help="cluster name (env BNDL_LIKE_CLUSTER)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="tasks run at once (env BNDL_LIKE_EXECUTE_CONCURRENCY; default 1)")
    p.add_argument("--secret-file", default=None,
                   help="file holding the cluster secret (else env BNDL_LIKE_SECRET)")


def _read_secret(path: str | None) -> bytes | None:
    if path is None:
        return config.secret()
    with open(path, "rb") as f:
        return f.read().strip() or None


async def _run_worker(args) -> None:
    from .execute.worker import FunctionService
    from .rmi import Node

    node = Node(node_type="worker", listen=args.listen, seeds=args.seeds, cluster=args.cluster,
                secret=_read_secret(args.secret_file))
    functions = FunctionService(config.get("execute.concurrency", args.concurrency))
    node.add_service("functions", functions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        await stop.wait()
    finally:
        await node.stop()
        functions.close()


def _square_sum(n: int) -> tuple:
    import os as _os
    return _os.getpid(), sum(i * i for i in range(n))


async def _demo() -> int:
    from .local import LocalWorkers
    from .rmi import Node

    secret = LocalWorkers.new_secret()
    driver = Node(node_type="driver", secret=secret)
    started = time.perf_counter()
    await driver.start()
    workers = LocalWorkers(2, driver.addresses[0], secret)
    try:
        count = await driver.wait_for_peers(2, timeout=30, node_type="worker")
        print(f"driver {driver.name}: {count} workers joined in "
              f"{time.perf_counter() - started:.2f}s")
        if count < 2:
            print("not every worker joined", file=sys.stderr)
            return 1
        peers = sorted(driver.peers.values(), key=lambda p: p.name)
        for peer in peers:
            info = await peer.call("functions", "info")
            print(f"  {peer.name}: pid {info['pid']} at {', '.join(peer.addresses)}")
        inputs = list(range(10_000, 10_016))
        t0 = time.perf_counter()
        results = await asyncio.gather(*[
            peers[i % len(peers)].call("functions", "call", _square_sum, n)
            for i, n in enumerate(inputs)])
        took = time.perf_counter() - t0
        for n, (pid, total) in zip(inputs[:4], results[:4], strict=False):
            print(f"  sum of squares below {n} = {total} (computed by pid {pid})")
        print(f"  ... {len(results)} remote calls in {took * 1000:.1f} ms on "
              f"{len({pid for pid, _ in results})} worker processes")
        assert all(total == sum(i * i for i in range(n))
                   for n, (_, total) in zip(inputs, results, strict=False))
        return 0
    finally:
        await driver.stop()
        workers.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bndl-like", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("BNDL_LIKE_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    _worker_parser(sub)
    sub.add_parser("demo", help="run the demo job on a local cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    if args.command == "worker":
        asyncio.run(_run_worker(args))
        return 0
    if args.command == "demo":
        return asyncio.run(_demo())
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
