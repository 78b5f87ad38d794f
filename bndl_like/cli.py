"""The ``bndl-like`` command: ``worker`` and ``demo`` (more to come)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys

from . import config

log = logging.getLogger("bndl_like.worker")


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
    from .execute.worker import FunctionService, WorkerService
    from .rmi import Node

    node = Node(node_type="worker", listen=args.listen, seeds=args.seeds, cluster=args.cluster,
                secret=_read_secret(args.secret_file))
    concurrency = config.get("execute.concurrency", args.concurrency)
    functions = FunctionService(concurrency)
    tasks = WorkerService(node, max_threads=max(64, concurrency))
    node.add_service("functions", functions)
    node.add_service("tasks", tasks)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        await stop.wait()
    finally:
        log.info("%s stopping", node.name)
        # if stopping hangs, show where before the supervisor's SIGKILL comes
        faulthandler.dump_traceback_later(4, exit=False)
        tasks.close()
        try:
            await asyncio.wait_for(node.stop(), 5)
        except asyncio.TimeoutError:
            log.warning("%s: node did not stop within 5s", node.name)
        functions.close()


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(workers=args.workers, progress=not args.no_progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bndl-like", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("BNDL_LIKE_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)
    _worker_parser(sub)
    demo = sub.add_parser("demo", help="run the main job (a word count DAG) on a local cluster")
    demo.add_argument("--workers", type=int, default=None,
                      help="local worker processes (default: the number of CPUs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")
    if args.command == "worker":
        asyncio.run(_run_worker(args))
        return 0
    if args.command == "demo":
        return _demo(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
