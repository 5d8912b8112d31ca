"""Plans, timing caches and the plan manifest are written whole or not at all: a write that
fails (a full disk on a robot, an exception) leaves the old file and no temporary file."""

import os

import pytest

from edgellm_ros.backends.tensorrt import build


def listing(folder):
    return sorted(os.listdir(folder))


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = str(tmp_path / "decoder.plan")
    build.write_whole(path, b"old")
    build.write_whole(path, memoryview(b"new plan"))
    assert open(path, "rb").read() == b"new plan"
    assert listing(tmp_path) == ["decoder.plan"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path, monkeypatch):
    path = str(tmp_path / "decoder.plan")
    build.write_whole(path, b"old")
    with pytest.raises(TypeError):
        build.write_whole(path, "not bytes")              # fails inside the write
    assert open(path, "rb").read() == b"old" and listing(tmp_path) == ["decoder.plan"]

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(build.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        build.write_whole(path, b"new plan")
    assert open(path, "rb").read() == b"old" and listing(tmp_path) == ["decoder.plan"]


def test_the_manifest_goes_through_it(tmp_path):
    from edgellm_ros.backends.tensorrt import engines
    os.makedirs(tmp_path / engines.SUBDIR)
    engines._write_entries(str(tmp_path), {"decoder": {"size": 3}})
    assert engines.read_entries(str(tmp_path)) == {"decoder": {"size": 3}}
    assert listing(tmp_path / engines.SUBDIR) == [engines.MANIFEST]
