"""The cluster secret from a file (never from the command line, where ps shows it)."""

from __future__ import annotations

import os
import stat


def read_secret_file(path: str) -> bytes:
    """Read the secret; refuse a file that group or others may read, naming the fix."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"the secret file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ValueError(f"the secret file {path} is readable by others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
    with open(path, "rb") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"the secret file {path} is empty")
    return secret
