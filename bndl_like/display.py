"""Short reprs and Jupyter HTML (``_repr_html_``) for contexts, jobs, tasks and peers.

Duck-typed on purpose: this module imports nothing from the package, so both
:mod:`bndl_like.rmi` and :mod:`bndl_like.execute` can use it. Every value that
comes from users (names, task ids, error messages) is escaped in the HTML.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

MAX_FAILED_TASKS = 10   # failed tasks listed in a job's HTML
MAX_WORKERS = 50        # workers listed in a context's HTML
LOAD_TIMEOUT = 2.0      # seconds a context's repr waits for its event loop

_STYLE_TABLE = 'style="border-collapse:collapse"'
_STYLE_CELL = 'style="text-align:left"'  # Jupyter right-aligns cells by default


# -- formatting helpers -------------------------------------------------------------------------


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(value if isinstance(value, str) else str(value))


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


def fmt_duration(seconds: float | None) -> str:
    """Human units: ``0.4 ms``, ``12 ms``, ``3.4 s``, ``2 min 5 s``, ``1 h 3 min``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 0.9995:
        return f"{seconds * 1000:.0f} ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def short_error(exc: BaseException | None, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters ('' for None)."""
    if exc is None:
        return ""
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable message>"
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    name = type(exc).__name__
    return shorten(f"{name}: {line}" if line else name, limit)


def short_id(task_id: Any, limit: int = 60) -> str:
    try:
        text = repr(task_id)
    except Exception:
        text = f"<{type(task_id).__name__}>"
    return shorten(text, limit)


# -- HTML building ----------------------------------------------------------------------------


def html_table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None,
               more: int = 0) -> str:
    """A table of escaped cells; ``more`` > 0 adds a last row '… and N more'."""
    out = [f"<table {_STYLE_TABLE}>"]
    width = len(header) if header else 1
    if header:
        out.append("<tr>" + "".join(f"<th {_STYLE_CELL}>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        width = max(width, len(row))
        out.append("<tr>" + "".join(f"<td {_STYLE_CELL}>{esc(c)}</td>" for c in row) + "</tr>")
    if more > 0:
        out.append(f'<tr><td {_STYLE_CELL} colspan="{width}">… and {more} more</td></tr>')
    out.append("</table>")
    return "".join(out)


def html_kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table: a bold key, then its value (pairs whose value is None are left out)."""
    rows = [f"<tr><th {_STYLE_CELL}>{esc(k)}</th><td {_STYLE_CELL}>{esc(v)}</td></tr>"
            for k, v in pairs if v is not None]
    return f"<table {_STYLE_TABLE}>" + "".join(rows) + "</table>"


def html_block(title: str, *tables: str, note: str = "") -> str:
    """A ``<div>`` with a bold (escaped) title, an optional note and ready-made tables."""
    head = f"<b>{esc(title)}</b>" + (f" <span>{esc(note)}</span>" if note else "")
    return '<div class="bndl-like">' + head + "".join(tables) + "</div>"


# -- tasks -------------------------------------------------------------------------------------


def task_repr(task) -> str:
    """``<FuncTask ('map', 3) failed on w1 after 2 attempts, 0.3 s: ZeroDivisionError: ...>``."""
    state = task.state
    text = f"<{type(task).__name__} {short_id(task.id)} {state}"
    if task.executed_on:
        text += f" on {task.executed_on[-1]}"
    attempts = task.attempts
    if state == "running":
        if attempts > 1:
            text += f" (attempt {attempts})"
    elif attempts > 1 or (state == "failed" and attempts):
        text += f" after {plural(attempts, 'attempt')}"
    if task.started_at is not None:
        text += f", {fmt_duration(task.duration)}"
    if state == "failed":
        error = short_error(task.exception(), 120)
        if error:
            text += f": {error}"
    return text + ">"


def task_html(task) -> str:
    exc = task.exception() if task.state == "failed" else None
    history = ", ".join(task.executed_on) if len(task.executed_on) > 1 else None
    name = task.name
    pairs = [
        ("id", short_id(task.id, 200)),
        ("name", name if name != str(task.id) else None),
        ("description", task.desc),
        ("state", task.state),
        ("worker", task.executed_on[-1] if task.executed_on else "-"),
        ("ran on", history),
        ("attempts", task.attempts),
        ("duration", fmt_duration(task.duration)),
        ("error", short_error(exc, 500) if exc is not None else None),
    ]
    return html_block(f"{type(task).__name__} {short_id(task.id)}", html_kv(pairs), note=task.state)


# -- jobs --------------------------------------------------------------------------------------


def job_repr(job) -> str:
    """``<Job word-count done 73/73 done, 0 failed, 1 retried, 1.2 s>``."""
    c = job.counts
    text = f"<Job {job.name} {job.state} {c['done']}/{c['total']} done"
    if c["running"]:
        text += f", {c['running']} running"
    text += f", {c['failed']} failed"
    if c["cancelled"]:
        text += f", {c['cancelled']} cancelled"
    text += f", {c['retried']} retried"
    if job.started_at is not None:
        text += f", {fmt_duration(job.duration)}"
    return text + ">"


def job_html(job, max_failed: int = MAX_FAILED_TASKS) -> str:
    c = job.counts
    header = ["state", "total", "pending", "running", "done", "failed", "cancelled", "retried",
              "duration"]
    counts = html_table([[job.state, c["total"], c["pending"], c["running"], c["done"], c["failed"],
                          c["cancelled"], c["retried"], fmt_duration(job.duration)]], header)
    tables = [counts]
    failed = [t for t in job.tasks if t.state == "failed"]
    if failed:
        rows = [[short_id(t.id, 100), t.executed_on[-1] if t.executed_on else "-", t.attempts,
                 short_error(t.exception(), 300)] for t in failed[:max_failed]]
        tables.append("<div>failed tasks:</div>")
        tables.append(html_table(rows, ["task", "worker", "attempts", "error"],
                                 more=len(failed) - len(rows)))
    return html_block(f"Job {job.name}", *tables, note=job.desc or "")


# -- peers -------------------------------------------------------------------------------------


def _peer_state(peer) -> str:
    return "connected" if peer.connected else "lost"


def peer_repr(peer) -> str:
    """``<Peer worker vm.123.0 on 127.0.0.1 connected>``."""
    where = f" on {peer.host}" if getattr(peer, "host", "") else ""
    return f"<Peer {peer.node_type} {peer.name}{where} {_peer_state(peer)}>"


def peer_html(peer) -> str:
    state = _peer_state(peer)
    reason = getattr(peer, "lost_reason", None)
    if not peer.connected and reason:
        state += f" ({reason})"
    hostname = getattr(peer, "hostname", "")
    pairs = [
        ("type", peer.node_type),
        ("host", peer.host or "-"),
        ("hostname", hostname if hostname and hostname != peer.host else None),
        ("addresses", ", ".join(peer.addresses) or "-"),
        ("pid", peer.pid if peer.pid is not None else "-"),
        ("state", state),
    ]
    return html_block(f"Peer {peer.name}", html_kv(pairs), note=state)


# -- execution contexts ------------------------------------------------------------------------


def context_snapshot(ctx) -> dict:
    """What the repr and HTML of an ExecutionContext show; never raises."""
    node = getattr(ctx, "_node", None)
    snap: dict = {
        "name": getattr(node, "name", "?"),
        "closed": bool(getattr(ctx, "_closed", True)),
        "jobs": getattr(getattr(ctx, "jobs", None), "run_count", 0),
        "workers": [],  # (name, host, load or None, state)
        "load": None,
    }
    if snap["closed"]:
        return snap
    try:
        workers = list(ctx.workers)
    except Exception:
        workers = []
    try:
        load = ctx._worker_load([w.name for w in workers], LOAD_TIMEOUT)
    except Exception:
        load = None
    held = getattr(getattr(ctx, "_state", None), "held", set())
    for w in workers:
        state = _peer_state(w) + (", held" if w.name in held else "")
        snap["workers"].append((w.name, w.host, None if load is None else load.get(w.name, 0), state))
    snap["load"] = None if load is None else sum(load.values())
    snap["held"] = sum(1 for w in workers if w.name in held)
    snap["hosts"] = len({w.host for w in workers})
    return snap


def context_repr(ctx) -> str:
    """``<ExecutionContext driver-name open: 2 workers on 1 host, 5 tasks assigned, 3 jobs run>``."""
    snap = context_snapshot(ctx)
    jobs = f"{plural(snap['jobs'], 'job')} run"
    if snap["closed"]:
        return f"<ExecutionContext {snap['name']} closed, {jobs}>"
    workers = snap["workers"]
    load = "?" if snap["load"] is None else snap["load"]
    running = f"{load} task{'' if load == 1 else 's'} assigned"
    held = f", {snap['held']} held" if snap["held"] else ""
    return (f"<ExecutionContext {snap['name']} open: {plural(len(workers), 'worker')} on "
            f"{plural(snap['hosts'], 'host')}, {running}{held}, {jobs}>")


def context_html(ctx, max_workers: int = MAX_WORKERS) -> str:
    snap = context_snapshot(ctx)
    title = f"ExecutionContext {snap['name']}"
    if snap["closed"]:
        return html_block(title, html_kv([("state", "closed"), ("jobs run", snap["jobs"])]),
                          note="closed")
    workers = snap["workers"]
    load = "?" if snap["load"] is None else snap["load"]
    summary = html_kv([("state", "open"), ("workers", len(workers)), ("hosts", snap["hosts"]),
                       ("tasks assigned", load), ("held", snap["held"] or None),
                       ("jobs run", snap["jobs"])])
    rows = [(name, host, "?" if w_load is None else w_load, state)
            for name, host, w_load, state in workers[:max_workers]]
    table = html_table(rows, ["worker", "host", "load", "state"], more=len(workers) - len(rows))
    return html_block(title, summary, table, note="open")
