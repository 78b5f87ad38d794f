"""Where the cluster secret comes from: files that others could read or swap, the environment, the
local secret shared by one user's processes on one host."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import pytest

from bndl_like.rmi import secrets as rmi_secrets
from bndl_like.rmi.secrets import (
    check_secret,
    local_secret,
    local_secret_path,
    read_secret_file,
    resolve_secret,
    secret_from_env,
    status_token,
)

from ..conftest import ROOT

GOOD = "0123456789abcdef0123456789abcdef-good"


def secret_file(directory, content: str = GOOD, mode: int = 0o600):
    path = directory / "secret"
    path.write_text(content)
    os.chmod(path, mode)
    return path


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    """A private XDG_RUNTIME_DIR of this test only, for the local secret."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_a_weak_secret_is_refused_naming_the_source_not_the_secret():
    with pytest.raises(ValueError) as info:
        check_secret("hunter2-secret", "secret file /etc/x")
    message = str(info.value)
    assert "secret file /etc/x" in message and "14 bytes" in message and "at least 16" in message
    assert "secrets.token_hex(32)" in message
    assert "hunter2" not in message


def test_a_short_but_accepted_secret_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="bndl_like.rmi.secrets"):
        assert check_secret("sixteen-bytes-ok", "secret=") == b"sixteen-bytes-ok"
    assert "only 16 bytes" in caplog.text and "sixteen" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bndl_like.rmi.secrets"):
        check_secret(b"x" * 32, "secret=")
    assert not caplog.records


def test_a_good_file_is_read_and_stripped(tmp_path):
    assert read_secret_file(secret_file(tmp_path, f"  {GOOD}\n")) == GOOD.encode()


def test_a_file_others_may_read_is_refused(tmp_path):
    path = secret_file(tmp_path, mode=0o644)
    with pytest.raises(ValueError, match=f"mode 0644.*chmod 600 {path}"):
        read_secret_file(path)
    os.chmod(path, 0o620)  # writable by the group: it could be replaced
    with pytest.raises(ValueError, match="chmod 600"):
        read_secret_file(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_file_of_another_user_is_refused(tmp_path):
    path = secret_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ValueError, match="belongs to uid 65534"):
        read_secret_file(path)


def test_a_symlink_is_refused(tmp_path):
    target = secret_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="is a symlink"):
        read_secret_file(link)


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        read_secret_file(path)


def test_a_file_in_a_directory_others_may_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    path = secret_file(shared)
    os.chmod(shared, 0o777)
    with pytest.raises(ValueError, match=f"directory {shared} .* writable by others"):
        read_secret_file(path)
    # sticky (like /tmp): others may not replace a file of ours
    os.chmod(shared, 0o1777)
    assert read_secret_file(path) == GOOD.encode()


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        read_secret_file(secret_file(tmp_path, " \n"))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"cannot read the secret file {tmp_path / 'nope'}"):
        read_secret_file(tmp_path / "nope")


def test_an_empty_environment_secret_is_an_error(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_SECRET", "")
    with pytest.raises(ValueError, match="BNDL_LIKE_SECRET is set but empty"):
        secret_from_env()


def test_the_environment_secret_is_removed_once_read(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_SECRET", GOOD)
    assert secret_from_env() == GOOD.encode()
    assert "BNDL_LIKE_SECRET" not in os.environ
    assert secret_from_env() == GOOD.encode()  # kept for later calls in this process
    child = subprocess.run([sys.executable, "-c", "import os; print('BNDL_LIKE_SECRET' in os.environ)"],
                           capture_output=True, text=True, timeout=30, check=True)
    assert child.stdout.strip() == "False"


def test_a_weak_environment_secret_is_refused(monkeypatch):
    monkeypatch.setenv("BNDL_LIKE_SECRET", "tiny")
    with pytest.raises(ValueError, match="BNDL_LIKE_SECRET is 4 bytes"):
        secret_from_env()


def test_resolve_order_and_the_error_without_any(monkeypatch, runtime_dir):
    monkeypatch.setenv("BNDL_LIKE_SECRET", GOOD)
    assert resolve_secret("explicit-0123456789", local_ok=True) == b"explicit-0123456789"
    assert resolve_secret(None, local_ok=False) == GOOD.encode()
    monkeypatch.setattr(rmi_secrets, "_env_secret", None)
    with pytest.raises(ValueError) as info:
        resolve_secret(None, local_ok=False)
    assert "no cluster secret" in str(info.value) and local_secret_path() in str(info.value)
    assert not os.path.exists(local_secret_path())  # an error makes nothing
    assert resolve_secret(None, local_ok=True) == local_secret()
    with pytest.raises(ValueError, match="secret= is 0 bytes"):
        resolve_secret("", local_ok=True)


def test_local_secret_is_made_private_and_kept(runtime_dir):
    secret = local_secret()
    path = local_secret_path()
    assert path == str(runtime_dir / "bndl-like" / "secret")
    assert len(bytes.fromhex(secret.decode())) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert local_secret() == secret
    assert os.listdir(os.path.dirname(path)) == ["secret"]  # no temporary file left


def test_local_secret_falls_back_to_tmp(monkeypatch, tmp_path):
    fallback = f"/tmp/bndl-like-{os.geteuid()}/secret"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert local_secret_path() == fallback
    open_to_all = tmp_path / "open"
    open_to_all.mkdir()
    os.chmod(open_to_all, 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(open_to_all))
    assert local_secret_path() == fallback


def test_local_secret_refuses_a_directory_open_to_others(runtime_dir):
    directory = runtime_dir / "bndl-like"
    directory.mkdir()
    os.chmod(directory, 0o755)
    with pytest.raises(ValueError, match=f"{directory}, which holds the local secret.*mode 0755"):
        local_secret()


def test_local_secret_takes_the_one_another_process_linked_first(runtime_dir, monkeypatch):
    theirs = local_secret()
    # as if the other process linked its file between our look and our link
    monkeypatch.setattr(rmi_secrets.os.path, "lexists", lambda path: False)
    assert local_secret() == theirs
    assert os.listdir(runtime_dir / "bndl-like") == ["secret"]


def test_concurrent_first_uses_end_with_one_secret(runtime_dir, tmp_path):
    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            "from bndl_like.rmi.secrets import local_secret\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.001)\n"
            "print(local_secret().decode())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    try:
        go.touch()
        outputs = [p.communicate(timeout=30)[0].strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outputs)) == 1 and len(outputs[0]) == 64
    assert outputs[0].encode() == local_secret()
    assert os.listdir(runtime_dir / "bndl-like") == ["secret"]


def test_status_token_is_derived_and_deterministic():
    token = status_token(b"a" * 32)
    assert token == status_token(b"a" * 32) and len(token) == 64
    assert token != status_token(b"b" * 32)
    assert "aaaa" not in token
