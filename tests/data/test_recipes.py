"""Dataset recipes on small fakes built with each dataset's real layout and annotation files.

Each fake image is a solid colour derived from its (split-independent) id, so the tests can check that
row i of images.npy is the image named by manifest row i.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mdr.data import prepare_dataset
from mdr.data.fetch import ManualDownloadRequired
from mdr.data.imagecache import ImageDecodeError, MissingAnnotationError
from mdr.data.prepared import CountMismatchError, PreparedDataset
from mdr.data.recipes import cars196, cifar10, cub200, inshop, sop
from mdr.data.registry import DATASETS, get_dataset, prepared_dir, raw_dir

SIZE = 16


def colour(key: int) -> tuple[int, int, int]:
    return (40 + (key * 37) % 180, 40 + (key * 91) % 180, 40 + (key * 53) % 180)


def jpeg(key: int, w: int = 24, h: int = 18, mode: str = "RGB") -> bytes:
    img = Image.new("RGB", (w, h), colour(key))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def add(tar_or_zip, name: str, data: bytes) -> None:
    if isinstance(tar_or_zip, zipfile.ZipFile):
        tar_or_zip.writestr(name, data)
    else:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar_or_zip.addfile(info, io.BytesIO(data))


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_images(ds: PreparedDataset, key_of_path) -> None:
    """Every cached row has the colour of the image its manifest row names."""
    images = ds.images()
    assert images.shape == (len(ds.manifest), SIZE, SIZE, 3) and images.dtype == np.uint8
    for i, path in enumerate(ds.manifest["path"]):
        got = images[i].reshape(-1, 3).mean(0)
        assert np.abs(got - np.array(colour(key_of_path(path)))).max() < 6, (i, path)


def no_half_prepared(out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()


# ------------------------------------------------------------------------------------------------ CUB

CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 101: "101.White_Pelican",
               200: "200.Common_Yellowthroat"}


def make_cub(path: Path, per_class: int = 3, skip: str = "", corrupt_id: int | None = None) -> Path:
    """CUB_200_2011.tgz with the real layout: images/<class>/<file>.jpg and the id files."""
    images, labels, split = [], [], []
    all_classes = {c: CUB_CLASSES.get(c, f"{c:03d}.Bird_{c}") for c in range(1, 201)}
    image_id = 0
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "attributes.txt", b"1 has_bill_shape::curved\n")
        for cls, cname in CUB_CLASSES.items():
            for k in range(per_class):
                image_id += 1
                rel = f"{cname}/{cname.split('.', 1)[1]}_{k:04d}_{image_id}.jpg"
                images.append(f"{image_id} {rel}")
                labels.append(f"{image_id} {cls}")
                split.append(f"{image_id} {k % 2}")
                data = b"\xff\xd8 this is not a jpeg" if image_id == corrupt_id else jpeg(image_id)
                add(tar, f"CUB_200_2011/images/{rel}", data)
        files = {
            "images.txt": "\n".join(images) + "\n",
            "image_class_labels.txt": "\n".join(labels) + "\n",
            "classes.txt": "".join(f"{c} {n}\n" for c, n in all_classes.items()),
            "train_test_split.txt": "\n".join(split) + "\n",
            "bounding_boxes.txt": "",
        }
        for name, text in files.items():
            if name != skip:
                add(tar, f"CUB_200_2011/{name}", text.encode())
    return path


def cub_key(path: str) -> int:
    return int(path.rsplit("_", 1)[1].split(".")[0])


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


def _mat_struct(fields: list[str], rows: list[tuple]) -> np.ndarray:
    arr = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for k, row in enumerate(rows):
        arr[0, k] = tuple(v if isinstance(v, str) else np.array([[v]], dtype=np.uint16) for v in row)
    return arr


def _class_names(n: int = 196) -> np.ndarray:
    names = np.empty((1, n), dtype=object)
    names[0, :] = [f"Make{i} Model{i} Sedan 2012" for i in range(1, n + 1)]
    names[0, 10] = "Ram C/V Cargo Van Minivan 2012"  # class 11: a '/' in the name, as in the real list
    return names


CARS = [(1, 0), (1, 1), (2, 0), (11, 1), (99, 1), (99, 0), (196, 0), (150, 1)]  # (class, classification test flag)


def make_cars_annos(raw: Path) -> None:
    """car_ims.tgz + cars_annos.mat (relative_im_path, bbox_*, class, test; class_names)."""
    from scipy.io import savemat

    raw.mkdir(parents=True, exist_ok=True)
    rows = []
    with tarfile.open(raw / "car_ims.tgz", "w:gz") as tar:
        for k, (cls, test) in enumerate(CARS, start=1):
            add(tar, f"car_ims/{k:06d}.jpg", jpeg(k))
            rows.append((f"car_ims/{k:06d}.jpg", 10, 20, 200, 100, cls, test))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    savemat(raw / "cars_annos.mat", {"annotations": _mat_struct(fields, rows), "class_names": _class_names()})


def make_cars_classification(raw: Path) -> None:
    """cars_train.tgz, cars_test.tgz, car_devkit.tgz (devkit/...), cars_test_annos_withlabels.mat."""
    from scipy.io import savemat

    raw.mkdir(parents=True, exist_ok=True)
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    train = [(c, k) for k, (c, t) in enumerate(CARS, start=1) if not t]
    test = [(c, k) for k, (c, t) in enumerate(CARS, start=1) if t]
    mats = {}
    for part, items in (("train", train), ("test", test)):
        with tarfile.open(raw / f"cars_{part}.tgz", "w:gz") as tar:
            rows = []
            for n, (cls, key) in enumerate(items, start=1):
                add(tar, f"cars_{part}/{n:05d}.jpg", jpeg(key))
                rows.append((1, 2, 3, 4, cls, f"{n:05d}.jpg"))
            mats[part] = _mat_struct(fields, rows)
    savemat(raw / "cars_test_annos_withlabels.mat", {"annotations": mats["test"]})
    devkit = raw / "devkit_src"
    devkit.mkdir()
    savemat(devkit / "cars_meta.mat", {"class_names": _class_names()})
    savemat(devkit / "cars_train_annos.mat", {"annotations": mats["train"]})
    with tarfile.open(raw / "car_devkit.tgz", "w:gz") as tar:
        for f in ("cars_meta.mat", "cars_train_annos.mat"):
            add(tar, f"devkit/{f}", (devkit / f).read_bytes())
        add(tar, "devkit/README.txt", b"This file gives documentation for the cars 196 dataset.\n")
    for f in devkit.iterdir():
        f.unlink()
    devkit.rmdir()


def make_cars_kaggle(raw: Path) -> None:
    names = [str(n) for n in _class_names()[0]]
    base = raw / "car_data" / "car_data"
    for k, (cls, test) in enumerate(CARS, start=1):
        folder = base / ("test" if test else "train") / names[cls - 1].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k:05d}.jpg").write_bytes(jpeg(k))
    (raw / "names.csv").write_text("\n".join(names) + "\n")


def _cars_sources(raw: Path, monkeypatch) -> None:
    """Point the recipe's hashes at the fakes (the real ones are for the real files)."""
    for attr in ("SOURCES_ANNOS", "SOURCES_CLASSIFICATION"):
        new = [dataclasses.replace(s, sha256=sha(raw / s.filename) if (raw / s.filename).exists() else s.sha256,
                                   md5=None, size=None) for s in getattr(cars196, attr)]
        monkeypatch.setattr(cars196, attr, new)


def cars_key_annos(path: str) -> int:
    return int(Path(path).stem)


@pytest.mark.parametrize("layout", ["annos", "classification", "kaggle"])
def test_cars_layouts(tmp_path, monkeypatch, layout):
    raw, out = tmp_path / "raw", tmp_path / "out"
    {"annos": make_cars_annos, "classification": make_cars_classification, "kaggle": make_cars_kaggle}[layout](raw)
    _cars_sources(raw, monkeypatch)
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

SOP_SUPER = ["bicycle_final", "cabinet_final", "chair_final"]


def make_sop(path: Path, n_train_classes: int = 4, n_test_classes: int = 3) -> dict[str, int]:
    """Stanford_Online_Products.zip with Ebay_{info,train,test}.txt and super-class folders (.JPG)."""
    lines = {"train": [], "test": []}
    keys = {}
    image_id = 0
    with zipfile.ZipFile(path, "w") as zf:
        for cls in range(1, n_train_classes + n_test_classes + 1):
            split = "train" if cls <= n_train_classes else "test"
            sup = 1 + cls % len(SOP_SUPER)
            product = 111000000000 + cls * 7
            for k in range(2 + cls % 2):
                image_id += 1
                rel = f"{SOP_SUPER[sup - 1]}/{product}_{k}.JPG"
                zf.writestr(f"Stanford_Online_Products/{rel}", jpeg(image_id, 30, 20))
                lines[split].append(f"{image_id} {cls} {sup} {rel}")
                keys[rel] = image_id
        header = "image_id class_id super_class_id path\n"
        for split in ("train", "test"):
            zf.writestr(f"Stanford_Online_Products/Ebay_{split}.txt", header + "\n".join(lines[split]) + "\n")
        zf.writestr("Stanford_Online_Products/Ebay_info.txt", header)
    return keys


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


def make_inshop(raw: Path) -> dict[str, int]:
    """img.zip (img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_N_view.jpg) + list_eval_partition.txt."""
    raw.mkdir(parents=True, exist_ok=True)
    plan = [(1, "train", 3), (2, "train", 2), (7, "test", 3), (9, "test", 4)]
    rows, keys, key = [], {}, 0
    with zipfile.ZipFile(raw / "img.zip", "w") as zf:
        for item, part, n in plan:
            gender, cat = ("WOMEN", "Dresses") if item % 2 else ("MEN", "Denim")
            for k in range(n):
                key += 1
                rel = f"img/{gender}/{cat}/id_{item:08d}/{k + 1:02d}_{k % 4 + 1}_{['front', 'side', 'back', 'full'][k % 4]}.jpg"
                zf.writestr(rel, jpeg(key, 16, 24))
                status = part if part == "train" else ("query" if k % 2 == 0 else "gallery")
                rows.append(f"{rel}           id_{item:08d}  {status}")
                keys[rel] = key
    (raw / "list_eval_partition.txt").write_text(
        f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return keys


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


def make_cifar(path: Path, per_batch: int = 6) -> None:
    """cifar-10-python.tar.gz: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} pickles."""
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    key = 0
    with tarfile.open(path, "w:gz") as tar:
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data, labels = [], []
            for k in range(per_batch):
                key += 1
                img = np.zeros((3, 32, 32), np.uint8) + np.array(colour(key), np.uint8)[:, None, None]
                data.append(img.reshape(-1))
                labels.append(k % 10 if batch != "test_batch" else (k * 5) % 6)
            d = {b"batch_label": batch.encode(), b"labels": labels, b"data": np.stack(data),
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
            add(tar, f"cifar-10-batches-py/{batch}", pickle.dumps(d, protocol=2))
        add(tar, "cifar-10-batches-py/batches.meta",
            pickle.dumps({b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, protocol=2))
        add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")


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
