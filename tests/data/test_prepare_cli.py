"""`python -m pipeline prepare` as users meet it: their own copies (--source), near-miss files, and every
user-caused failure in one line with exit 2, naming the file and the one thing to do (issue 14)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest

from layouts import (
    SIZE,
    cub_files,
    make_cars_annos,
    make_cars_kaggle,
    make_cub,
    make_inshop,
    sop_files,
    use_fake_cars_hashes,
    write_archive,
    write_tree,
)
from mdr.data.prepared import PreparedDataset
from mdr.data.recipes import cars196, cub200, inshop, sop
from mdr.data.registry import DATASETS, prepared_dir
from pipeline import prepare


@pytest.fixture
def published_as(monkeypatch):
    """Make a recipe's published counts those of the small fake (the real ones need the real dataset)."""

    def shrink(module, counts, classes):
        monkeypatch.setattr(module, "EXPECTED_COUNTS", counts)
        monkeypatch.setattr(module, "EXPECTED_CLASSES", classes)
        monkeypatch.setitem(DATASETS, module.NAME, dataclasses.replace(DATASETS[module.NAME], expected_counts=counts))

    return shrink


@pytest.fixture
def cub_small(published_as):
    published_as(cub200, {"train": 6, "test": 6}, {"train": 2, "test": 2})


def run(capsys, *argv):
    rc = prepare.main([*argv, "--image-size", str(SIZE)] if "--image-size" not in argv else list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(rc, err) -> str:
    """The error, alone on stderr but for the progress bars (tqdm's `NN%|` lines) of the work done before it."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "%|" not in ln]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    return lines[0]


# ---------------------------------------------------------------------------------------- --source


def test_cub_extracted_folder_as_source(tmp_path, capsys, cub_small):
    copy = write_tree(tmp_path / "shared", cub_files()) / "CUB_200_2011"
    root = tmp_path / "data"
    rc, out, err = run(capsys, "cub200", "--data-root", str(root), "--no-fetch", "--source", str(copy))
    assert rc == 0, err
    assert f"cub200: using CUB_200_2011.tgz: {copy} (extracted folder; its published checksum cannot be checked)" in out
    assert f"cub200: prepared at {prepared_dir(root, 'cub200', SIZE)} (test 6, train 6)" in out
    assert (f"cub200: note: {copy} is an extracted folder, which has no published checksum; its file list and the "
            f"published counts were checked; the sha256 of its listing and annotation files is recorded in "
            f"{prepared_dir(root, 'cub200', SIZE) / 'meta.json'}") in out
    ds = PreparedDataset.load(prepared_dir(root, "cub200", SIZE))
    used = ds.meta["sources"]["CUB_200_2011.tgz"]
    assert used["user_copy"] == str(copy) and used["kind"] == "folder" and used["files"] == 12 + 5  # images and the five id files
    assert used["verified_against_published_hash"] is False
    assert used["annotation_sha256"]["images.txt"] == hashlib.sha256((copy / "images.txt").read_bytes()).hexdigest()
    assert not (root / "raw" / "cub200" / "CUB_200_2011.tgz").exists()  # nothing downloaded or copied
    # a later run without --source (Snakemake's prepare) uses the same copy: the record is kept
    shutil.rmtree(ds.root)
    rc, out, err = run(capsys, "cub200", "--data-root", str(root), "--no-fetch")
    assert rc == 0 and "prepared at" in out, err


def test_cub_archive_packed_differently_as_source(tmp_path, capsys, cub_small):
    repacked = write_archive(tmp_path / "downloads" / "CUB_200_2011.tar.gz", cub_files())
    root = tmp_path / "data"
    rc, out, err = run(capsys, "cub200", "--data-root", str(root), "--no-fetch", "--source", str(repacked))
    assert rc == 0, err
    assert f"cub200: note: {repacked} is not the published CUB_200_2011.tgz (its checksum differs)" in out
    meta = json.loads((prepared_dir(root, "cub200", SIZE) / "meta.json").read_text())
    used = meta["sources"]["CUB_200_2011.tgz"]
    assert used["kind"] == "archive" and used["user_copy"] == str(repacked)
    assert used["sha256"] == hashlib.sha256(repacked.read_bytes()).hexdigest()
    assert used["verified_against_published_hash"] is False  # it is not the published file
    assert not list(repacked.parent.glob(".*hashes.json"))  # nothing written beside the user's file


def test_source_that_is_not_a_copy(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--source", str(tmp_path / "empty"))
    line = one_line(rc, err)
    assert f"--source {tmp_path / 'empty'}: found none of CUB_200_2011.tgz, no folder with images.txt" in line
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--source", str(tmp_path / "gone"))
    assert "no such file or folder" in one_line(rc, err)


def test_inshop_drive_folder_as_source(tmp_path, capsys, published_as):
    published_as(inshop, {"train": 5, "query": 4, "gallery": 3}, {"train": 2, "query+gallery": 2})
    drive = tmp_path / "In-shop Clothes Retrieval Benchmark"
    make_inshop(tmp_path / "unused", zip_path=drive / "Img" / "img.zip",
                partition_path=drive / "Eval" / "list_eval_partition.txt")
    root = tmp_path / "data"
    rc, out, err = run(capsys, "inshop", "--data-root", str(root), "--source", str(drive))
    assert rc == 0, err
    assert f"img.zip: {drive / 'Img' / 'img.zip'} (linked; verified as a placed file)" in out
    meta = PreparedDataset.load(prepared_dir(root, "inshop", SIZE)).meta
    assert meta["counts"] == {"gallery": 3, "query": 4, "train": 5}
    assert meta["sources"]["img.zip"]["verified_against_published_hash"] is False  # none is published
    assert "inshop: note: img.zip has no published checksum; its sha256 is recorded in" in out


# ------------------------------------------------------------------------------------------ near misses


@pytest.mark.parametrize("place, expect", [
    ("CUB_200_2011.tar.gz", "looks like it (the same archive packed or named differently): move or rename it to"),
    ("downloads/CUB_200_2011.tgz", "looks like it (the same file one folder down): move or rename it to"),
    ("folder", "looks like CUB_200_2011.tgz already extracted (it has images.txt): pass `--source"),
])
def test_near_miss_files_are_named_with_what_to_do(tmp_path, capsys, place, expect):
    raw = tmp_path / "data" / "raw" / "cub200"
    if place == "folder":
        found = write_tree(raw, cub_files()) / "CUB_200_2011"
    else:
        found = make_cub(raw / place) if place.endswith(".tgz") else write_archive(raw / place, cub_files())
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"))  # fetching on: nothing is downloaded
    line = one_line(rc, err)
    assert f"{raw / 'CUB_200_2011.tgz'} is missing, but {found} {expect}" in line


# ------------------------------------------------------------------------- one line, exit 2, the file named


def test_image_size_must_be_positive(tmp_path, capsys):
    for size in ("0", "-8"):
        rc, _, err = run(capsys, "glyphs", "--image-size", size, "--data-root", str(tmp_path))
        assert f"image size {size} is not a size" in one_line(rc, err) and "--image-size 256" in err


def test_cub_copy_without_image_class_labels(tmp_path, capsys):
    copy = write_tree(tmp_path / "mine", cub_files(skip="image_class_labels.txt")) / "CUB_200_2011"
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--no-fetch", "--source", str(copy))
    line = one_line(rc, err)
    assert f"annotation file {copy / 'image_class_labels.txt'} is missing" in line
    assert f"the copy given with --source ({copy}) is not the complete published release" in line


def test_sop_copy_without_ebay_test(tmp_path, capsys):
    files, _ = sop_files(skip="Ebay_test.txt")
    copy = write_tree(tmp_path / "mine", files) / "Stanford_Online_Products"
    rc, _, err = run(capsys, "sop", "--data-root", str(tmp_path / "data"), "--no-fetch", "--source", str(copy))
    line = one_line(rc, err)
    assert f"{copy / 'Ebay_test.txt'} is missing" in line and "--source" in line


def _inshop_raw(tmp_path, **kw):
    raw = tmp_path / "data" / "raw" / "inshop"
    make_inshop(raw, **kw)
    return raw


def _no_download_advice(line):
    assert "download" not in line.lower() and "verified" not in line.lower()  # In-Shop has neither


def test_inshop_edited_count_line(tmp_path, capsys):
    raw = _inshop_raw(tmp_path)
    text = (raw / "list_eval_partition.txt").read_text().splitlines()
    (raw / "list_eval_partition.txt").write_text("\n".join(["13"] + text[1:]) + "\n")
    rc, _, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"{raw / 'list_eval_partition.txt'} declares 13 rows on line 1 but has 12" in line
    assert "Put the original Eval/list_eval_partition.txt from the Drive folder" in line
    _no_download_advice(line)


def test_inshop_item_in_train_and_query(tmp_path, capsys):
    raw = _inshop_raw(tmp_path)
    part = raw / "list_eval_partition.txt"
    part.write_text(part.read_text().replace("id_00000001  train", "id_00000001  query", 1))
    rc, _, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"{part}: items id_00000001 are in both train and query/gallery" in line
    assert "put the original Eval/list_eval_partition.txt" in line
    _no_download_advice(line)


def test_inshop_high_res_zip_then_the_advice_works(tmp_path, capsys, published_as):
    raw = _inshop_raw(tmp_path, folder="img_highres")
    rc, _, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"{raw / 'img.zip'} should hold the folder img/ (img/MEN, img/WOMEN) but holds img_highres/" in line
    assert "put a fresh copy of Img/img.zip from the Drive folder" in line
    _no_download_advice(line)
    # doing what it says (the right img.zip in place, nothing deleted) is enough
    published_as(inshop, {"train": 5, "query": 4, "gallery": 3}, {"train": 2, "query+gallery": 2})
    make_inshop(raw)
    rc, out, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    assert rc == 0 and "prepared at" in out, err


def test_inshop_truncated_jpeg_inside_the_zip(tmp_path, capsys, published_as):
    published_as(inshop, {"train": 5, "query": 4, "gallery": 3}, {"train": 2, "query+gallery": 2})
    raw = _inshop_raw(tmp_path, truncated_key=4)
    rc, _, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert "cannot decode image" in line and "id_00000002/01_1_front.jpg" in line
    assert f"{raw / 'img.zip'} is damaged or not the low-resolution Img/img.zip" in line
    _no_download_advice(line)


def test_inshop_count_mismatch_names_the_partition_file(tmp_path, capsys):
    raw = _inshop_raw(tmp_path)
    rc, _, err = run(capsys, "inshop", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"image counts in {raw / 'list_eval_partition.txt'} differ from the published split" in line
    assert "train: expected 25,882 images, found 5" in line
    assert "put the original Eval/list_eval_partition.txt from the Drive folder" in line
    _no_download_advice(line)


def test_cars_kaggle_folders_missing_from_names_csv_all_named(tmp_path, capsys):
    raw = tmp_path / "data" / "raw" / "cars196"
    make_cars_kaggle(raw)
    train = raw / "car_data" / "car_data" / "train"
    for old, new in zip(sorted(p for p in train.iterdir())[:2], ("Mystery Car 1999", "Other Car 2001")):
        old.rename(train / new)
    rc, _, err = run(capsys, "cars196", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"2 class folders are not listed in {raw / 'names.csv'}" in line
    assert "car_data/car_data/train/Mystery Car 1999" in line and "car_data/car_data/train/Other Car 2001" in line


@pytest.mark.parametrize("content, found", [
    (b"<!DOCTYPE html><html><body>Kaggle - sign in</body></html>", "an HTML page"),
    (b"not found\n", "starts b'not found\\n'"),
])
def test_cars_annos_mat_that_is_not_a_mat(tmp_path, capsys, monkeypatch, content, found):
    raw = tmp_path / "data" / "raw" / "cars196"
    make_cars_annos(raw)
    (raw / "cars_annos.mat").write_bytes(content)
    use_fake_cars_hashes(raw, monkeypatch)  # past the md5 check, as with a copy whose checksum is not known
    rc, _, err = run(capsys, "cars196", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"{raw / 'cars_annos.mat'} is not a MATLAB .mat file ({found}" in line
    assert f"put the release's cars_annos.mat (" in line and f"at {raw / 'cars_annos.mat'} and run the same" in line


def test_cars_mat_without_annotations(tmp_path, capsys, monkeypatch):
    from scipy.io import savemat

    raw = tmp_path / "data" / "raw" / "cars196"
    make_cars_annos(raw)
    savemat(raw / "cars_annos.mat", {"class_names": ["a", "b"]})
    use_fake_cars_hashes(raw, monkeypatch)
    rc, _, err = run(capsys, "cars196", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"{raw / 'cars_annos.mat'} has no 'annotations' variable (found: ['class_names'])" in line


def test_cars_every_bad_file_reported_in_one_run(tmp_path, capsys):
    raw = tmp_path / "data" / "raw" / "cars196"
    make_cars_annos(raw)  # fakes: both differ from the published md5s
    rc, _, err = run(capsys, "cars196", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert "2 files are not the expected ones" in line
    assert "d5c8f0aa497503f355e17dc7886c3f14" in line and "b407c6086d669747186bd1d764ff9dbc" in line
    assert (raw / "car_ims.tgz.corrupt").exists() and (raw / "cars_annos.mat.corrupt").exists()


def test_cars_file_one_folder_down_is_named(tmp_path, capsys):
    raw = tmp_path / "data" / "raw" / "cars196"
    make_cars_annos(raw / "stanford-cars")  # the two files, one folder too deep
    rc, _, err = run(capsys, "cars196", "--data-root", str(tmp_path / "data"))
    line = one_line(rc, err)
    assert f"no complete set of release files in {raw}" in line
    for name in ("car_ims.tgz", "cars_annos.mat"):
        assert (f"{raw / 'stanford-cars' / name} looks like it (the same file one folder down): move or rename it to "
                f"{raw / name}") in line


def _params_with_sources(tmp_path, monkeypatch, text):
    import mdr.grid

    params = tmp_path / "params"
    params.mkdir()
    (params / "sources.yaml").write_text(text)
    monkeypatch.setattr(mdr.grid, "PARAMS_DIR", params)
    return params / "sources.yaml"


def test_source_from_params(tmp_path, capsys, monkeypatch, cub_small):
    copy = write_tree(tmp_path / "shared", cub_files()) / "CUB_200_2011"
    _params_with_sources(tmp_path, monkeypatch, f"sources:\n  cub200: {copy}\n")
    rc, out, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--no-fetch")
    assert rc == 0, err
    assert f"cub200: using CUB_200_2011.tgz: {copy} (extracted folder" in out


@pytest.mark.parametrize("text, expect", [
    ("sources:\n  cub20: /x\n", "sources.cub20: unknown dataset; known: "),
    ("sources:\n  cub200: [1]\n", "sources.cub200: expected a path, found [1]"),
    ("cub200: /x\n", "expected one key `sources` holding `dataset: path` entries, found ['cub200']"),
    ("sources: {cub200: /x\n", "not valid YAML"),
])
def test_bad_params_sources_is_one_line(tmp_path, capsys, monkeypatch, text, expect):
    path = _params_with_sources(tmp_path, monkeypatch, text)
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--no-fetch")
    assert one_line(rc, err).startswith(f"error: {path}: ") and expect in err


def test_shipped_params_sources_is_empty():
    from pipeline.prepare import configured_source

    assert configured_source("cub200") is None


def test_manual_placement_message_mentions_source(tmp_path, capsys):
    rc, _, err = run(capsys, "cub200", "--data-root", str(tmp_path / "data"), "--no-fetch")
    assert rc == 2 and "CUB_200_2011.tgz (1,150,585,339 bytes" in err
    assert "if you already have a copy (an extracted folder, or an archive packed differently), pass `--source PATH`" in err
