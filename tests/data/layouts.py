"""Builders of small fake datasets in each dataset's real layout and annotation files (shared by tests/data).

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
from PIL import Image

from mdr.data.prepared import PreparedDataset
from mdr.data.recipes import cars196

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


def cub_files(per_class: int = 3, skip: str = "", corrupt_id: int | None = None,
              classes: dict[int, str] | None = None) -> dict[str, bytes]:
    """The content of CUB_200_2011.tgz, path -> bytes: CUB_200_2011/images/<class>/<file>.jpg and the id files.
    `classes`: the classes that get images (default CUB_CLASSES; all 200 are listed in classes.txt)."""
    images, labels, split = [], [], []
    all_classes = {c: CUB_CLASSES.get(c, f"{c:03d}.Bird_{c}") for c in range(1, 201)}
    files = {"attributes.txt": b"1 has_bill_shape::curved\n"}
    image_id = 0
    for cls, cname in (classes or CUB_CLASSES).items():
        for k in range(per_class):
            image_id += 1
            rel = f"{cname}/{cname.split('.', 1)[1]}_{k:04d}_{image_id}.jpg"
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {cls}")
            split.append(f"{image_id} {k % 2}")
            files[f"CUB_200_2011/images/{rel}"] = b"\xff\xd8 this is not a jpeg" if image_id == corrupt_id else jpeg(image_id)
    texts = {
        "images.txt": "\n".join(images) + "\n",
        "image_class_labels.txt": "\n".join(labels) + "\n",
        "classes.txt": "".join(f"{c} {n}\n" for c, n in all_classes.items()),
        "train_test_split.txt": "\n".join(split) + "\n",
        "bounding_boxes.txt": "",
    }
    files.update({f"CUB_200_2011/{name}": text.encode() for name, text in texts.items() if name != skip})
    return files


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    """A .zip, or a tar (.tgz/.tar.gz: gzip, .tar: none) holding `files`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in files.items():
                add(zf, name, data)
    else:
        with tarfile.open(path, "w:gz" if path.name.endswith(("gz", "tgz")) else "w") as tar:
            for name, data in files.items():
                add(tar, name, data)
    return path


def write_tree(folder: Path, files: dict[str, bytes]) -> Path:
    """`files` as an extracted folder below `folder`."""
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def make_cub(path: Path, per_class: int = 3, skip: str = "", corrupt_id: int | None = None) -> Path:
    """CUB_200_2011.tgz with the real layout."""
    return write_archive(path, cub_files(per_class, skip, corrupt_id))


def cub_key(path: str) -> int:
    return int(path.rsplit("_", 1)[1].split(".")[0])


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


def use_fake_cars_hashes(raw: Path, monkeypatch) -> None:
    """Point the recipe's hashes at the fakes (the real ones are for the real files)."""
    for attr in ("SOURCES_ANNOS", "SOURCES_CLASSIFICATION"):
        new = [dataclasses.replace(s, sha256=sha(raw / s.filename) if (raw / s.filename).exists() else s.sha256,
                                   md5=None, size=None) for s in getattr(cars196, attr)]
        monkeypatch.setattr(cars196, attr, new)


def cars_key_annos(path: str) -> int:
    return int(Path(path).stem)


SOP_SUPER = ["bicycle_final", "cabinet_final", "chair_final"]


def sop_files(n_train_classes: int = 4, n_test_classes: int = 3, skip: str = "",
              per_class: int | None = None) -> tuple[dict[str, bytes], dict[str, int]]:
    """The content of Stanford_Online_Products.zip (Ebay_{info,train,test}.txt, super-class folders, .JPG), and
    the colour key of each image path. `per_class`: images of every class (default: 2 or 3, alternately)."""
    lines = {"train": [], "test": []}
    keys, files = {}, {}
    image_id = 0
    for cls in range(1, n_train_classes + n_test_classes + 1):
        split = "train" if cls <= n_train_classes else "test"
        sup = 1 + cls % len(SOP_SUPER)
        product = 111000000000 + cls * 7
        for k in range(per_class or 2 + cls % 2):
            image_id += 1
            rel = f"{SOP_SUPER[sup - 1]}/{product}_{k}.JPG"
            files[f"Stanford_Online_Products/{rel}"] = jpeg(image_id, 30, 20)
            lines[split].append(f"{image_id} {cls} {sup} {rel}")
            keys[rel] = image_id
    header = "image_id class_id super_class_id path\n"
    for split in ("train", "test"):
        files[f"Stanford_Online_Products/Ebay_{split}.txt"] = (header + "\n".join(lines[split]) + "\n").encode()
    files["Stanford_Online_Products/Ebay_info.txt"] = header.encode()
    files = {k: v for k, v in files.items() if not (skip and k.endswith("/" + skip))}
    return files, keys


def make_sop(path: Path, n_train_classes: int = 4, n_test_classes: int = 3) -> dict[str, int]:
    """Stanford_Online_Products.zip with the real layout."""
    files, keys = sop_files(n_train_classes, n_test_classes)
    write_archive(path, files)
    return keys


INSHOP_PLAN = [(1, "train", 3), (2, "train", 2), (7, "test", 3), (9, "test", 4)]  # (item, part, images)


def make_inshop(raw: Path, folder: str = "img", truncated_key: int | None = None,
                zip_path: Path | None = None, partition_path: Path | None = None,
                plan: list[tuple[int, str, int]] = INSHOP_PLAN, queries_per_item: int | None = None) -> dict[str, int]:
    """img.zip (img/{MEN,WOMEN}/<Category>/id_XXXXXXXX/NN_N_view.jpg) + list_eval_partition.txt in `raw`
    (or at `zip_path` / `partition_path`, e.g. the Drive folder's Img/img.zip and Eval/...).
    `folder="img_highres"` builds the high-resolution img_highres.zip's layout instead; `truncated_key`: that
    image's JPEG is cut in half (the zip itself stays intact). `plan`: (item, train or test, images) per item;
    a test item's images are query and gallery alternately, or its first `queries_per_item` the queries."""
    raw.mkdir(parents=True, exist_ok=True)
    rows, keys, key, files = [], {}, 0, {}
    for item, part, n in plan:
        gender, cat = ("WOMEN", "Dresses") if item % 2 else ("MEN", "Denim")
        for k in range(n):
            key += 1
            rel = f"img/{gender}/{cat}/id_{item:08d}/{k + 1:02d}_{k % 4 + 1}_{['front', 'side', 'back', 'full'][k % 4]}.jpg"
            data = jpeg(key, 16, 24)
            files[folder + rel[len("img"):]] = data[: len(data) // 2] if key == truncated_key else data
            query = k % 2 == 0 if queries_per_item is None else k < queries_per_item
            status = part if part == "train" else ("query" if query else "gallery")
            rows.append(f"{rel}           id_{item:08d}  {status}")
            keys[rel] = key
    write_archive(zip_path or raw / "img.zip", files)
    partition = partition_path or raw / "list_eval_partition.txt"
    partition.parent.mkdir(parents=True, exist_ok=True)
    partition.write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return keys


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
