"""mdr.io: atomic writes give the file the mode any other file of the user gets (the umask decides);
a damaged JSON file is reported by name."""
import os
import stat

import pytest
import torch

from mdr.io import DamagedFileError, atomic_torch_save, atomic_write_text, read_json


@pytest.fixture
def umask():
    """Set a umask for the test, restoring the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "table.md", "x\n")
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "best.pt")
    for name in ("table.md", "best.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "table.md"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from mdr.io import atomic_write

    atomic_write_text(tmp_path / "a.txt", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_read_json_names_a_damaged_file(tmp_path):
    (tmp_path / "history.json").write_text('[{"epoch": 1}, {"epo')
    with pytest.raises(DamagedFileError, match=r"history\.json is damaged \(not valid JSON: .*\); rerun it"):
        read_json(tmp_path / "history.json", "rerun it")
    (tmp_path / "ok.json").write_text('[1, 2]')
    assert read_json(tmp_path / "ok.json", "-") == [1, 2]
