import os
import stat

import pytest

from so3krates.files import _UMASK, atomic_write


def test_atomic_write_replaces_content_with_ordinary_permissions(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "result.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write(path, "not bytes")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
