"""Executing notebooks on a real kernel (nbclient + ipykernel), with the kernel interrupted
the way Jupyter's stop button does it, in cells tagged ``interrupt``."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "notebooks")


def load(name: str):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e .[test] brings nbformat")
    return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


class Interrupter(threading.Thread):
    """Interrupts the kernel (``KernelManager.interrupt_kernel``: SIGINT to the kernel's process
    group, as the stop button does) once ``cell`` shows output matching ``ready``."""

    def __init__(self, client, cell, ready, timeout: float = 30):
        super().__init__(name="notebook-interrupter", daemon=True)
        self.client, self.cell, self.ready, self.timeout = client, cell, ready, timeout
        self.interrupted_at: float | None = None
        self.cancelled = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.cancelled.is_set() and time.monotonic() < deadline:
            if any(self.ready(out) for out in list(self.cell.outputs)):
                asyncio.run(_interrupt(self.client.km))
                self.interrupted_at = time.monotonic()
                return
            time.sleep(0.01)  # polling the outputs nbclient appends in its own thread


async def _interrupt(km) -> None:
    result = km.interrupt_kernel()
    if asyncio.iscoroutine(result):
        await result


def any_output(out) -> bool:
    return True


def run(nb, ready=any_output, timeout: float = 55):
    """Execute ``nb`` cell by cell on a fresh kernel; interrupt the cells tagged ``interrupt``
    once they show output ``ready`` accepts. Returns the interrupters by cell index."""
    nbclient = pytest.importorskip("nbclient", reason="pip install -e .[test] brings nbclient")
    pytest.importorskip("ipykernel", reason="pip install -e .[test] brings ipykernel")
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOKS}})
    interrupters: dict[int, Interrupter] = {}

    def on_cell_execute(cell, cell_index, **_):
        if "interrupt" in cell.metadata.get("tags", []):
            interrupters[cell_index] = Interrupter(client, cell, ready)
            interrupters[cell_index].start()

    def on_cell_executed(cell, cell_index, **_):
        interrupter = interrupters.get(cell_index)
        if interrupter is not None:
            interrupter.cancelled.set()
            interrupter.join(5)

    client.on_cell_execute = on_cell_execute
    client.on_cell_executed = on_cell_executed
    client.execute()
    return interrupters


def outputs_text(cell) -> str:
    """Everything a code cell showed, as text (errors by name, value and traceback)."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
        else:
            parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def code_cells(nb) -> list:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def cell_with(nb, text: str):
    """The code cell whose source contains ``text`` (exactly one)."""
    found = [cell for cell in code_cells(nb) if text in cell.source]
    assert len(found) == 1, f"{len(found)} cells contain {text!r}"
    return found[0]
