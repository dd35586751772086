"""READY certifies the prepared files: a damaged cache under a present READY is never trusted."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from mdr.data import ready
from mdr.data.prepared import PreparedDataset, PreparedDatasetDamagedError
from mdr.data.registry import prepared_dir
from pipeline import prepare
from pipeline.common import stage
from tests.conftest import make_blob_dataset


def _truncate(path, keep_fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def test_ready_records_what_it_certifies(tiny_data):
    out = prepared_dir(tiny_data, "tiny", 16)
    record = json.loads((out / "READY").read_text())
    files = record["files"]
    assert record["certificate_version"] == ready.CERTIFICATE_VERSION
    assert files["images.npy"]["size"] == (out / "images.npy").stat().st_size
    assert files["images.npy"]["shape"] == [48, 16, 16, 3]
    assert files["manifest.csv"]["size"] == (out / "manifest.csv").stat().st_size
    assert files["meta.json"]["sha256"] == hashlib.sha256((out / "meta.json").read_bytes()).hexdigest()


def test_training_refuses_a_truncated_cache_in_one_line(tiny_data, capsys):
    out = prepared_dir(tiny_data, "tiny", 16)
    _truncate(out / "images.npy")
    with pytest.raises(PreparedDatasetDamagedError) as err:
        PreparedDataset.load(out)
    msg = str(err.value)
    assert "images.npy has 18,496 bytes but its header (48, 16, 16, 3) needs 36,992" in msg
    assert f"python -m pipeline prepare tiny --image-size 16 --data-root {tiny_data}" in msg
    # the way a stage (train, evaluate) reports it: one line, exit 2
    from mdr.run_data import load_prepared
    from tests.conftest import tiny_config

    assert stage(lambda argv: load_prepared(tiny_config(tiny_data)))([]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith(f"error: prepared dataset {out} is damaged")


def test_prepare_rebuilds_a_truncated_cache_and_says_so(tiny_data, tmp_path, capsys):
    out = prepared_dir(tiny_data, "tiny", 16)
    _truncate(out / "images.npy")
    assert prepare.main(["tiny", "--image-size", "16", "--data-root", str(tiny_data)]) == 0
    err = capsys.readouterr().err
    assert f"prepared dataset {out} is damaged (images.npy has 18,496 bytes" in err and "preparing it again" in err
    fresh = make_blob_dataset(tmp_path / "fresh", 16)
    assert np.array_equal(PreparedDataset.load(out).images(), fresh.images())


@pytest.mark.parametrize("damage, fault", [
    ("flip", "images.npy differs from what READY certifies (sampled_sha256"),
    ("manifest", "manifest.csv differs from what READY certifies (sha256"),
    ("row", "images.npy has 48 images but manifest.csv has 47 rows"),
    ("meta", "manifest.csv or meta.json cannot be read (JSONDecodeError"),
    ("missing", "images.npy is missing"),
])
def test_same_size_and_other_damage_is_caught(tiny_data, damage, fault):
    out = prepared_dir(tiny_data, "tiny", 16)
    images = out / "images.npy"
    if damage == "flip":
        data = bytearray(images.read_bytes())
        data[len(data) // 2] ^= 0xFF
        images.write_bytes(bytes(data))
    elif damage == "manifest":  # same size, another class name
        text = (out / "manifest.csv").read_text()
        (out / "manifest.csv").write_text(text.replace("blob1", "blob9", 1))
    elif damage == "row":
        lines = (out / "manifest.csv").read_text().splitlines()
        (out / "manifest.csv").write_text("\n".join(lines[:-1]) + "\n")
    elif damage == "meta":
        (out / "meta.json").write_text('{"name": "tiny", ')
    else:
        images.unlink()
    with pytest.raises(PreparedDatasetDamagedError, match=fault.replace("(", r"\(")):
        PreparedDataset.load(out)


def test_ready_from_before_the_records_is_checked_structurally(tiny_data):
    out = prepared_dir(tiny_data, "tiny", 16)
    (out / "READY").write_text("ok\n")
    assert len(PreparedDataset.load(out).manifest) == 48  # intact: still used, not rebuilt
    _truncate(out / "images.npy", 0.99)
    with pytest.raises(PreparedDatasetDamagedError, match="truncated or overwritten"):
        PreparedDataset.load(out)


def test_sampled_hash_of_a_large_file(tmp_path):
    path = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5 * ready.SAMPLE_BLOCKS * ready.BLOCK, np.uint8).tobytes())
    path.write_bytes(bytes(data))
    before = ready.sampled_sha256(path)
    last_block = len(data) - ready.BLOCK  # the last sampled block starts here
    data[last_block + 7] ^= 1
    path.write_bytes(bytes(data))
    assert ready.sampled_sha256(path) != before
