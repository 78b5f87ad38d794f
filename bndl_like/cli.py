"""The ``bndl-like`` command: worker, supervisor, status, shell and demo.

Every option can also be set with the environment variable ``BNDL_LIKE_<OPTION>``
(``--secret-file`` is ``BNDL_LIKE_SECRET_FILE``); the secret itself comes from
``--secret-file`` or ``BNDL_LIKE_SECRET`` (or, on loopback only, the local secret),
never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import faulthandler
import logging
import os
import signal
import sys
import threading
import time

from . import config

log = logging.getLogger("bndl_like.cli")

NO_SECRET_OPTION = ("--secret is not an option: a secret on the command line is visible to every user "
                    "in ps; put it in a file (chmod 600) and pass --secret-file, or set BNDL_LIKE_SECRET")


def _env(name: str) -> str:
    return "BNDL_LIKE_" + name.replace("-", "_").upper()


def _option(parser, name: str, help: str, **kw) -> None:
    """An option whose default comes from BNDL_LIKE_<NAME>; the help says so."""
    env = _env(name)
    default = kw.pop("default", None)
    shown = f"; default {default}" if default is not None else ""
    value = os.environ.get(env) or default
    if value is not None and "type" in kw:
        try:
            value = kw["type"](value)
        except ValueError:
            parser.error(f"invalid value {value!r} for {env}")
    parser.add_argument("--" + name, default=value, help=f"{help} (env {env}{shown})", **kw)


def _cluster_options(parser) -> None:
    _option(parser, "seeds", "comma separated addresses of nodes to join, tcp://host:port")
    _option(parser, "cluster", "cluster name; nodes of different clusters refuse each other")
    _option(parser, "secret-file", "file holding the cluster secret (at least 16 bytes), yours and "
                                   "mode 0600; else BNDL_LIKE_SECRET, else, when every address is on "
                                   "loopback, the local secret of this user")
    _option(parser, "tls-cert", "this node's TLS certificate (PEM), signed by --tls-ca")
    _option(parser, "tls-key", "the private key of --tls-cert (PEM)")
    _option(parser, "tls-ca", "the cluster's CA certificate (PEM): peers must present a certificate "
                              "it signed")


def _worker_options(parser, supervisor: bool = False) -> None:
    shared = ("; the workers share it, so an explicit port walks up for them (5000 is 5000+)"
              if supervisor else "")
    _option(parser, "listen", "address to listen on, tcp://host:port: port 0 picks a free port, an "
                              "explicit port is bound exactly (failing with who holds it), "
                              f"tcp://host:5000+ walks up to the next free port{shared}",
            default="tcp://127.0.0.1:0")
    _cluster_options(parser)
    _option(parser, "concurrency", "threads running tasks at once, at most", type=int, default=1)
    _option(parser, "name", "node name (default host.pid.n)")
    _option(parser, "heartbeat-timeout", "seconds of silence before a peer is declared lost",
            type=float, default=6.0)


def _on_loopback(addresses) -> bool:
    from .rmi import parse_address

    try:
        return all(parse_address(a).is_loopback for a in addresses)
    except ValueError:  # a bad address fails later, naming itself
        return False


def _secret(args, *addresses) -> bytes:
    """From --secret-file, else BNDL_LIKE_SECRET, else the local secret if ``addresses`` are loopback."""
    from .rmi.secrets import ENV_VAR, read_secret_file, resolve_secret

    if args.secret_file:
        os.environ.pop(ENV_VAR, None)  # unused, and no child process should inherit it
        return read_secret_file(args.secret_file)
    return resolve_secret(None, local_ok=_on_loopback(addresses))


def _tls(args) -> dict:
    return {"tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_ca": args.tls_ca}


def _seeds(args) -> list[str]:
    return config.get("seeds", args.seeds) or []


async def _run_worker(args) -> None:
    from .deploy import logs
    from .deploy.supervisor import SIBLINGS_ENV, watch_siblings
    from .execute.messages import (
        FUNCTIONS_SERVICE,
        OUTPUT_SERVICE,
        PROFILING_SERVICE,
        SCATTER_SERVICE,
        TASKS_SERVICE,
    )
    from .execute.worker import FunctionService, WorkerService
    from .execute.worker.output import WorkerOutput
    from .execute.worker.scatter import ScatterService
    from .profile.service import ProfilingService
    from .rmi import Node

    seeds = _seeds(args)
    node = Node(args.name, "worker", listen=args.listen, seeds=seeds, cluster=args.cluster,
                secret=_secret(args, args.listen, *seeds), heartbeat_timeout=args.heartbeat_timeout,
                heartbeat_interval=min(1.0, args.heartbeat_timeout / 4), **_tls(args))
    logs.set_node_name(node.name)
    functions = FunctionService(max(4, args.concurrency), node=node)
    tasks = WorkerService(node, max_threads=max(64, args.concurrency))
    task_output = WorkerOutput(node)
    task_output.install()  # what tasks print and log goes to their driver when it asks
    node.add_service(FUNCTIONS_SERVICE, functions)
    node.add_service(OUTPUT_SERVICE, task_output)
    node.add_service(TASKS_SERVICE, tasks)
    node.add_service(PROFILING_SERVICE, ProfilingService(node))
    node.add_service(SCATTER_SERVICE, ScatterService(node))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    log.info("worker %s ready on %s, seeds %s", node.name, ", ".join(node.addresses),
             ", ".join(map(str, node.seeds)) or "none")
    watcher = asyncio.ensure_future(_watch_parent(stop))
    siblings = os.environ.get(SIBLINGS_ENV)
    # a supervisor's workers know each other, whatever their seeds (see deploy.supervisor)
    sibling_watcher = asyncio.ensure_future(watch_siblings(siblings, node)) if siblings else None
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        if sibling_watcher is not None:
            sibling_watcher.cancel()
            await asyncio.gather(sibling_watcher, return_exceptions=True)
        log.info("%s stopping", node.name)
        # if stopping hangs, show where before a supervisor's SIGKILL comes
        faulthandler.dump_traceback_later(4, exit=False)
        tasks.close()
        try:
            await asyncio.wait_for(node.stop(), 5)
        except asyncio.TimeoutError:
            log.warning("%s: node did not stop within 5s", node.name)
        functions.close()


def _group_members(spare_siblings: bool) -> list[int]:
    """Other live processes in this process group (Linux: from /proc; elsewhere none).

    ``spare_siblings`` leaves out the processes with our parent (unless it is init, which
    also adopts the orphans of our tasks): in a shell's job they are the rest of a pipeline
    (``bndl-like worker | tee log``), not ours.
    """
    me, group, parent = os.getpid(), os.getpgrp(), os.getppid()
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses
                state, ppid, pgrp = f.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) != group or state == b"Z":
            continue
        if not spare_siblings or int(ppid) != parent or parent == 1:
            members.append(int(entry))
    return members


def _stop_process_group(grace: float = 1.0) -> None:
    """SIGTERM the other members of this worker's process group, what its tasks started (and
    forked, or daemonized), and SIGKILL those left after ``grace`` s.

    Only when this worker leads its group, so a worker started from a shell without job
    control never signals the shell's group. A session leader (the supervisor starts each
    worker in a session of its own) has only its descendants and their orphans in its group.
    """
    if os.getpgrp() != os.getpid():
        return
    spare_siblings = os.getsid(0) != os.getpid()
    members = _group_members(spare_siblings)
    if not members:
        return
    log.info("stopping %d processes that tasks started: pids %s", len(members),
             " ".join(map(str, sorted(members))))
    for pid in members:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while members and time.monotonic() < deadline:
        time.sleep(0.02)
        members = _group_members(spare_siblings)  # and those forked meanwhile
    for pid in members:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the supervisor that started us is gone (PDEATHSIG's safety net)."""
    parent = os.environ.get("BNDL_LIKE_PARENT_PID")
    if not parent:
        return
    while not stop.is_set():
        if os.getppid() != int(parent):
            log.warning("the supervisor (pid %s) is gone, stopping", parent)
            stop.set()
            return
        await asyncio.sleep(0.5)


def _walking(listen: str) -> str:
    """The workers' --listen: an explicit port walks up (``+``), as several workers share it."""
    port = listen.rsplit(":", 1)[-1]
    return listen + "+" if port.isdigit() and int(port) != 0 else listen


def _worker_argv(args) -> list[str]:
    """The supervisor's options that its workers take, as arguments (the secret goes by env)."""
    argv = ["--listen", _walking(args.listen)]
    for name in ("seeds", "cluster", "concurrency", "heartbeat-timeout", "tls-cert", "tls-key", "tls-ca"):
        value = getattr(args, name.replace("-", "_"))
        if value is not None:
            argv += ["--" + name, str(value)]
    return argv


def _supervise(args) -> int:
    from .deploy.supervisor import Supervisor
    from .rmi.secrets import ENV_VAR
    from .rmi.tls import tls_contexts

    # read once here, and fail here rather than in every worker
    secret = _secret(args, args.listen, *_seeds(args))
    if any(_tls(args).values()):
        tls_contexts(args.tls_cert, args.tls_key, args.tls_ca)
    # the secret reaches the workers in their environment only, never on a command line;
    # each worker removes it from its own environment as it reads it
    env = {name: value for name, value in os.environ.items() if name != _env("secret-file")}
    env[ENV_VAR] = os.fsdecode(secret)
    supervisor = Supervisor(args.workers, _worker_argv(args), env=env, max_restarts=args.max_restarts)
    return supervisor.run()


def _status(args) -> int:
    from .deploy.status import ClusterUnreachable, cluster_status, format_lines

    seeds = _seeds(args)
    if not seeds:
        print("bndl-like status: no seeds given (--seeds or BNDL_LIKE_SEEDS)", file=sys.stderr)
        return 2
    unreached: list[str] = []
    try:
        workers = asyncio.run(cluster_status(seeds, _secret(args, *seeds), args.cluster, args.timeout,
                                             unreached=unreached, **_tls(args)))
    except ClusterUnreachable as exc:
        print(f"bndl-like status: {exc}", file=sys.stderr)
        return 1
    print("\n".join(format_lines(workers)))
    for line in unreached:  # workers answered, but not everything the seeds led to
        print(f"bndl-like status: not reached: {line}", file=sys.stderr)
    return 0


def _shell(args) -> int:
    import bndl_like
    from bndl_like import ExecutionContext

    seeds = _seeds(args)
    if not seeds:
        print("bndl-like shell: no seeds given (--seeds or BNDL_LIKE_SEEDS)", file=sys.stderr)
        return 2
    secret = _secret(args, config.get("listen"), *seeds)
    with ExecutionContext(seeds=seeds, secret=secret, cluster=args.cluster, **_tls(args)) as ctx:
        try:
            count = ctx.await_workers(connect_timeout=args.timeout)
        except TimeoutError as exc:  # names each seed not reached and why
            print(f"bndl-like shell: {exc}", file=sys.stderr)
            return 1
        banner = (f"bndl_like {bndl_like.__version__}: ctx is connected to {count} workers "
                  f"through {', '.join(map(str, seeds))}")
        namespace = {"ctx": ctx, "bndl_like": bndl_like, **{n: getattr(bndl_like, n)
                                                           for n in bndl_like.__all__}}
        try:
            from IPython import start_ipython
        except ImportError:
            import code
            code.interact(banner=banner, local=namespace, exitmsg="")
        else:
            print(banner)
            start_ipython(argv=[], user_ns=namespace)
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(workers=args.workers, progress=not args.no_progress, profile=args.profile)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: no option is taken for a longer one it abbreviates (--secret-f)
    parser = argparse.ArgumentParser(prog="bndl-like", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _option(parser, "log-level", "DEBUG, INFO, WARNING or ERROR; default INFO for worker and "
                                 "supervisor, WARNING otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run one worker process", allow_abbrev=False)
    _worker_options(worker)

    supervisor = sub.add_parser("supervisor", help="run and keep running N workers on this host",
                                allow_abbrev=False)
    _option(supervisor, "workers", "worker processes to keep running", type=int,
            default=os.cpu_count() or 1)
    _option(supervisor, "max-restarts", "restarts of one worker within 60s that make a crash loop",
            type=int, default=5)
    _worker_options(supervisor, supervisor=True)

    status = sub.add_parser("status", help="list the workers of a cluster, their load and uptime",
                            allow_abbrev=False)
    _cluster_options(status)
    _option(status, "timeout", "seconds to wait for workers to answer", type=float, default=5.0)

    shell = sub.add_parser("shell", help="an interactive Python with ctx connected to a cluster",
                           allow_abbrev=False)
    _cluster_options(shell)
    _option(shell, "timeout", "seconds to wait for a first worker", type=float, default=5.0)

    demo = sub.add_parser("demo", help="run the main job (a word count DAG) on a local cluster",
                          allow_abbrev=False)
    demo.add_argument("--workers", type=int, default=None,
                      help="local worker processes (default: the number of CPUs)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                      help="profile the workers (yappi) and print the top 15 functions (the default; "
                           "--no-profile to skip)")
    return parser


def _exit_process(code: int) -> None:
    """End this process now, as interpreter exit would but without tearing down its modules
    and objects one by one (~0.3 s of a stopping worker's 0.33 s): threads joined, atexit
    handlers run (logging's flush among them), stdio flushed."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    from .deploy import logs

    program = argv is None  # run as the program (not called from Python): a worker exits at once
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg == "--secret" or arg.startswith("--secret=") for arg in argv):
        print(f"bndl-like: {NO_SECRET_OPTION}", file=sys.stderr)  # and never the value
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        daemon = args.command in ("worker", "supervisor")
        logs.setup(args.log_level or ("INFO" if daemon else "WARNING"))
        if args.command == "worker":
            try:
                asyncio.run(_run_worker(args))
            finally:
                _stop_process_group()
            if program:
                _exit_process(0)
            return 0
        if args.command == "supervisor":
            return _supervise(args)
        if args.command == "status":
            return _status(args)
        if args.command == "shell":
            return _shell(args)
        return _demo(args)
    except ValueError as exc:  # a bad option, secret or TLS file: one clear line
        print(f"bndl-like {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
