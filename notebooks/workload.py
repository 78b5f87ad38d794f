"""A numpy workload for notebooks/profiling.ipynb.

Task functions live in a module beside the notebook: its workers run with the notebook's
directory as their working directory, so they import it by name.
"""

from __future__ import annotations

import numpy as np

BLOCKS: dict[int, np.ndarray] = {}  # blocks kept on a worker, as a cache would


def simulate(seed: int, n: int = 300) -> float:
    """A random walk of matrices: products, a solve and a norm."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    for _ in range(5):
        a = np.tanh(a @ a.T / n)
    x = np.linalg.solve(a + n * np.eye(n), rng.standard_normal(n))
    return float(np.linalg.norm(x))


def load_block(i: int, rows: int = 250_000) -> int:
    """Make a block of data and keep it on the worker; return its size in bytes."""
    block = np.random.default_rng(i).standard_normal((rows, 4))
    BLOCKS[i] = block
    return block.nbytes
