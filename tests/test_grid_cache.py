"""The on-disk grid cache: the same grid as resolving, and never a grid of other inputs."""
from __future__ import annotations

import shutil

import pytest

from mdr import grid as grid_module
from mdr import grid_cache
from mdr.config import ConfigError


@pytest.fixture
def params(tmp_path):
    target = tmp_path / "params"
    shutil.copytree(grid_module.PARAMS_DIR, target)
    return target


@pytest.fixture
def resolutions(monkeypatch):
    """Counts the real resolutions behind grid_cache.load_grid."""
    calls = []
    real = grid_module.load_grid

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_module, "load_grid", counting)
    return calls


def _summary(grid):
    return {rid: spec.config.canonical_json() for rid, spec in grid.runs.items()}, {
        name: [cell.run_ids for cell in table.cells] for name, table in grid.tables.items()}


def test_cached_grid_equals_the_resolved_one_and_is_read_back(params, tmp_path, resolutions):
    cache = tmp_path / "cache"
    first = grid_cache.load_grid("smoke", params, cache_dir=cache)
    second = grid_cache.load_grid("smoke", params, cache_dir=cache)
    assert len(resolutions) == 1
    assert _summary(second) == _summary(first) == _summary(grid_module.load_grid("smoke", params))
    assert [p.name.startswith("smoke-") for p in cache.iterdir()] == [True]


def test_an_edited_params_file_is_resolved_again_and_the_old_entry_dropped(params, tmp_path, resolutions):
    cache = tmp_path / "cache"
    before = grid_cache.load_grid("smoke", params, cache_dir=cache)
    old_entry = next(cache.iterdir())
    methods = params / "methods.yaml"
    methods.write_text(methods.read_text() + "\n# an edit that changes no setting still changes the digest\n")
    grid_cache.load_grid("smoke", params, cache_dir=cache)
    assert len(resolutions) == 2
    assert not old_entry.exists() and len(list(cache.iterdir())) == 1

    profile = params / "profiles" / "smoke.yaml"
    text = profile.read_text()
    assert "seeds: [0, 1, 2, 3, 4]" in text  # the edit below must change the runs
    profile.write_text(text.replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1, 2, 3, 5]"))
    after = grid_cache.load_grid("smoke", params, cache_dir=cache)
    assert len(resolutions) == 3
    assert set(after.runs) != set(before.runs)
    assert _summary(after) == _summary(grid_module.load_grid("smoke", params))


def test_source_code_and_use_tuned_are_part_of_the_digest(params, monkeypatch):
    base = grid_cache.grid_digest("smoke", params, None)
    assert grid_cache.grid_digest("smoke", params, True) != base
    monkeypatch.setenv("MDR_USE_TUNED", "1")
    assert grid_cache.grid_digest("smoke", params, None) != base
    monkeypatch.delenv("MDR_USE_TUNED")
    assert grid_cache.grid_digest("paper", params, None) != base
    sources = [p.relative_to(grid_cache.PACKAGE_DIR).as_posix() for p in grid_cache._files(grid_cache.PACKAGE_DIR, "*.py")]
    assert {"config.py", "grid.py", "regularizers/mdr.py", "models/backbones.py"} <= set(sources)


def test_a_configuration_error_is_raised_every_time_and_never_cached(params, tmp_path, resolutions):
    cache = tmp_path / "cache"
    (params / "methods.yaml").write_text((params / "methods.yaml").read_text().replace("loss: triplet", "loss: triplett", 1))
    for _ in range(2):
        with pytest.raises(ConfigError, match="triplett"):
            grid_cache.load_grid("smoke", params, cache_dir=cache)
    assert len(resolutions) == 2
    assert not cache.exists() or not list(cache.glob("*.pickle"))


def test_a_damaged_cache_file_is_resolved_again_and_rewritten(params, tmp_path, resolutions):
    cache = tmp_path / "cache"
    expected = _summary(grid_cache.load_grid("smoke", params, cache_dir=cache))
    entry = next(cache.iterdir())
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated, as by a full disk
    assert _summary(grid_cache.load_grid("smoke", params, cache_dir=cache)) == expected
    assert len(resolutions) == 2
    assert _summary(grid_cache.load_grid("smoke", params, cache_dir=cache)) == expected
    assert len(resolutions) == 2  # the rewritten file is read back


def test_switched_off_by_the_environment(params, tmp_path, resolutions, monkeypatch):
    monkeypatch.setenv("MDR_GRID_CACHE", "0")
    for _ in range(2):
        grid_cache.load_grid("smoke", params, cache_dir=tmp_path / "cache")
    assert len(resolutions) == 2 and not (tmp_path / "cache").exists()


def test_another_profile_whose_name_extends_this_one_keeps_its_entry(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    other = cache / f"smoke-x-{'0' * grid_cache.DIGEST_LENGTH}.pickle"
    stale = cache / f"smoke-{'1' * grid_cache.DIGEST_LENGTH}.pickle"
    other.write_bytes(b"x")
    stale.write_bytes(b"x")
    grid_cache._write(cache, cache / f"smoke-{'2' * grid_cache.DIGEST_LENGTH}.pickle", grid=None)
    assert other.exists() and not stale.exists()


def test_a_cache_hit_and_the_snakefile_notes_import_neither_torch_nor_pandas(params, tmp_path):
    """What every Snakemake start does (a no-op rerun too): a cached grid and its notes (mdr/needs.py) must not
    import torch (seconds) nor pandas (half a second); the datasets' facts travel in the grid."""
    import subprocess
    import sys

    cache = tmp_path / "cache"
    grid_cache.load_grid("smoke", params, cache_dir=cache)  # fills the cache in this process
    code = ("import sys\nfrom mdr import grid_cache\nfrom mdr.needs import announce\n"
            f"grid = grid_cache.load_grid('smoke', {str(params)!r}, cache_dir={str(cache)!r})\n"
            "announce(grid)\nprint(len(grid.runs), sorted(m for m in ('torch', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs, imported = done.stdout.split(" ", 1)
    assert int(runs) > 100 and imported.strip() == "[]"
