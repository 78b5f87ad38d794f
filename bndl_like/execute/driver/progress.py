"""Progress bars for jobs: ``tqdm.auto`` (a widget in Jupyter, text in a terminal).

On by default in an interactive session (a Python or IPython prompt, a Jupyter
kernel), off in scripts; ``execute.progress`` (``BNDL_LIKE_EXECUTE_PROGRESS``:
``auto``, ``true`` or ``false``), ``ExecutionContext(progress=...)`` and the
``progress=`` argument of ``execute`` / ``map`` choose otherwise.
"""

from __future__ import annotations

import sys
import time

from ... import config


def interactive() -> bool:
    """Whether this process is an interactive session (a prompt or a Jupyter kernel)."""
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return True
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    try:
        return get_ipython is not None and get_ipython() is not None
    except Exception:
        return False


def check(value: bool | None) -> bool | None:
    """``value`` if it is a valid ``progress`` setting (True, False or None), else TypeError."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"progress must be True, False or None, not {value!r}")
    return value


def wanted(argument: bool | None, ctx_setting: bool | None) -> bool:
    """Whether to show a bar: the argument, else the context's setting, else the option."""
    for choice in (argument, ctx_setting):
        if check(choice) is not None:
            return choice
    setting = config.get("execute.progress")
    return interactive() if setting == "auto" else setting


class JobProgress:
    """A bar over a job's tasks: done of total, with failed and retried tasks alongside.

    Updated from the thread that consumes the results; reads counters the job's run
    keeps on the loop thread (plain ints: a read sees a recent value).
    """

    min_interval = 0.1  # seconds between redraws

    def __init__(self, job, file=None):
        from tqdm.auto import tqdm  # imported late: tqdm.auto picks the widget in a kernel

        self.job = job
        self.bar = tqdm(total=len(job.tasks), desc=job.name, unit="task", file=file,
                        dynamic_ncols=True, leave=True)
        self.shown = (0, 0, 0)
        self.last = 0.0

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.min_interval:
            return
        self.last = now
        job = self.job
        counts = (job.done_count, job.failed_count, job.retried)
        if counts == self.shown:
            return
        done, failed, retried = counts
        bar = self.bar
        if (failed, retried) != self.shown[1:]:
            postfix = {}
            if failed:
                postfix["failed"] = failed
            if retried:
                postfix["retried"] = retried
            bar.set_postfix(postfix, refresh=False)
        if done != bar.n:
            bar.update(done - bar.n)  # tqdm's own rate smoothing and redraw pacing
        if force or (failed, retried) != self.shown[1:]:
            bar.refresh()
        self.shown = counts

    def close(self) -> None:
        self.update(force=True)
        if self.job.state in ("failed", "cancelled"):
            self.bar.set_description(f"{self.job.name} ({self.job.state})", refresh=False)
        self.bar.close()


__all__ = ["JobProgress", "check", "interactive", "wanted"]
