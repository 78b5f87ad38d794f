"""Start and stop worker processes on this machine (the embedded local cluster)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time


class LocalWorkers:
    """``count`` worker processes on 127.0.0.1 that join ``seed``; stopped by pid."""

    def __init__(self, count: int, seed: str, secret: bytes, cluster: str = "default",
                 extra_env: dict | None = None):
        if count < 1:
            raise ValueError(f"workers must be >= 1, not {count}")
        env = dict(os.environ)
        env.update(extra_env or {})
        env["BNDL_LIKE_SECRET"] = secret.decode() if isinstance(secret, bytes) else secret
        env["BNDL_LIKE_CLUSTER"] = cluster
        level = os.environ.get("BNDL_LIKE_LOG_LEVEL", "WARNING")
        cmd = [sys.executable, "-m", "bndl_like.cli", "--log-level", level, "worker",
               "--listen", "tcp://127.0.0.1:0", "--seeds", seed]
        self.processes = [subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
                          for _ in range(count)]

    @staticmethod
    def new_secret() -> bytes:
        return secrets.token_hex(32).encode()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, SIGKILL those still alive after ``timeout``; reap all."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
