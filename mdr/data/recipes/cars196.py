"""Cars-196 (Stanford Cars): 16,185 images, 196 classes; metric-learning split by class (1-98 / 99-196).

The Stanford addresses return 404 since 2023, so the files are placed by hand. Three distributions are
understood, all mapped to the same class ids (1-196, the order of the devkit's class_names):

  annos           car_ims.tgz + cars_annos.mat (the metric-learning release: one image folder, one
                  annotation file with class and test flag)
  classification  cars_train.tgz + cars_test.tgz + car_devkit.tgz + cars_test_annos_withlabels.mat
  kaggle          an extracted Kaggle "by classes folder" copy: .../train/<class name>/*.jpg,
                  .../test/<class name>/*.jpg and names.csv (class names in class-id order); no checksum
                  exists for it, so meta records the sha256 of names.csv and the image count

The train/test folders or `test` flags of the releases are the classification split and are ignored.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ..fetch import (
    ManualDownloadRequired,
    NearMissError,
    Source,
    extraction_dir,
    fetch_sources,
    manual_download_message,
    near_misses,
    published,
    safe_extract,
)
from ..imagecache import (
    REEXTRACT,
    LayoutError,
    MissingAnnotationError,
    build_published,
    find_folder,
    require_file,
    sources_meta,
)
from ..registry import KS_SMALL, DatasetRecipe, register_dataset

NAME = "cars196"
RECIPE_VERSION = 1
EXPECTED_COUNTS = {"train": 8054, "test": 8131}
EXPECTED_CLASSES = {"train": 98, "test": 98}
TRAIN_CLASSES = range(1, 99)

_KAGGLE_HINT = ("Kaggle mirrors of the Stanford release, e.g. kaggle.com/datasets/jessicali9530/stanford-cars-dataset "
                "or kaggle.com/datasets/jutrera/stanford-car-dataset-by-classes-folder")
_STANFORD = "originally https://ai.stanford.edu/~jkrause/cars/car_dataset.html (offline since 2023); now " + _KAGGLE_HINT

SOURCES_ANNOS = published(
    Source("car_ims.tgz", md5="d5c8f0aa497503f355e17dc7886c3f14", manual_hint=_STANFORD),
    Source("cars_annos.mat", md5="b407c6086d669747186bd1d764ff9dbc", manual_hint=_STANFORD),
)
SOURCES_CLASSIFICATION = published(
    Source("cars_train.tgz", sha256="512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288",
           size=979_269_282, manual_hint=_STANFORD),
    Source("cars_test.tgz", sha256="bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243",
           size=977_350_468, manual_hint=_STANFORD),
    Source("car_devkit.tgz", sha256="b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",
           size=330_960, manual_hint=_STANFORD),
    Source("cars_test_annos_withlabels.mat",
           sha256="790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",
           size=185_758, manual_hint=_STANFORD),
)
LAYOUTS = ("annos", "classification", "kaggle")


def _kaggle_root(raw_dir: Path) -> tuple[Path, Path] | None:
    """(folder holding train/ and test/ class folders, names.csv) of an extracted Kaggle copy, if any."""
    if not raw_dir.is_dir():
        return None
    names = sorted(p for p in raw_dir.glob("**/names.csv") if len(p.relative_to(raw_dir).parts) <= 4)
    if not names:
        return None
    for cand in sorted({p.parent for p in raw_dir.glob("**/train") if len(p.relative_to(raw_dir).parts) <= 4}):
        if (cand / "test").is_dir() and any(d.is_dir() for d in (cand / "train").iterdir()):
            return cand, names[0]
    return None


def detect_layout(raw_dir: Path) -> str | None:
    raw_dir = Path(raw_dir)
    if all((raw_dir / s.filename).is_file() for s in SOURCES_ANNOS):
        return "annos"
    if all((raw_dir / s.filename).is_file() for s in SOURCES_CLASSIFICATION):
        return "classification"
    if _kaggle_root(raw_dir) is not None:
        return "kaggle"
    return None


def manual_message(raw_dir: Path) -> str:
    raw_dir = Path(raw_dir).absolute()
    have = sorted(p.name for p in raw_dir.iterdir()) if raw_dir.is_dir() else []
    opt1 = manual_download_message(SOURCES_ANNOS, raw_dir, intro="  Option 1 (metric-learning release):")
    opt2 = manual_download_message(SOURCES_CLASSIFICATION, raw_dir, intro="  Option 2 (classification release):")
    strip = lambda m: "\n".join(m.splitlines()[:-2])  # noqa: E731 - drop the shared closing lines
    return "\n".join([
        "Cars-196 cannot be downloaded automatically: the Stanford addresses (ai.stanford.edu/~jkrause/car196/, "
        "imagenet.stanford.edu/internal/car196/) return 404 since 2023. Obtain ONE of these sets, e.g. from "
        + _KAGGLE_HINT + ":",
        strip(opt1),
        strip(opt2),
        "  Option 3 (Kaggle 'by classes folder' copy, no published checksum): extract it here so that "
        "<...>/train/<class name>/*.jpg, <...>/test/<class name>/*.jpg and names.csv (196 class names in class-id "
        "order) exist below the folder, e.g. car_data/car_data/train/... .",
        f"Put the files, with exactly these names, in: {raw_dir}",
        f"(currently there: {', '.join(have) if have else 'nothing'})",
        "Then run the same command again: the files are verified by checksum and preparation continues.",
    ])


def fetch(raw_dir: Path, progress: bool = True, download: bool = True):
    """Verify whichever complete distribution is present; otherwise explain how to place one."""
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    layout = detect_layout(raw_dir)
    if layout == "annos":
        return fetch_sources(SOURCES_ANNOS, raw_dir, progress=progress, download=False)
    if layout == "classification":
        return fetch_sources(SOURCES_CLASSIFICATION, raw_dir, progress=progress, download=False)
    if layout == "kaggle":
        return {}
    near = [m for s in SOURCES_ANNOS + SOURCES_CLASSIFICATION
            if not (raw_dir / s.filename).exists() for m in near_misses(s, raw_dir)]
    if near:
        raise NearMissError(f"Cars-196: no complete set of release files in {raw_dir}, but {'; '.join(near)}")
    raise ManualDownloadRequired(manual_message(raw_dir), missing=SOURCES_ANNOS + SOURCES_CLASSIFICATION,
                                 folder=raw_dir)


def fix_mat(path: Path) -> str:
    """What to do about an unreadable or wrong .mat: put the release's own file there (its checksum is named)."""
    known = {s.filename: s for s in SOURCES_ANNOS + SOURCES_CLASSIFICATION}
    if path.name in known:
        return f"put the release's {known[path.name].describe()} at {path} and run the same command again"
    return f"{REEXTRACT} (or put the release's car_devkit.tgz in place)"


def _loadmat(path: Path, dataset: str = NAME) -> dict:
    from scipy.io import loadmat

    require_file(path, dataset, fix=fix_mat(path))
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as e:  # noqa: BLE001 - scipy raises anything (IndexError, TypeError, ...) on a non-.mat file
        head = path.read_bytes()[:40]
        what = "an HTML page" if b"<html" in head.lower() or b"<!doctype" in head.lower() else f"starts {head[:20]!r}"
        raise LayoutError(f"dataset {dataset}: {path} is not a MATLAB .mat file ({what}; scipy: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:120]}); {fix_mat(path)}.") from None


def _annotations(mat: dict, path: Path, fields: tuple[str, ...]) -> dict[str, list]:
    if "annotations" not in mat:
        raise MissingAnnotationError(f"dataset {NAME}: {path} has no 'annotations' variable (found: "
                                     f"{sorted(k for k in mat if not k.startswith('__'))}); {fix_mat(path)}.")
    ann = np.atleast_1d(mat["annotations"])
    missing = [f for f in fields if f not in (ann.dtype.names or ())]
    if missing:
        raise MissingAnnotationError(f"dataset {NAME}: {path}: 'annotations' lacks the fields {missing} "
                                     f"(has {list(ann.dtype.names or ())}); {fix_mat(path)}.")
    return {f: [np.asarray(v).item() if np.ndim(v) == 0 or np.size(v) == 1 else v for v in ann[f]] for f in fields}


def _class_names(mat: dict, path: Path) -> dict[int, str]:
    if "class_names" not in mat:
        raise MissingAnnotationError(f"dataset {NAME}: {path} has no 'class_names' variable; {fix_mat(path)}.")
    names = np.atleast_1d(mat["class_names"])
    return {i + 1: str(n) for i, n in enumerate(names)}


def _row(path: str, class_id: int, names: dict[int, str]) -> dict:
    return {"path": path, "class_id": int(class_id), "class_name": names.get(int(class_id), str(class_id)),
            "split": "train" if int(class_id) in TRAIN_CLASSES else "test"}


def read_layout(raw_dir: Path, layout: str | None = None, progress: bool = False) -> tuple[pd.DataFrame, str]:
    """Extract what the layout needs (once) and return (rows, layout)."""
    raw_dir = Path(raw_dir)
    layout = layout or detect_layout(raw_dir)
    rows: list[dict] = []
    if layout == "annos":
        ims = safe_extract(raw_dir / "car_ims.tgz", extraction_dir(raw_dir / "car_ims.tgz", raw_dir), progress=progress)
        mat_path = raw_dir / "cars_annos.mat"
        mat = _loadmat(mat_path)
        ann = _annotations(mat, mat_path, ("relative_im_path", "class"))
        names = _class_names(mat, mat_path)
        prefix = ims.relative_to(raw_dir).as_posix()
        for rel, cls in zip(ann["relative_im_path"], ann["class"]):
            rows.append(_row(f"{prefix}/{str(rel).lstrip('/')}", cls, names))
    elif layout == "classification":
        folders = {}
        for archive in ("cars_train.tgz", "cars_test.tgz", "car_devkit.tgz"):
            folders[archive] = safe_extract(raw_dir / archive, extraction_dir(raw_dir / archive, raw_dir),
                                            progress=progress)
        devkit = find_folder(folders["car_devkit.tgz"], "cars_meta.mat", NAME)
        meta_path = devkit / "cars_meta.mat"
        names = _class_names(_loadmat(meta_path), meta_path)
        for archive, ann_path, marker in (
            ("cars_train.tgz", devkit / "cars_train_annos.mat", "cars_train"),
            ("cars_test.tgz", raw_dir / "cars_test_annos_withlabels.mat", "cars_test"),
        ):
            ann = _annotations(_loadmat(ann_path), ann_path, ("fname", "class"))
            images = find_folder(folders[archive], marker, NAME) / marker
            prefix = images.relative_to(raw_dir).as_posix()
            for fname, cls in zip(ann["fname"], ann["class"]):
                rows.append(_row(f"{prefix}/{fname}", cls, names))
    elif layout == "kaggle":
        found = _kaggle_root(raw_dir)
        assert found is not None
        root, names_csv = found
        lines = [ln.strip().strip('"') for ln in names_csv.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) == 197:  # a header line above the 196 names
            lines = lines[1:]
        norm = lambda s: s.replace("/", "-").strip().lower()  # noqa: E731 - '/' cannot be in a folder name
        by_name = {norm(n): i + 1 for i, n in enumerate(lines)}
        names = {i + 1: n for i, n in enumerate(lines)}
        folders = [p for part in ("train", "test") for p in sorted((root / part).iterdir()) if p.is_dir()]
        unlisted = [f for f in folders if norm(f.name) not in by_name]
        if unlisted:  # all of them at once, so one rename round fixes every one
            raise LayoutError(
                f"dataset {NAME}: {len(unlisted)} class folders are not listed in {names_csv} "
                f"({', '.join(str(f.relative_to(raw_dir)) for f in unlisted[:5])}"
                f"{', ...' if len(unlisted) > 5 else ''}); rename each to its class name as written in names.csv "
                f"(a '/' in a name is '-' in the folder name), or restore the copy's own names.csv, and run the same "
                f"command again.")
        for folder in folders:
            cls = by_name[norm(folder.name)]
            for img in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
                rows.append(_row(img.relative_to(raw_dir).as_posix(), cls, names))
    else:
        raise ManualDownloadRequired(manual_message(raw_dir), folder=raw_dir)
    df = pd.DataFrame(rows, columns=["path", "class_id", "class_name", "split"])
    return df, layout


def prepare(raw_dir: Path, out_dir: Path, image_size: int, expected_counts: Mapping[str, int] | None = None,
            expected_classes: Mapping[str, int] | None = None, progress: bool = True, workers: int | None = None):
    """Verify the placed files, extract once, read the layout, cache the images, write the prepared dataset.

    expected_counts / expected_classes: None = the published numbers; {} = no check.
    """
    raw_dir = Path(raw_dir)
    records = fetch(raw_dir, progress=progress, download=False)
    rows, layout = read_layout(raw_dir, progress=progress)
    sources = sources_meta(records)
    if layout == "kaggle":
        root, names_csv = _kaggle_root(raw_dir)  # type: ignore[misc]
        sources = {names_csv.relative_to(raw_dir).as_posix(): {
            "sha256": hashlib.sha256(names_csv.read_bytes()).hexdigest(), "images": len(rows),
            "verified_against_published_hash": False}}
    return build_published(
        NAME, rows, out_dir, image_size, raw_root=raw_dir,
        meta={"title": RECIPE.title, "recipe_version": RECIPE_VERSION, "layout": layout, "sources": sources,
              "split_protocol": "by class id: 1-98 train, 99-196 test (release train/test sets not used)"},
        published_counts=EXPECTED_COUNTS, published_classes=EXPECTED_CLASSES,
        expected_counts=expected_counts, expected_classes=expected_classes, progress=progress, workers=workers,
        counted_from={"annos": "cars_annos.mat", "classification": "cars_train_annos.mat and "
                      "cars_test_annos_withlabels.mat", "kaggle": "the class folders of the Kaggle copy"}[layout],
        fix=REEXTRACT if layout != "kaggle" else "restore the missing images of the Kaggle copy",
        counts_fix="" if layout != "kaggle" else ("the Kaggle copy is incomplete or another release; put a complete "
                                                  "copy there and run the same command again"),
    )


RECIPE = register_dataset(
    DatasetRecipe(
        name=NAME,
        title="Cars-196 (Stanford Cars)",
        ks=KS_SMALL,
        fetch=fetch,
        prepare=prepare,
        expected_counts=dict(EXPECTED_COUNTS),
        sources=lambda: SOURCES_ANNOS + SOURCES_CLASSIFICATION,
    )
)
