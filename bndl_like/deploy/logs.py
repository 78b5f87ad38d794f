"""Log lines a collector can parse: time, level, node name, logger, message."""

from __future__ import annotations

import logging
import os
import sys

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(node)s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%dT%H:%M:%S"
_node_name = f"pid{os.getpid()}"


class _NodeName(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.node = _node_name
        return True


def set_node_name(name: str) -> None:
    global _node_name
    _node_name = name


def setup(level: str = "INFO") -> None:
    """Log to stderr in the format above (once per process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    handler.addFilter(_NodeName())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        raise ValueError(f"invalid log level {level!r}; use DEBUG, INFO, WARNING or ERROR") from None
