"""``bndl-like demo --profile`` (the notebooks are executed in tests/notebooks)."""

from __future__ import annotations

import io

import pytest

from bndl_like.cli import build_parser


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
