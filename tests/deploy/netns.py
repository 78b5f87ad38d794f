"""Hosts made of network namespaces, the task functions their workers run, and the driver.

Three parts, one module (no pytest here: the workers import it for the task functions):

- :class:`Namespaces` builds a private network: a bridge in a namespace of its own and host
  namespaces joined to it by veth pairs, addressed in a private test range. Nothing is
  created in the root namespace; :meth:`Namespaces.destroy` removes everything.
- task functions (``produce``, ``add_up``, ``peer_view``) that workers started with
  cwd = the repository root import as ``tests.deploy.netns``.
- ``python -m tests.deploy.netns driver --listen ...``: an ExecutionContext inside a host
  namespace, driven by the test over stdin/stdout, one JSON object per line. Commands are
  ``{"op": ..., **arguments}``; the answer is ``{"reply": op, "ok": true, **result}`` or
  ``{"reply": op, "ok": false, "error": traceback}``; ``{"event": ...}`` lines may come
  before the answer (progress of a job, so the test can act mid-job).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback

IP = shutil.which("ip") or "/usr/sbin/ip"


# -- namespaces ------------------------------------------------------------------------------------


def ip(*args: str, check: bool = True, timeout: float = 10) -> subprocess.CompletedProcess:
    result = subprocess.run([IP, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def namespaces_refused() -> str | None:
    """Why this machine cannot make network namespaces, or None when it can."""
    if not os.path.exists(IP):
        return "`ip` (iproute2) is not installed"
    probe = f"blt-probe-{os.getpid()}"
    try:
        result = ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` cannot run: {exc}"
    if result.returncode != 0:
        return ("`ip netns add` is refused (it needs root or CAP_SYS_ADMIN and a kernel with network "
                f"namespaces): {result.stderr.strip()}")
    try:
        link = ip("-n", probe, "link", "add", "blt0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"no bridge inside a network namespace (`ip link add`: {link.stderr.strip()})"
        inside = subprocess.run([IP, "netns", "exec", probe, sys.executable, "-c", "pass"],
                                capture_output=True, text=True, timeout=30)
        if inside.returncode != 0:
            return f"cannot run a process in a network namespace: {inside.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


class Namespaces:
    """``hosts`` namespaces on one bridge: host i (1-based) is ``{subnet}.{i}/24`` on its eth0.

    The bridge lives in a namespace of its own, where the host end of each veth pair is
    called ``h<i>``: cutting host i's cable is ``ip -n <bridge> link set h<i> down`` and
    leaves the host's own interface configured (no error on its side, only silence).
    """

    def __init__(self, tag: str, hosts: int = 3, subnet: str = "10.231.0"):
        self.tag = tag
        self.subnet = subnet
        self.bridge = f"blt-br-{tag}"
        self.hosts = [f"blt-{tag}-h{i}" for i in range(1, hosts + 1)]
        self.created: list[str] = []

    def address(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    def name(self, host: int) -> str:
        return self.hosts[host - 1]

    def create(self) -> None:
        """Make the bridge and the hosts; on any failure remove what was made, then raise."""
        try:
            self._add(self.bridge)
            ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
            ip("-n", self.bridge, "link", "set", "br0", "up")
            ip("-n", self.bridge, "link", "set", "lo", "up")
            for i, ns in enumerate(self.hosts, 1):
                self._add(ns)
                ip("-n", self.bridge, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0",
                   "netns", ns)
                ip("-n", self.bridge, "link", "set", f"h{i}", "master", "br0", "up")
                ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                ip("-n", ns, "link", "set", "eth0", "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def _add(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.created.append(ns)

    def exec_argv(self, host: int, argv: list[str]) -> list[str]:
        return [IP, "netns", "exec", self.name(host), *argv]

    def set_cable(self, host: int, up: bool) -> None:
        """Plug (up) or cut (down) host ``host``'s cable at the bridge."""
        ip("-n", self.bridge, "link", "set", f"h{host}", "up" if up else "down")

    def partition(self, a: int, b: int, apart: bool) -> None:
        """Hosts ``a`` and ``b`` cannot (apart) or can again talk to each other; both keep
        their cable, so they still reach every other host (blackhole routes both ways)."""
        verb = "add" if apart else "del"
        ip("-n", self.name(a), "route", verb, "blackhole", f"{self.address(b)}/32")
        ip("-n", self.name(b), "route", verb, "blackhole", f"{self.address(a)}/32")

    def pids(self) -> list[int]:
        """Processes still running in our host namespaces (all started by the test)."""
        pids = []
        for ns in self.created:
            result = ip("netns", "pids", ns, check=False)
            pids += [int(p) for p in result.stdout.split() if p.isdigit()]
        return pids

    def destroy(self) -> list[str]:
        """Delete every namespace made (the veth pairs and the bridge go with them).

        Returns the problems met; a namespace that could not be deleted is kept in
        ``created`` so that a second call can retry.
        """
        problems = []
        for ns in reversed(list(self.created)):
            result = ip("netns", "del", ns, check=False)
            if result.returncode == 0 or not os.path.exists(f"/var/run/netns/{ns}"):
                self.created.remove(ns)
            else:
                problems.append(f"ip netns del {ns}: {result.stderr.strip()}")
        return problems


# -- task functions (run by the workers) ---------------------------------------------------------

ARRAY_LENGTH = 1 << 17  # float64: 1 MiB


def produce(i: int):
    """1 MiB of float64 whose sum is known: (i + 1) * n * (n - 1) / 2."""
    import numpy as np
    return np.arange(ARRAY_LENGTH, dtype=np.float64) * (i + 1)


def expected_sum(i: int) -> float:
    return float((i + 1) * ARRAY_LENGTH * (ARRAY_LENGTH - 1) // 2)


def add_up(*values) -> float:
    """The sum of arrays and numbers (arrays summed element by element first)."""
    return float(sum(float(v.sum()) if hasattr(v, "sum") else float(v) for v in values))


def peer_view(_=None) -> dict:
    """What the worker running this task knows: its addresses and its peers'."""
    from bndl_like import current_worker
    node = current_worker()
    return {"name": node.name, "addresses": list(node.addresses),
            "peers": {p.name: {"node_type": p.node_type, "addresses": list(p.addresses), "host": p.host}
                      for p in list(node.peers.values())}}


# -- the driver ----------------------------------------------------------------------------------


class Driver:
    """An ExecutionContext answering the test's commands."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.events: list = []  # (kind, monotonic time, name, node_type, reason)
        self.lock = threading.Lock()
        ctx.node.on_peer_added.append(lambda peer: self._record("added", peer))
        ctx.node.on_peer_lost.append(lambda peer: self._record("lost", peer))

    def _record(self, kind: str, peer) -> None:
        with self.lock:
            self.events.append((kind, time.monotonic(), peer.name, peer.node_type, peer.lost_reason))

    @staticmethod
    def emit(message: dict) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def _force(self, names) -> dict:
        """A locality that allows only the workers ``names``."""
        names = set(names)
        return {w.name: (1 if w.name in names else -1) for w in self.ctx.workers}

    def _on_host(self, host: str) -> list[str]:
        return [w.name for w in self.ctx.workers if w.host == host]

    def _select(self, which) -> list[str]:
        """Worker names: those on a host (an IP), or the names given (a list)."""
        if isinstance(which, str):
            return self._on_host(which)
        known = {w.name for w in self.ctx.workers}
        return [name for name in which if name in known]

    # -- commands --------------------------------------------------------------------------------

    def op_workers(self) -> dict:
        return {"workers": [
            {"name": w.name, "host": w.host, "addresses": list(w.addresses), "pid": w.pid,
             "roles": [c.role for c in w.connections if not c.is_closed]}
            for w in self.ctx.workers]}

    def op_await(self, count: int, within: float, host: str | None = None) -> dict:
        """Wait until exactly ``count`` workers (on ``host``) are connected."""
        started = time.monotonic()

        def current():
            return len(self._on_host(host)) if host else self.ctx.worker_count
        while current() != count and time.monotonic() - started < within:
            time.sleep(0.02)
        return {"count": current(), "elapsed": time.monotonic() - started, "at": time.monotonic(),
                **self.op_workers()}

    def op_await_workers(self) -> dict:
        """``ctx.await_workers()`` as the README calls it: no count, the default timeouts."""
        started = time.monotonic()
        count = self.ctx.await_workers()
        return {"count": count, "elapsed": time.monotonic() - started, **self.op_workers()}

    def op_events(self) -> dict:
        with self.lock:
            return {"events": list(self.events)}

    def op_peer_views(self) -> dict:
        """Run peer_view on every worker (one task forced onto each)."""
        from bndl_like import FuncTask, Job
        from tests.deploy import netns
        ctx = self.ctx
        names = [w.name for w in ctx.workers]
        tasks = [FuncTask(ctx, i, netns.peer_view, locality=self._force([name]))
                 for i, name in enumerate(names)]
        views = list(ctx.execute(Job(ctx, tasks), workers=names))
        return {"views": views, "ran_on": [t.executed_on_last() for t in tasks], "names": names}

    def op_cross(self, producers, consumers, count: int = 8) -> dict:
        """``count`` 1 MiB arrays made on ``producers``, summed in pairs on ``consumers``, the
        pair sums added up back on ``producers`` (each a host IP or a list of worker names)."""
        from bndl_like import FuncTask, Job
        from tests.deploy import netns
        ctx = self.ctx
        on_p, on_c = self._select(producers), self._select(consumers)
        if not on_p or not on_c:
            raise RuntimeError(f"no workers on {producers} ({on_p}) or {consumers} ({on_c})")
        made = [FuncTask(ctx, ("made", i), netns.produce, (i,), locality=self._force(on_p))
                for i in range(count)]
        pairs = [FuncTask(ctx, ("pair", j), netns.add_up, (made[2 * j], made[2 * j + 1]),
                          locality=self._force(on_c)) for j in range(count // 2)]
        total = FuncTask(ctx, "total", netns.add_up, tuple(pairs), locality=self._force(on_p))
        tasks = [*made, *pairs, total]
        started = time.monotonic()
        results = list(ctx.execute(Job(ctx, tasks), workers=on_p + on_c))
        return {"elapsed": time.monotonic() - started,
                "pairs": results[count:count + count // 2], "total": results[-1],
                "made_on": [t.executed_on_last() for t in made],
                "pairs_on": [t.executed_on_last() for t in pairs],
                "total_on": total.executed_on_last()}

    def op_layered(self, first: int, second: int, sleep: float, progress_after: int) -> dict:
        """``first`` tasks of ``sleep`` s returning their index, then ``second`` tasks each adding
        up every ``second``-th of them (so none can start before the first layer ends).

        Emits ``{"event": "progress"}`` after ``progress_after`` results and goes on."""
        from bndl_like import FuncTask, Job
        from tests.execute import helpers
        ctx = self.ctx
        done: list = []  # (task id, worker, monotonic time) for every success, re-runs included
        results: dict = {}  # task id -> its last result (the driver keeps none once handed out)

        def on_done(task):
            if task.succeeded:
                done.append((str(task.id), task.executed_on_last(), time.monotonic()))
                results[task.id] = task.result()
        layer1 = [FuncTask(ctx, ("a", i), helpers.sleep_then, (sleep, i)) for i in range(first)]
        layer2 = [FuncTask(ctx, ("b", k), helpers.total, (layer1[k::second],)) for k in range(second)]
        for task in layer1 + layer2:
            task.add_listener(done=on_done)
        job = Job(ctx, layer1 + layer2)
        started = time.monotonic()
        got = 0
        for _ in ctx.execute(job, order_results=False):
            got += 1
            if got == progress_after:
                self.emit({"event": "progress", "results": got, "at": time.monotonic()})
        return {"started": started, "ended": time.monotonic(), "results": got,
                "first": [results[t.id] for t in layer1], "second": [results[t.id] for t in layer2],
                "executed_on": {str(t.id): list(t.executed_on) for t in layer1 + layer2},
                "done": done, "retried": job.retried, **self.op_events()}

    def op_spread(self, count: int, sleep: float) -> dict:
        from bndl_like import FuncTask, Job
        from tests.execute import helpers
        ctx = self.ctx
        tasks = [FuncTask(ctx, i, helpers.sleep_then, (sleep, i)) for i in range(count)]
        results = list(ctx.execute(Job(ctx, tasks)))
        return {"results": results, "ran_on": [t.executed_on_last() for t in tasks]}

    def serve(self) -> None:
        self.emit({"event": "ready", "addresses": self.ctx.node.addresses, "name": self.ctx.node.name})
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                self.emit({"reply": op, "ok": True})
                return
            try:
                result = getattr(self, "op_" + op)(**command)
            except Exception:
                self.emit({"reply": op, "ok": False, "error": traceback.format_exc()})
            else:
                self.emit({"reply": op, "ok": True, **result})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.netns")
    parser.add_argument("command", choices=["driver"])
    parser.add_argument("--listen", default=None)
    parser.add_argument("--seeds", default="", help="comma separated; empty: this driver is the seed")
    parser.add_argument("--heartbeat-timeout", type=float, default=3.0)
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    from bndl_like import ExecutionContext
    from bndl_like.deploy import logs
    logs.setup("INFO")
    seeds = [s for s in args.seeds.split(",") if s]
    # the secret comes from BNDL_LIKE_SECRET
    with ExecutionContext(seeds=seeds, listen=args.listen, heartbeat_timeout=args.heartbeat_timeout,
                          heartbeat_interval=args.heartbeat_interval) as ctx:
        logs.set_node_name(ctx.node.name)
        Driver(ctx).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
