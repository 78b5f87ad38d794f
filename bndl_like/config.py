"""Defaults, environment variables and validation of options, in one place.

Every option ``name`` can be set with the environment variable
``BNDL_LIKE_<NAME>`` (dots become underscores, upper case), e.g.
``BNDL_LIKE_HEARTBEAT_TIMEOUT=3`` or ``BNDL_LIKE_EXECUTE_CONCURRENCY=4``.
Explicit arguments win over the environment, the environment over defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _positive_float(value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError("must be > 0")
    return value


def _positive_int(value) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("must be a whole number")
    value = int(value)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_int(value) -> int:
    value = int(value)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _auto_bool(value) -> bool | str:
    """True, False or "auto" (also from the environment: 1/0, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true, false or auto")


def _bool(value) -> bool:
    """True or False (also from the environment: 1/0, yes/no, on/off)."""
    parsed = _auto_bool(value)
    if parsed == "auto":
        raise ValueError("must be true or false")
    return bool(parsed)


def _str(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _addresses(value) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    # each is parsed (and a bad one refused, naming it) by the node that dials it
    addresses = [str(v).strip() for v in value]
    if not all(addresses):
        raise ValueError("an address is empty")
    return addresses


def _choice(*choices: str) -> Callable[[Any], str]:
    """One of ``choices`` (case and surrounding blanks ignored)."""
    def parse(value) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return parse


def _existing_file(value) -> str:
    value = os.fspath(value)
    if not os.path.isfile(value):
        raise ValueError("no such file")
    return value


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str


OPTIONS = {o.name: o for o in [
    Option("cluster", "default", _str, "cluster name; nodes of different clusters refuse each other"),
    Option("listen", "tcp://127.0.0.1:0", _str, "address to listen on, tcp://host:port (0 = any port)"),
    Option("seeds", None, _addresses, "addresses of nodes to join, tcp://host:port, comma separated"),
    Option("heartbeat_interval", 1.0, _positive_float, "seconds between heartbeats"),
    Option("heartbeat_timeout", 6.0, _positive_float,
           "seconds of silence after which a peer is declared lost"),
    Option("tls_cert", None, _existing_file, "this node's TLS certificate (PEM), signed by tls_ca"),
    Option("tls_key", None, _existing_file, "the private key of tls_cert (PEM)"),
    Option("tls_ca", None, _existing_file, "the cluster's CA certificate (PEM) that signs every node's"),
    Option("connect_timeout", 5.0, _positive_float, "seconds to wait for a connection handshake"),
    Option("max_message_size", 4 << 30, _positive_int, "largest message accepted, in bytes"),
    Option("mesh", "on_demand", _choice("on_demand", "full"),
           "how workers connect: on_demand (to the drivers, and to another worker only when "
           "asked for it) or full (every node to every other)"),
    Option("max_peer_connections", 64, _positive_int,
           "on_demand mesh: connections a worker keeps to other workers; beyond it the least "
           "recently used idle one is closed"),
    Option("idle_peer_timeout", 60.0, _positive_float,
           "on_demand mesh: seconds without a call after which a worker closes its connection "
           "to another worker"),
    Option("execute.concurrency", 1, _positive_int, "tasks running at once per worker"),
    Option("execute.prefetch", 16, _non_negative_int,
           "tasks handed to a worker ahead of its free slots"),
    Option("execute.attempts", 1, _positive_int, "maximum attempts per task"),
    Option("execute.worker_deaths", 2, _positive_int,
           "worker losses while running a task before it fails with WorkerDied"),
    Option("execute.keep_jobs", 100, _non_negative_int,
           "finished jobs kept in ctx.jobs (their states, counts, times, errors; not results)"),
    Option("execute.record_events", False, _bool,
           "keep what each job's scheduler was told and decided (job.recording), to replay the run"),
    Option("execute.progress", "auto", _auto_bool,
           "progress bars for jobs: true, false or auto (on in an interactive session)"),
    Option("forward_output", "auto", _auto_bool,
           "what tasks print and log, written on the driver: true, false or auto (on for a local "
           "cluster and in an interactive session)"),
]}


def env_name(name: str) -> str:
    return "BNDL_LIKE_" + name.replace(".", "_").upper()


def get(name: str, value: Any = None) -> Any:
    """The validated value of option ``name``: ``value`` if given, else env, else default."""
    try:
        option = OPTIONS[name]
    except KeyError:
        raise KeyError(f"unknown option {name!r}; known: {', '.join(sorted(OPTIONS))}") from None
    source = "argument"
    if value is None:
        env = os.environ.get(env_name(name))
        if env is not None and env != "":
            value, source = env, env_name(name)
        else:
            return option.default
    try:
        return option.parse(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid value for {name} ({source}): {value!r}: {exc}") from None

