"""Every ```python block of README.md runs as written, each in a fresh interpreter in a
temporary directory, with a secret file of its own; a block preceded by
``<!-- no-test: why -->`` is skipped, naming why."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
NO_TEST = re.compile(r"^<!--\s*no-test:\s*(.+?)\s*-->$")
MAX_UNTESTED = 2  # blocks that need a second machine; keep them few

pytestmark = pytest.mark.timeout(150)


def python_blocks(path: str = README) -> list[tuple[int, str, str | None]]:
    """``(line, code, why not tested)`` for each ```python block, in order."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NO_TEST.match(before)
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            blocks.append((start, "\n".join(lines[start:end]) + "\n", marker.group(1) if marker else None))
            i = end
        i += 1
    return blocks


BLOCKS = python_blocks()


def test_the_readme_shows_runnable_code_and_its_two_commands():
    assert len(BLOCKS) >= 4
    untested = [line for line, _, why in BLOCKS if why]
    assert len(untested) <= MAX_UNTESTED, f"too many untested README blocks (lines {untested})"
    text = open(README, encoding="utf-8").read()
    assert "pip install -e . && bndl-like demo" in text
    assert "pip install -e .[test] && python -m pytest" in text


@pytest.fixture
def secret_file(tmp_path):
    """A secret file as the README makes one: mode 0600 in a 0700 directory."""
    home = tmp_path / "bndl-like"
    home.mkdir(mode=0o700)
    path = home / "secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return str(path)


@pytest.mark.parametrize("line, code, why", BLOCKS, ids=[f"line-{line}" for line, _, _ in BLOCKS])
def test_a_readme_block_runs_as_written(line, code, why, tmp_path, secret_file):
    if why:
        pytest.skip(f"README line {line}: {why}")
    script = tmp_path / "block.py"
    script.write_text(code)
    env = dict(os.environ)
    for name in ("BNDL_LIKE_SEEDS", "BNDL_LIKE_SECRET", "BNDL_LIKE_LISTEN"):
        env.pop(name, None)
    env["BNDL_LIKE_SECRET_FILE"] = secret_file
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    where = f"README.md line {line}"
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr[-3000:]}"
    # a block that misuses the API or leaks a cluster shows it in a warning
    assert "Warning" not in proc.stderr, f"{where} warned:\n{proc.stderr[-3000:]}"
    if "print(" in code or "print_" in code:
        assert proc.stdout.strip(), f"{where} printed nothing"
