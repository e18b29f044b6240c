"""Atomic writes leave files and folders a teammate can read, as a plain `open` or `mkdir` would."""

from __future__ import annotations

import os

import pytest

from hdkd.files import atomic_dir, write_json


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_get_the_permissions_of_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "reports" / "x.json", {"a": 1})
        with atomic_dir(tmp_path / "compiled") as folder:
            (folder / "model.onnx").write_bytes(b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "reports" / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "compiled").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "compiled" / "model.onnx").read_bytes() == b"x"
