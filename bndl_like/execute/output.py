"""Moved: the worker's side to :mod:`bndl_like.execute.worker.output`, the driver's to
:mod:`bndl_like.execute.driver.output`; this path stays for code that imports it."""

from .driver.output import DriverOutput, OutputMixin, resolve_forward_output
from .worker.output import WorkerOutput, begin, end, flush_pending

__all__ = ["DriverOutput", "OutputMixin", "WorkerOutput", "begin", "end", "flush_pending",
           "resolve_forward_output"]
