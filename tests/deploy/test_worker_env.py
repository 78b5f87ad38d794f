"""What a local cluster's workers inherit: bndl_like from where the driver imported it."""

from __future__ import annotations

import os
import site

import pytest

import bndl_like
from bndl_like import local

pytestmark = pytest.mark.timeout(10)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bndl_like.__file__)))


def test_the_drivers_bndl_like_comes_first_on_the_workers_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", ROOT]))
    paths = local.worker_env(b"s")["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == ROOT and paths.count(ROOT) == 1 and "/elsewhere" in paths
    monkeypatch.delenv("PYTHONPATH")
    assert local.worker_env(b"s")["PYTHONPATH"] == ROOT


def test_a_site_directory_is_not_put_before_the_standard_library(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(site, "getsitepackages", lambda: [ROOT])
    assert "PYTHONPATH" not in local.worker_env(b"s")
