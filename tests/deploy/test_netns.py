"""Several hosts on one machine: network namespaces on a private bridge.

Host 1 runs the driver (tests/deploy/netns.py, driven over stdin/stdout), hosts 2 and 3 run
``bndl-like supervisor --workers 2``, each worker on its own address (10.231.0.<host>:5000
and :5001). The network is private to the test: a bridge in a namespace of its own, veth
pairs to the host namespaces, addresses in 10.231.0.0/24 only there. Cutting host 3's cable
at the bridge makes it disappear mid-job; plugging it back in lets its workers rejoin.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from bndl_like.deploy.supervisor import die_with

from .netns import Namespaces, expected_sum, namespaces_refused

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "netns-test-secret"
HEARTBEAT_TIMEOUT = 3.0
LOSS_MARGIN = 2.0   # heartbeat checks every timeout/4..interval, plus a loaded CI machine
DRIVER, H2, H3 = "10.231.0.1", "10.231.0.2", "10.231.0.3"
SEED = f"tcp://{DRIVER}:5000"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces: Linux only")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BNDL_LIKE_")}
    env["BNDL_LIKE_SECRET"] = SECRET
    # these tests watch gossip spread every worker's advertised address to every other across
    # hosts, and partitions between workers heal: the full mesh (on demand, workers connect only
    # to the drivers and the holders they fetch from: tests/rmi/test_topology.py)
    env["BNDL_LIKE_MESH"] = "full"
    return env


def _tail(path, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class DriverProcess:
    """The driver of netns.py in a namespace; one JSON command, one JSON answer."""

    def __init__(self, argv: list[str], log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
                                     preexec_fn=die_with(os.getpid()))
        self.messages: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ready = self.read(timeout=30)
        assert self.ready.get("event") == "ready", self.ready

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.messages.put(json.loads(line))
            except ValueError:
                self.messages.put({"noise": line})
        self.messages.put(None)

    def read(self, timeout: float) -> dict:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the driver said nothing for {timeout}s; its log:\n"
                                 f"{_tail(self.log_path)}") from None
        if message is None:
            self.messages.put(None)
            raise AssertionError(f"the driver exited ({self.proc.poll()}); its log:\n{_tail(self.log_path)}")
        return message

    def send(self, op: str, **args) -> None:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def reply(self, op: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            message = self.read(max(0.0, deadline - time.monotonic()))
            if message.get("reply") == op:
                assert message["ok"], f"driver command {op} failed:\n{message['error']}"
                return message

    def call(self, op: str, timeout: float = 30, **args) -> dict:
        self.send(op, **args)
        return self.reply(op, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()
                self.proc.wait(15)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        _end(self.proc)
        self.log.close()


def _end(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process we started (by its pid): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _end_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Cluster:
    def __init__(self, ns: Namespaces, logs):
        self.ns = ns
        self.logs = logs
        self.processes: list[subprocess.Popen] = []
        self.files: list = []
        self.driver: DriverProcess | None = None

    def python(self, host: int, args: list[str], name: str) -> subprocess.Popen:
        """``python args`` in host ``host``'s namespace, cwd the repository, output to a log."""
        log = open(self.logs / f"{name}.log", "w")
        self.files.append(log)
        proc = subprocess.Popen(self.ns.exec_argv(host, [sys.executable, *args]), cwd=ROOT, env=_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=die_with(os.getpid()))
        self.processes.append(proc)
        return proc

    def supervisor(self, host: int) -> subprocess.Popen:
        return self.python(host, ["-m", "bndl_like.cli", "supervisor", "--workers", "2",
                                  "--listen", f"tcp://{self.ns.address(host)}:5000", "--seeds", SEED,
                                  "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)], f"supervisor-h{host}")

    def log_tails(self) -> str:
        return "\n".join(f"--- {path.name}\n{_tail(path, 15)}" for path in sorted(self.logs.glob("*.log")))

    def workers(self) -> list[dict]:
        return self.driver.call("workers")["workers"]

    def await_workers(self, count: int, within: float, host: str | None = None) -> dict:
        """Wait until the driver has exactly ``count`` workers (on ``host``); its answer."""
        answer = self.driver.call("await", count=count, within=within, host=host, timeout=within + 10)
        assert answer["count"] == count, f"{answer['count']} workers, not {count}:\n{self.log_tails()}"
        return answer

    def names_on(self, host: str) -> list[str]:
        return sorted(w["name"] for w in self.workers() if w["host"] == host)

    def missing_links(self) -> dict:
        """For each worker, the other workers it is not connected to (asked on the worker)."""
        answer = self.driver.call("peer_views", timeout=30)
        names = set(answer["names"])
        return {view["name"]: sorted(names - {view["name"]} - set(view["peers"])) for view in answer["views"]}

    def wait_for_mesh(self, timeout: float) -> float:
        """Wait until every worker is connected to every other one; the seconds it took."""
        started = time.monotonic()
        while any((missing := self.missing_links()).values()):
            if time.monotonic() - started > timeout:
                raise AssertionError(f"workers not connected to each other after {timeout}s: {missing}\n"
                                     f"{self.log_tails()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def close(self) -> list[str]:
        """Stop every process we started, then delete the namespaces; the problems met."""
        problems = []

        def attempt(what, fn, *args):
            try:
                return fn(*args)
            except Exception as exc:  # go on: the namespaces must go in any case
                problems.append(f"{what}: {exc!r}")

        if self.driver is not None:
            attempt("stopping the driver", self.driver.stop)
        for proc in reversed(self.processes):
            attempt(f"stopping pid {proc.pid}", _end, proc)
        # anything left in our namespaces was started by us (a worker whose supervisor died)
        for pid in attempt("listing the namespaces' processes", self.ns.pids) or []:
            problems.append(f"pid {pid} was still running in a test namespace; stopped it")
            attempt(f"stopping pid {pid}", _end_pid, pid)
        for f in self.files:
            f.close()
        problems += attempt("deleting the namespaces", self.ns.destroy) or []
        return problems


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    refused = namespaces_refused()
    if refused:
        pytest.skip(f"multi-host tests need network namespaces: {refused}")
    ns = Namespaces(str(os.getpid()))
    cluster = Cluster(ns, tmp_path_factory.mktemp("netns-logs"))
    try:
        ns.create()
        cluster.driver = DriverProcess(
            ns.exec_argv(1, [sys.executable, "-m", "tests.deploy.netns", "driver", "--listen", SEED,
                             "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT), "--heartbeat-interval", "0.5"]),
            cluster.logs / "driver.log")
        assert cluster.driver.ready["addresses"] == [SEED]
        cluster.supervisor(2)
        cluster.supervisor(3)
        cluster.await_workers(4, within=60)
        yield cluster
    finally:
        problems = cluster.close()
        assert not ns.created, f"namespaces left behind: {ns.created}: {problems}"
        assert not problems, problems


def by_name(workers: list[dict]) -> dict:
    return {w["name"]: w for w in workers}


@pytest.mark.timeout(120)
def test_each_worker_advertises_its_own_address_and_gossip_spreads_it(cluster):
    workers = cluster.workers()
    assert Counter(w["host"] for w in workers) == {H2: 2, H3: 2}, workers
    for w in workers:
        # listening on a host's own IP: exactly that address, the port walked from 5000
        assert w["addresses"] in ([f"tcp://{w['host']}:5000"], [f"tcp://{w['host']}:5001"]), w
    assert len({w["addresses"][0] for w in workers}) == 4

    # every worker connects to every other one (and the driver) at the address it advertises;
    # gossip goes on after the workers joined the driver
    cluster.wait_for_mesh(timeout=15)
    answer = cluster.driver.call("peer_views", timeout=30)
    seen = by_name(workers)
    assert answer["ran_on"] == answer["names"]
    for view in answer["views"]:
        assert view["addresses"] == seen[view["name"]]["addresses"]
        peers = view["peers"]
        for name in set(seen) - {view["name"]}:
            assert peers[name]["addresses"] == seen[name]["addresses"], (view["name"], name)
            assert peers[name]["host"] == seen[name]["host"]
        drivers = [p for p in peers.values() if p["node_type"] == "driver"]
        assert [d["addresses"] for d in drivers] == [[SEED]]


@pytest.mark.timeout(120)
def test_tasks_fetch_dependency_outputs_across_hosts(cluster):
    pair_sums = [expected_sum(2 * j) + expected_sum(2 * j + 1) for j in range(4)]
    for producers, consumers in ((H2, H3), (H3, H2)):
        on_p, on_c = set(cluster.names_on(producers)), set(cluster.names_on(consumers))
        answer = cluster.driver.call("cross", producers=producers, consumers=consumers, timeout=60)
        # 1 MiB arrays made on one host, summed in pairs on the other, the sums back on the first
        assert answer["pairs"] == pair_sums
        assert answer["total"] == sum(pair_sums)
        assert set(answer["made_on"]) <= on_p and set(answer["pairs_on"]) <= on_c
        assert answer["total_on"] in on_p
        assert len(set(answer["made_on"])) == 2, "both workers of the producing host made arrays"


@pytest.mark.timeout(120)
def test_status_from_another_host_lists_every_worker_and_its_address(cluster):
    proc = subprocess.run(cluster.ns.exec_argv(3, [sys.executable, "-m", "bndl_like.cli", "status",
                                                   "--seeds", SEED]),
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["WORKER", "HOST", "ADDRESS"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows == {name: [w["host"], w["addresses"][0]] for name, w in by_name(cluster.workers()).items()}


@pytest.mark.timeout(120)
def test_a_host_that_disappears_mid_job_is_lost_then_rejoins(cluster):
    ns, driver = cluster.ns, cluster.driver
    h2, h3 = cluster.names_on(H2), cluster.names_on(H3)
    pids_before = {w["name"]: w["pid"] for w in cluster.workers()}
    first, second = 200, 20
    driver.send("layered", first=first, second=second, sleep=0.05, progress_after=40)
    progress = driver.read(timeout=60)
    assert progress.get("event") == "progress", progress
    cut_at = time.monotonic()
    ns.set_cable(3, up=False)
    try:
        answer = driver.reply("layered", timeout=60)
    finally:
        ns.set_cable(3, up=True)
    plugged_at = time.monotonic()

    # the job completed with correct results
    assert answer["results"] == first + second
    assert answer["first"] == list(range(first))
    assert answer["second"] == [sum(range(k, first, second)) for k in range(second)]

    # host 3's workers were declared lost within the heartbeat timeout, nobody else
    lost = {name: (at, reason) for kind, at, name, node_type, reason in answer["events"]
            if kind == "lost" and node_type == "worker" and at > cut_at}
    assert set(lost) == set(h3), (lost, h3)
    for name, (at, reason) in lost.items():
        assert 0 < at - cut_at <= HEARTBEAT_TIMEOUT + LOSS_MARGIN, (name, at - cut_at, reason)
        assert "heartbeat" in (reason or ""), reason
    assert answer["ended"] > max(at for at, _ in lost.values()), "the job ended before the loss"

    # outputs host 3 had made before the cut were made again on host 2
    done_on: dict = {}
    for task_id, worker, _at in answer["done"]:
        done_on.setdefault(task_id, []).append(worker)
    made_on_h3 = {t for t, workers in done_on.items() if any(w in h3 for w in workers)}
    assert made_on_h3, "host 3 finished no task before its cable was cut"
    for task_id in made_on_h3:
        assert done_on[task_id][-1] in h2, (task_id, done_on[task_id])
    assert all(answer["executed_on"][t][-1] in h2 for t in made_on_h3)

    # cable back: the same worker processes rejoin by themselves and get work again
    back = cluster.await_workers(2, within=30, host=H3)
    rejoin_after = back["at"] - plugged_at
    assert rejoin_after < 20, rejoin_after
    assert {w["name"]: w["pid"] for w in back["workers"]} == pids_before
    # and to each other (the partition test below runs a job that does not wait for this)
    mesh_after = cluster.wait_for_mesh(timeout=20)
    cross = driver.call("cross", producers=H2, consumers=H3, timeout=60)
    assert cross["total"] == sum(expected_sum(i) for i in range(8))
    assert set(cross["pairs_on"]) <= set(h3)
    spread = driver.call("spread", count=60, sleep=0.02, timeout=60)
    assert spread["results"] == list(range(60))
    assert set(spread["ran_on"]) & set(h3), spread["ran_on"]
    print(f"\nlost after {[round(at - cut_at, 2) for at, _ in lost.values()]}s, "
          f"job {answer['ended'] - answer['started']:.1f}s, rejoined {rejoin_after:.1f}s after replugging, "
          f"mesh complete {mesh_after:.1f}s later, "
          f"driver's connections to host 3 (server: the worker dialled) "
          f"{[w['roles'] for w in back['workers'] if w['host'] == H3]}")


class Precondition(RuntimeError):
    """The scenario could not be set up: a real failure, not the expected one."""


@pytest.mark.timeout(120)
def test_a_job_right_after_a_partition_between_workers_heals(cluster):
    ns, driver = cluster.ns, cluster.driver
    h2, h3 = set(cluster.names_on(H2)), set(cluster.names_on(H3))
    ns.partition(2, 3, apart=True)
    try:
        # hosts 2 and 3 cannot talk to each other; both still talk to the driver
        deadline = time.monotonic() + HEARTBEAT_TIMEOUT + 10
        while True:
            missing = cluster.missing_links()
            if all(set(missing[name]) >= (h3 if name in h2 else h2) for name in missing):
                break
            if time.monotonic() > deadline:
                raise Precondition(f"hosts 2 and 3 still connected across the partition: {missing}")
            time.sleep(0.1)
        if len(cluster.workers()) != 4:
            raise Precondition("the driver lost workers in a partition that did not involve it")
        # the partition lasts a few seconds more: the workers' redial back-off grows meanwhile
        time.sleep(4)
    finally:
        ns.partition(2, 3, apart=False)
    # healed: every worker alive and reachable, connected to the driver; a job now must work
    try:
        answer = driver.call("cross", producers=H2, consumers=H3, timeout=60)
        assert answer["total"] == sum(expected_sum(i) for i in range(8))
    finally:
        cluster.wait_for_mesh(timeout=30)  # the next tests need a whole cluster


@pytest.mark.timeout(120)
def test_a_driver_joining_through_a_worker_with_the_default_listen_address(cluster):
    """The README's way: ExecutionContext(seeds=[a worker]); the driver listens on loopback."""
    second = DriverProcess(cluster.ns.exec_argv(1, [sys.executable, "-m", "tests.deploy.netns", "driver",
                                                    "--seeds", f"tcp://{H2}:5000"]),
                           cluster.logs / "driver-2.log")
    try:
        assert second.call("await", count=4, within=30, timeout=30 + 10)["count"] == 4
        answer = second.call("cross", producers=H3, consumers=H2, timeout=60)
        assert answer["total"] == sum(expected_sum(i) for i in range(8))
    finally:
        second.stop()


@pytest.mark.timeout(120)
def test_a_worker_listening_on_every_interface_advertises_a_reachable_address(cluster):
    wild = cluster.python(3, ["-m", "bndl_like.cli", "worker", "--listen", "tcp://0.0.0.0:5100",
                              "--seeds", SEED, "--name", "wildcard-h3",
                              "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)], "wildcard-worker")
    try:
        cluster.await_workers(5, within=30)
        cluster.wait_for_mesh(timeout=15)
        worker = by_name(cluster.workers())["wildcard-h3"]
        # the namespace's own address first (what peers dial), never an address of another host
        assert worker["addresses"][0] == f"tcp://{H3}:5100", worker
        assert worker["host"] == H3
        assert set(worker["addresses"]) <= {f"tcp://{H3}:5100", "tcp://127.0.0.1:5100"}, worker
        answer = cluster.driver.call("cross", producers=["wildcard-h3"], consumers=H2, timeout=60)
        assert answer["total"] == sum(expected_sum(i) for i in range(8))
        assert set(answer["made_on"]) == {"wildcard-h3"}
    finally:
        _end(wild)
    cluster.await_workers(4, within=30)
