"""Where the cluster secret comes from, and the checks that keep it secret.

A secret is passed as ``secret=``, in ``BNDL_LIKE_SECRET`` (removed from the
environment once read, so no child process inherits it) or in a file readable
by its owner only. A node that listens on, and joins, this host only may use
the per-user *local secret*: a 0600 file in a 0700 directory that every
process of the user on this host finds by itself.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
import stat
import tempfile

log = logging.getLogger(__name__)

MIN_SECRET_BYTES = 16
GOOD_SECRET_BYTES = 32
ENV_VAR = "BNDL_LIKE_SECRET"
MAKE_ONE = "python -c \"import secrets; print(secrets.token_hex(32))\""
_MAX_FILE_BYTES = 64 * 1024  # a secret file larger than this is not a secret file

_env_secret: bytes | None = None  # BNDL_LIKE_SECRET as read, kept once removed from os.environ
_warned: set[bytes] = set()  # short secrets already warned about


def check_secret(value: str | bytes, source: str) -> bytes:
    """``value`` as bytes; ValueError if shorter than 16 bytes (naming ``source``, never the secret)."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise ValueError(f"the secret from {source} must be str or bytes, not {type(value).__name__}")
    if len(value) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret from {source} is {len(value)} bytes long; at least "
                         f"{MIN_SECRET_BYTES} are needed. Make a good one with: {MAKE_ONE}")
    if len(value) < GOOD_SECRET_BYTES and value not in _warned:
        _warned.add(value)  # once per secret: a file read by the CLI is checked again by its Node
        log.warning("the secret from %s is only %d bytes long; %d or more are recommended (%s)",
                    source, len(value), GOOD_SECRET_BYTES, MAKE_ONE)
    return value


def _owned_by_us_or_root(info: os.stat_result) -> bool:
    return info.st_uid in (os.geteuid(), 0)


def read_secret_file(path: str | os.PathLike) -> bytes:
    """The secret in ``path``; refuse a file or directory that others could read or replace.

    The file is opened first and checked through its descriptor, so it cannot be
    swapped between the check and the read; a symlink is refused (O_NOFOLLOW).
    """
    path = os.fspath(path)
    # O_NONBLOCK: a FIFO planted at the path must not block the open; it is refused below
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"the secret file {path} is a symlink; give the path of the file "
                             "itself") from None
        raise ValueError(f"cannot read the secret file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"the secret file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(f"the secret file {path} is open to group or others (mode "
                             f"{stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}")
        if not _owned_by_us_or_root(info):
            raise ValueError(f"the secret file {path} belongs to uid {info.st_uid}, neither you "
                             f"(uid {os.geteuid()}) nor root")
        _check_directory(os.path.dirname(os.path.abspath(path)), info, path)
        data = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_BYTES:
        raise ValueError(f"the secret file {path} is larger than {_MAX_FILE_BYTES} bytes")
    data = data.strip()
    if not data:
        raise ValueError(f"the secret file {path} is empty")
    return check_secret(data, f"secret file {path}")


def _check_directory(directory: str, file_info: os.stat_result, path: str) -> None:
    """Refuse a directory where others may swap the file (sticky only protects our own file)."""
    try:
        info = os.stat(directory)
    except OSError as exc:
        raise ValueError(f"cannot check the directory {directory} of the secret file: "
                         f"{exc.strerror}") from None
    if not info.st_mode & 0o022:
        return
    if info.st_mode & stat.S_ISVTX and file_info.st_uid == os.geteuid():
        return
    raise ValueError(f"the directory {directory} of the secret file {path} is writable by others "
                     f"(mode {stat.S_IMODE(info.st_mode):04o}), who could replace the file; keep "
                     "the secret in a directory only you can write")


def _private_runtime_dir(directory: str) -> bool:
    try:
        info = os.stat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022


def local_secret_path() -> str:
    """The per-user local secret: in ``$XDG_RUNTIME_DIR/bndl-like`` when that is private, else /tmp."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private_runtime_dir(runtime):
        directory = os.path.join(runtime, "bndl-like")
    else:
        directory = f"/tmp/bndl-like-{os.geteuid()}"
    return os.path.join(directory, "secret")


def _ensure_private_dir(directory: str) -> None:
    """Create ``directory`` 0700, or check an existing one is ours and closed to others."""
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ValueError(f"cannot create {directory} for the local secret: {exc.strerror}") from None
    info = os.lstat(directory)  # lstat: a symlink planted in /tmp is not our directory
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a directory"
        raise ValueError(f"{directory}, which holds the local secret, must be a directory of yours "
                         f"(uid {os.geteuid()}) with mode 0700; it is {kind} of uid {info.st_uid} "
                         f"with mode {stat.S_IMODE(info.st_mode):04o}")


def local_secret() -> bytes:
    """The local secret, made on first use; concurrent first uses all end with the same one."""
    path = local_secret_path()
    directory = os.path.dirname(path)
    _ensure_private_dir(directory)
    if not os.path.lexists(path):
        # written in full under a temporary name, then linked: a reader never sees it half
        # written, and link() fails if another process linked its own first
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret-")
        try:
            os.write(fd, (secrets.token_hex(32) + "\n").encode())
            os.close(fd)
            fd = -1
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process won; use theirs
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)
    return read_secret_file(path)


def secret_from_env() -> bytes | None:
    """``BNDL_LIKE_SECRET``, removed from ``os.environ`` when read and kept for later calls."""
    global _env_secret
    value = os.environ.pop(ENV_VAR, None)
    if value is not None:
        if not value:
            raise ValueError(f"{ENV_VAR} is set but empty; unset it or put a secret of at least "
                             f"{MIN_SECRET_BYTES} bytes in it ({MAKE_ONE})")
        _env_secret = check_secret(os.fsencode(value), ENV_VAR)  # the bytes as they were set
    return _env_secret


def resolve_secret(value: str | bytes | None, *, local_ok: bool) -> bytes:
    """The cluster secret: ``value``, else ``BNDL_LIKE_SECRET``, else the local secret if ``local_ok``."""
    if value is not None:
        return check_secret(value, "secret=")
    from_env = secret_from_env()
    if from_env is not None:
        return from_env
    if local_ok:
        return local_secret()
    raise ValueError("no cluster secret: pass secret=..., set BNDL_LIKE_SECRET or use --secret-file "
                     "(a node listening on, and joining, this host only uses the local secret in "
                     f"{local_secret_path()})")


def status_token(secret: bytes) -> str:
    """The bearer token for a node's HTTP ``/status``: derived from the secret, never the secret."""
    return hmac.new(secret, b"bndl-like-status-token", "sha256").hexdigest()
