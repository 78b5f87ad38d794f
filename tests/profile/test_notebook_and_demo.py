"""The profiling notebook, executed for real, and ``bndl-like demo --profile``."""

from __future__ import annotations

import io
import os

import pytest

from bndl_like.cli import build_parser

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "notebooks")


@pytest.mark.timeout(300)
def test_profiling_notebook_runs():
    nbformat = pytest.importorskip("nbformat", reason="pip install -e .[test] brings nbclient")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e .[test] brings nbclient")
    pytest.importorskip("ipykernel", reason="pip install -e .[test] brings ipykernel")
    nb = nbformat.read(os.path.join(NOTEBOOKS, "profiling.ipynb"), as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        "commit the notebook with its outputs cleared"
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOKS}}).execute()
    text = "\n".join(out.get("text", "") or str(out.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert "CPU profile (cpu clock" in text and "workload.py:" in text and " simulate" in text
    assert "numpy/" in text and "--- worker " in text
    assert "Memory top 5 by lineno" in text and "block = np.random" in text and "MiB" in text


@pytest.mark.timeout(120)
def test_demo_prints_the_top_of_the_cpu_profile():
    from bndl_like.demo import run_demo

    assert build_parser().parse_args(["demo", "--profile"]).profile
    out = io.StringIO()
    run_demo(workers=2, chunks=8, words_per_chunk=5_000, partitions=2, progress=False, out=out,
             profile=True)
    text = out.getvalue()
    assert "CPU profile (cpu clock, seconds) of 2 workers: the top 15 by ttot desc" in text
    table = text[text.index("CPU profile"):].splitlines()
    assert len([line for line in table if ":" in line and not line.startswith(("CPU", "..."))]) == 15
    assert "generate_and_count" in text
