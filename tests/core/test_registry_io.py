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
