"""``bndl-like status``: the workers of a cluster, their load and uptime."""

from __future__ import annotations

import asyncio

from ..errors import BndlLikeError
from ..rmi import Node, NotConnected, RemoteError


class ClusterUnreachable(BndlLikeError, TimeoutError):
    """No worker answered through the seeds; the message names each seed not reached and why."""


async def cluster_status(seeds: list, secret: bytes | None, cluster: str | None,
                         timeout: float = 5.0, *, unreached: list | None = None,
                         **node_options) -> list[dict]:
    """Join through ``seeds``, wait until the set of peers settles, ask each worker.

    ``node_options`` go to the Node that joins (``tls_cert``, ``tls_key``, ``tls_ca``).
    :class:`ClusterUnreachable` when no worker answers, naming each seed not reached and
    its error; with workers found, the seeds and peers not reached are appended to
    ``unreached`` (if given) as ``"seed tcp://...: error"``.
    """
    node = Node(node_type="driver", listen="tcp://127.0.0.1:0", seeds=seeds, secret=secret,
                cluster=cluster, **node_options)
    await node.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last, since = -1, loop.time()
        while loop.time() < deadline:
            count = len(node.peers)
            if count != last:
                last, since = count, loop.time()
            elif count and loop.time() - since > 0.5:
                break
            elif not count and node.seeds_final():
                break  # a wrong secret or another cluster: waiting does not help
            await asyncio.sleep(0.05)
        workers = [p for p in node.peers.values() if p.node_type == "worker"]
        report = node.unreachable_report()
        if not workers:
            waited = loop.time() - (deadline - timeout)
            raise ClusterUnreachable(
                f"no worker answered through {', '.join(map(str, seeds))} within {waited:.1f}s"
                + (f"; not reached: {report}" if report else ""))
        if report and unreached is not None:
            unreached.extend(report.split("; "))

        async def ask(peer):
            try:
                info = await asyncio.wait_for(peer.call("tasks", "status"), timeout)
            except (NotConnected, RemoteError, asyncio.TimeoutError) as exc:
                info = {"error": str(exc) or type(exc).__name__}
            return {"name": peer.name, "host": peer.host,
                    "address": peer.addresses[0] if peer.addresses else "", **info}

        return sorted(await asyncio.gather(*map(ask, workers)), key=lambda w: w["name"])
    finally:
        await node.stop()


def format_uptime(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def format_lines(workers: list[dict]) -> list[str]:
    header = f"{'WORKER':<28} {'HOST':<16} {'ADDRESS':<28} {'RUNNING':>7} {'QUEUED':>6} {'UPTIME':>8}"
    lines = [header]
    for w in workers:
        if "error" in w:
            lines.append(f"{w['name']:<28} {w['host']:<16} {w['address']:<28} error: {w['error']}")
            continue
        held = " held" if w.get("held") else ""
        lines.append(f"{w['name']:<28} {w['host']:<16} {w['address']:<28} {w['running']:>7} "
                     f"{w['queued']:>6} {format_uptime(w.get('uptime', 0)):>8}{held}")
    return lines
