"""Moved to :mod:`bndl_like.execute.worker.command`; this path stays for code that imports it."""

from typing import Any

from .worker import command as _module
from .worker.command import (
    CommandFailed,
    CommandResult,
    CommandTask,
    CommandTimeout,
    command_key,
    run_command,
    running_commands,
    signal_command,
)

__all__ = ["CommandFailed", "CommandResult", "CommandTask", "CommandTimeout", "command_key", "run_command",
           "running_commands", "signal_command"]


def __getattr__(name: str) -> Any:
    return getattr(_module, name)
