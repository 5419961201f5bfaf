import pytest

from modelpress.core import ConfigError, Registry, atomic_write


def test_registry_refuses_duplicates_and_lists_known_names():
    reg = Registry("widget")
    reg.register("a")(1)
    reg.register("b")(2)
    assert reg.get("b") == 2 and reg.names() == ["a", "b"] and "a" in reg
    with pytest.raises(ConfigError, match="already registered"):
        reg.register("a")(3)
    with pytest.raises(ConfigError, match=r"unknown widget 'zz'; known: a, b"):
        reg.get("zz")


def test_atomic_write_replaces_whole_file_or_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left behind
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_an_existing_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"x")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600
        (tmp_path / "new.bin").chmod(0o640)
        with atomic_write(tmp_path / "new.bin") as tmp:
            tmp.write_bytes(b"y")
        assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
