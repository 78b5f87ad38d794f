"""Log lines a collector can parse: time, level, node name, logger, message.

The level chosen (``--log-level``) is the framework's (``bndl_like``, ``aiohttp``, ``asyncio``
and other libraries' records outside tasks); the records task code logs in a task's thread
pass from INFO up (or as the task's loggers say), and go to the task's driver instead when it
asked for its tasks' output (see :mod:`bndl_like.execute.worker.output`). Every line written here is
also kept among the process's recent lines (``ctx.worker_logs``).
"""

from __future__ import annotations

import logging
import os
import sys

from ..execute.worker import output

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(node)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"
_node_name = f"pid{os.getpid()}"


class _Route(logging.Filter):
    """Names the node; lets through records at ``level`` and up, and those of task code unless
    they are forwarded to the task's driver."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = _node_name
        sink = output.task_sink(record)
        if sink is not None:
            return not output.forwarding(sink)
        return record.levelno >= self.level


class _Handler(logging.StreamHandler):
    """A stream handler that also keeps each line among the recent ones."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            for line in text.split("\n"):
                output.remember(line)
            self.stream.write(text + self.terminator)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def set_node_name(name: str) -> None:
    global _node_name
    _node_name = name


def setup(level: str = "INFO") -> None:
    """Log to stderr in the format above (once per process)."""
    number = logging.getLevelName(str(level).upper())
    if not isinstance(number, int):
        raise ValueError(f"invalid log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
    handler = _Handler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_Route(number))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # task code logs at INFO and up (unless its loggers say otherwise); the framework as chosen
    root.setLevel(min(number, logging.INFO))
    for name in output.FRAMEWORK_LOGGERS:
        logging.getLogger(name).setLevel(number)
