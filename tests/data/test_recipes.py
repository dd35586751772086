"""Dataset recipes on small fakes built with each dataset's real layout and annotation files (layouts.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from mdr.data import prepare_dataset
from mdr.data.fetch import ManualDownloadRequired
from mdr.data.imagecache import ImageDecodeError, MissingAnnotationError
from mdr.data.prepared import CountMismatchError
from mdr.data.recipes import cars196, cifar10, cub200, inshop, sop
from mdr.data.registry import DATASETS, get_dataset, prepared_dir, raw_dir

from layouts import (
    SIZE, CARS, SOP_SUPER, add, cars_key_annos, check_images, colour, cub_key, make_cars_annos, make_cars_classification, make_cars_kaggle, make_cifar, make_cub, make_inshop, make_sop, no_half_prepared, sha, use_fake_cars_hashes,
)


@pytest.fixture
def cub_server(http_server, tmp_path, monkeypatch):
    """The fake CUB archive behind a dead mirror and a working one; the recipe's sources point there."""
    (tmp_path / "src").mkdir()
    archive = make_cub(tmp_path / "src" / "CUB_200_2011.tgz")
    data = archive.read_bytes()
    url = http_server.add("cub/CUB_200_2011.tgz", data)
    src = dataclasses.replace(cub200.SOURCES[0], urls=[http_server.url("dead/CUB_200_2011.tgz"), url],
                              sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest(),
                              size=len(data))
    monkeypatch.setattr(cub200, "SOURCES", [src])
    return http_server


def test_cub_fetch_and_prepare(cub_server, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "cub200-16px"
    records = cub200.fetch(raw, progress=False)
    assert (raw / "CUB_200_2011.tgz").is_file()
    ds = cub200.prepare(raw, out, SIZE, expected_counts={"train": 6, "test": 6},
                        expected_classes={"train": 2, "test": 2}, progress=False)
    m = ds.manifest
    assert sorted(m.label.unique()) == [0, 1, 2, 3]
    assert set(m[m.split == "train"].class_id) == {1, 2} and set(m[m.split == "test"].class_id) == {101, 200}
    assert m.loc[m.class_id == 200, "class_name"].iloc[0] == "200.Common_Yellowthroat"
    assert m.path.iloc[0].startswith("extracted/CUB_200_2011/CUB_200_2011/images/001.Black_footed_Albatross/")
    assert all((raw / p).is_file() for p in m.path)
    assert ds.meta["sources"]["CUB_200_2011.tgz"]["sha256"] == records["CUB_200_2011.tgz"].sha256
    assert ds.meta["counts"] == {"test": 6, "train": 6} and ds.meta["image_size"] == SIZE
    check_images(ds, cub_key)


def test_cub_published_counts_are_enforced(cub_server, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    cub200.fetch(raw, progress=False)
    with pytest.raises(CountMismatchError) as err:
        cub200.prepare(raw, out, SIZE, progress=False)  # the real numbers: 5,864 / 5,924
    msg = str(err.value)
    assert "train: expected 5,864 images, found 6 (-5,858)" in msg and "test: expected 5,924" in msg
    no_half_prepared(out)
    with pytest.raises(CountMismatchError, match=r"test: expected 7 images, found 6 \(-1\)"):
        cub200.prepare(raw, out, SIZE, expected_counts={"train": 6, "test": 7}, progress=False)
    no_half_prepared(out)
    # a rerun with the right expectations succeeds and reuses the extraction
    ds = cub200.prepare(raw, out, SIZE, expected_counts={"train": 6, "test": 6}, expected_classes={}, progress=False)
    assert len(ds.manifest) == 12


def test_cub_missing_annotation_file(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    archive = make_cub(raw / "CUB_200_2011.tgz", skip="image_class_labels.txt")
    src = dataclasses.replace(cub200.SOURCES[0], sha256=sha(archive), md5=None, size=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cub200, "SOURCES", [src])
        with pytest.raises(MissingAnnotationError, match=r"image_class_labels\.txt is missing"):
            cub200.prepare(raw, out, SIZE, expected_counts={}, expected_classes={}, progress=False)
    no_half_prepared(out)


def test_cub_corrupt_image_is_named(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    archive = make_cub(raw / "CUB_200_2011.tgz", corrupt_id=5)
    monkeypatch.setattr(cub200, "SOURCES", [dataclasses.replace(cub200.SOURCES[0], sha256=sha(archive),
                                                                md5=None, size=None)])
    with pytest.raises(ImageDecodeError) as err:
        cub200.prepare(raw, out, SIZE, expected_counts={}, expected_classes={}, progress=False, workers=2)
    assert "_5.jpg" in str(err.value) and "cannot decode image" in str(err.value)
    no_half_prepared(out)


def test_cub_wrong_archive_is_quarantined(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_cub(raw / "CUB_200_2011.tgz")
    from mdr.data.fetch import HashMismatchError

    with pytest.raises(HashMismatchError) as err:  # the real sha256 of the 1.1 GB archive
        cub200.fetch(raw, progress=False)
    assert "0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081" in str(err.value)
    assert (raw / "CUB_200_2011.tgz.corrupt").exists() and not (raw / "extracted").exists()


def test_prepare_dataset_end_to_end(cub_server, tmp_path, monkeypatch):
    monkeypatch.setattr(cub200, "EXPECTED_COUNTS", {"train": 6, "test": 6})
    monkeypatch.setattr(cub200, "EXPECTED_CLASSES", {"train": 2, "test": 2})
    monkeypatch.setitem(DATASETS, "cub200", dataclasses.replace(get_dataset("cub200"),
                                                                expected_counts={"train": 6, "test": 6}))
    root = tmp_path / "data"
    ds = prepare_dataset("cub200", data_root=root, image_size=SIZE, progress=False)
    assert ds.root == prepared_dir(root, "cub200", SIZE) and (ds.root / "READY").exists()
    assert (raw_dir(root, "cub200") / "CUB_200_2011.tgz").is_file()
    requests, stamp = len(cub_server.log), (ds.root / "READY").stat().st_mtime_ns
    again = prepare_dataset("cub200", data_root=root, image_size=SIZE, progress=False)
    assert len(cub_server.log) == requests and (again.root / "READY").stat().st_mtime_ns == stamp
    # meta no longer matching (another recipe version) -> prepared again, from the same raw files
    monkeypatch.setattr(cub200, "RECIPE_VERSION", 99)
    third = prepare_dataset("cub200", data_root=root, image_size=SIZE, progress=False, fetch=False)
    assert third.meta["recipe_version"] == 99 and len(cub_server.log) == requests


# ----------------------------------------------------------------------------------------------- Cars



@pytest.mark.parametrize("layout", ["annos", "classification", "kaggle"])
def test_cars_layouts(tmp_path, monkeypatch, layout):
    raw, out = tmp_path / "raw", tmp_path / "out"
    {"annos": make_cars_annos, "classification": make_cars_classification, "kaggle": make_cars_kaggle}[layout](raw)
    use_fake_cars_hashes(raw, monkeypatch)
    assert cars196.detect_layout(raw) == layout
    cars196.fetch(raw, progress=False)
    ds = cars196.prepare(raw, out, SIZE, expected_counts={"train": 4, "test": 4},
                         expected_classes={"train": 3, "test": 3}, progress=False)
    m = ds.manifest
    assert set(m[m.split == "train"].class_id) == {1, 2, 11} and set(m[m.split == "test"].class_id) == {99, 150, 196}
    assert m.loc[m.class_id == 11, "class_name"].iloc[0] == "Ram C/V Cargo Van Minivan 2012"
    assert ds.meta["layout"] == layout
    if layout == "annos":
        check_images(ds, cars_key_annos)
    elif layout == "kaggle":
        check_images(ds, cars_key_annos)
        assert not next(iter(ds.meta["sources"].values()))["verified_against_published_hash"]
    else:  # images renumbered per folder: check by class instead
        images = ds.images()
        by_class = {c: {colour(k) for k, (cc, _) in enumerate(CARS, start=1) if cc == c} for c in set(m.class_id)}
        for i, cls in enumerate(m.class_id):
            got = images[i].reshape(-1, 3).mean(0)
            assert min(np.abs(got - np.array(c)).max() for c in by_class[cls]) < 6


def test_cars_manual_placement_message(tmp_path):
    raw = tmp_path / "raw" / "cars196"
    with pytest.raises(ManualDownloadRequired) as err:
        cars196.fetch(raw, progress=False)
    msg = str(err.value)
    for part in ("car_ims.tgz", "d5c8f0aa497503f355e17dc7886c3f14", "cars_annos.mat", "b407c6086d669747186bd1d764ff9dbc",
                 "cars_train.tgz (979,269,282 bytes; sha256 512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288)",
                 "cars_test.tgz", "car_devkit.tgz (330,960 bytes", "cars_test_annos_withlabels.mat (185,758 bytes",
                 "kaggle", "names.csv", "404", str(raw.absolute()), "run the same command again"):
        assert part.lower() in msg.lower(), part


def test_cars_placed_files_with_wrong_hash(tmp_path):
    raw = tmp_path / "raw"
    make_cars_annos(raw)  # fake files, but the recipe expects the real md5s
    from mdr.data.fetch import HashMismatchError

    with pytest.raises(HashMismatchError, match="d5c8f0aa497503f355e17dc7886c3f14"):
        cars196.fetch(raw, progress=False)
    assert (raw / "car_ims.tgz.corrupt").exists()


# ------------------------------------------------------------------------------------------------ SOP


def test_sop_fetch_and_prepare(http_server, tmp_path, monkeypatch):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    keys = make_sop(src_dir / "Stanford_Online_Products.zip")
    data = (src_dir / "Stanford_Online_Products.zip").read_bytes()
    url = http_server.add("uc/sop.zip", data)
    http_server.drop_after["/uc/sop.zip"] = len(data) // 3  # the connection drops once: resumed
    http_server.drop_times["/uc/sop.zip"] = 1
    monkeypatch.setattr(sop, "SOURCES", [dataclasses.replace(sop.SOURCES[0], urls=[url], size=len(data),
                                                             sha256=hashlib.sha256(data).hexdigest(), md5=None)])
    raw, out = tmp_path / "raw", tmp_path / "out"
    sop.fetch(raw, progress=False)
    assert http_server.requests_for("uc/sop.zip")[1].startswith("bytes=")
    ds = sop.prepare(raw, out, SIZE, expected_counts={"train": 10, "test": 8},
                     expected_classes={"train": 4, "test": 3}, progress=False)
    m = ds.manifest
    assert sorted(m[m.split == "train"].class_id.unique()) == [1, 2, 3, 4]
    assert sorted(m[m.split == "test"].class_id.unique()) == [5, 6, 7]
    assert list(m.label) == sorted(m.label) and m.label.max() == 6
    assert m.class_name.iloc[0] == f"{SOP_SUPER[1]}/{111000000000 + 7}"
    check_images(ds, lambda p: keys[p.split("Stanford_Online_Products/Stanford_Online_Products/")[1]])


def test_sop_count_mismatch_names_split(tmp_path, monkeypatch):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    make_sop(raw / "Stanford_Online_Products.zip")
    monkeypatch.setattr(sop, "SOURCES", [dataclasses.replace(sop.SOURCES[0], urls=[], md5=None, size=None,
                                                             sha256=sha(raw / "Stanford_Online_Products.zip"))])
    with pytest.raises(CountMismatchError, match=r"test: expected 9 images, found 8 \(-1\)"):
        sop.prepare(raw, out, SIZE, expected_counts={"train": 10, "test": 9}, progress=False)
    no_half_prepared(out)
    with pytest.raises(ValueError, match=r"train: expected 5 classes, found 4 \(-1\)"):
        sop.prepare(raw, out, SIZE, expected_counts={}, expected_classes={"train": 5}, progress=False)
    no_half_prepared(out)


# -------------------------------------------------------------------------------------------- In-Shop



def test_inshop_manual_placement_then_prepare(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    with pytest.raises(ManualDownloadRequired) as err:
        inshop.fetch(raw, progress=False)
    msg = str(err.value)
    for part in ("img.zip (no published checksum)", "list_eval_partition.txt", "not img_highres.zip",
                 "0B7EVK8r0v71pVDZFQXRsMDZCX1E", str(raw.absolute()), "run the same command again"):
        assert part in msg, part
    keys = make_inshop(raw)
    records = inshop.fetch(raw, progress=False)
    assert records["img.zip"].sha256 == sha(raw / "img.zip")
    ds = inshop.prepare(raw, out, SIZE, expected_counts={"train": 5, "query": 4, "gallery": 3},
                        expected_classes={"train": 2, "query+gallery": 2}, progress=False)
    m = ds.manifest
    assert set(m.split) == {"train", "query", "gallery"} and ds.eval_splits == ("query", "gallery")
    assert set(m[m.split == "query"].label) == set(m[m.split == "gallery"].label)
    assert set(m[m.split == "train"].class_id) == {1, 2} and m.class_name.iloc[0] == "id_00000001"
    assert ds.meta["sources"]["img.zip"]["sha256"] == sha(raw / "img.zip")
    assert ds.meta["sources"]["list_eval_partition.txt"]["sha256"] == sha(raw / "list_eval_partition.txt")
    assert not ds.meta["sources"]["img.zip"]["verified_against_published_hash"]
    check_images(ds, lambda p: keys[p.split("extracted/img/")[1]])
    assert get_dataset("inshop").query_gallery and get_dataset("inshop").ks == (1, 10, 20, 30, 40)


def test_inshop_truncated_partition_file(tmp_path):
    raw = tmp_path / "raw"
    make_inshop(raw)
    text = (raw / "list_eval_partition.txt").read_text().splitlines()
    (raw / "list_eval_partition.txt").write_text("\n".join(text[:-2]) + "\n")
    with pytest.raises(ValueError, match="declares 12 rows on line 1 but has 10"):
        inshop.prepare(raw, tmp_path / "out", SIZE, expected_counts={}, expected_classes={}, progress=False)
    no_half_prepared(tmp_path / "out")


def test_inshop_truncated_img_zip(tmp_path):
    raw = tmp_path / "raw"
    make_inshop(raw)
    data = (raw / "img.zip").read_bytes()
    (raw / "img.zip").write_bytes(data[: len(data) // 2])
    from mdr.data.fetch import CorruptArchiveError

    with pytest.raises(CorruptArchiveError, match="img.zip is damaged or truncated"):
        inshop.prepare(raw, tmp_path / "out", SIZE, expected_counts={}, progress=False)
    assert not (raw / "extracted" / "img").exists() and not (raw / "extracted" / "img.tmp").exists()
    no_half_prepared(tmp_path / "out")


# ------------------------------------------------------------------------------------------- CIFAR-10



def test_cifar10_closed_set(http_server, tmp_path, monkeypatch):
    src = tmp_path / "cifar-10-python.tar.gz"
    make_cifar(src)
    data = src.read_bytes()
    url = http_server.add("kriz/cifar-10-python.tar.gz", data)
    monkeypatch.setattr(cifar10, "SOURCES", [dataclasses.replace(cifar10.SOURCES[0], urls=[url], size=len(data),
                                                                 md5=hashlib.md5(data).hexdigest())])
    raw, out = tmp_path / "raw", tmp_path / "out"
    cifar10.fetch(raw, progress=False)
    ds = cifar10.prepare(raw, out, SIZE, expected_counts={"train": 30, "test": 6},
                         expected_classes={"train": 6, "test": 6}, progress=False)
    m = ds.manifest
    assert set(m[m.split == "test"].class_id) <= set(m[m.split == "train"].class_id)  # closed set
    assert m.class_name[m.class_id == 3].iloc[0] == "cat" and ds.meta["closed_set"]
    assert m.path.iloc[0] == "extracted/cifar-10-python/cifar-10-batches-py/data_batch_1#0"
    check_images(ds, lambda p: 6 * (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                     "data_batch_5", "test_batch"].index(p.split("/")[-1].split("#")[0]))
                 + int(p.split("#")[1]) + 1)
    ds32 = cifar10.prepare(raw, tmp_path / "out32", 32, expected_counts={}, expected_classes={}, progress=False)
    assert ds32.images()[0, 0, 0].tolist() == list(colour(1))  # no resize at 32 px: exact pixels


def test_cifar_refuses_foreign_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match="refusing to load .*print"):
        cifar10.load_batch(tmp_path / "data_batch_1")


# ------------------------------------------------------------------------------------------ registry


def test_registered_recipes():
    expect = {"cub200": ((1, 2, 4, 8), {"train": 5864, "test": 5924}),
              "cars196": ((1, 2, 4, 8), {"train": 8054, "test": 8131}),
              "sop": ((1, 10, 100, 1000), {"train": 59551, "test": 60502}),
              "inshop": ((1, 10, 20, 30, 40), {"train": 25882, "query": 14218, "gallery": 12612}),
              "cifar10": ((1, 2, 4, 8), {"train": 50000, "test": 10000})}
    for name, (ks, counts) in expect.items():
        r = get_dataset(name)
        assert r.ks == ks and r.expected_counts == counts and r.query_gallery == (name == "inshop")
    assert sum(get_dataset("cub200").expected_counts.values()) == 11788
    assert sum(get_dataset("cars196").expected_counts.values()) == 16185
    assert sum(get_dataset("sop").expected_counts.values()) == 120053
    assert sum(get_dataset("inshop").expected_counts.values()) == 52712


def test_recipe_hashes_are_the_published_ones():
    from mdr.data.fetch import PUBLISHED_DIGESTS

    assert cub200.SOURCES[0].sha256 in PUBLISHED_DIGESTS and sop.SOURCES[0].md5 in PUBLISHED_DIGESTS
    assert all(s.md5 in PUBLISHED_DIGESTS for s in cars196.SOURCES_ANNOS)
    assert all(s.sha256 in PUBLISHED_DIGESTS for s in cars196.SOURCES_CLASSIFICATION)
