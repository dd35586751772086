"""Turning a recipe's manifest rows into a prepared dataset: labels, count checks, the image cache.

Every image is decoded once, converted to RGB and squashed to S x S with Lanczos (the authors' protocol
resizes to 256 x 256 before RandomResizedCrop/CenterCrop), and written as row i of
`<out_dir>.tmp/images.npy`, a `.npy` file created with `np.lib.format.open_memmap`. Rows are written
with `os.pwrite` at their offset, so memory stays bounded whatever the dataset size (no array of all
images is ever held, and no mapped pages accumulate in this process). Decoding runs in a thread pool:
Pillow releases the GIL while decoding and resizing, and on this project's 2-core machine two threads
decoded 500x375 JPEGs 1.8x faster than one (526 vs 281 images/s), while a 2-process forkserver pool
managed 408/s (the arrays have to be pickled back) and costs a second of start-up per worker.

A folder without READY is never trusted (see prepared.py); on any error here the temporary folder is
removed, so a rerun starts cleanly.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .prepared import PreparedDataset, RawFilesError, check_counts, write_prepared

ImageLoader = Callable[[int], Any]  # row index -> PIL image or HxWx3 uint8 array


# What to do about damaged raw files when the recipe has nothing more specific to say: true of a folder
# extracted from a verified archive (re-extraction restores it), which is what most recipes prepare from.
REEXTRACT = ("delete the extracted folder that contains it and run the same command again (it is re-extracted "
             "from the verified archive)")


class ImageDecodeError(RawFilesError):
    """An image could not be decoded; the message names the file."""


class ClassCountMismatchError(RawFilesError):
    pass


class MissingFilesError(RawFilesError):
    pass


def assign_labels(rows: pd.DataFrame) -> pd.DataFrame:
    """label = rank of class_id among all class ids of the dataset (0-based, contiguous)."""
    rows = rows.reset_index(drop=True).copy()
    ids = sorted(rows["class_id"].unique())
    mapping = {c: i for i, c in enumerate(ids)}
    rows["label"] = rows["class_id"].map(mapping).astype(np.int64)
    return rows


def check_classes(name: str, rows: pd.DataFrame, expected: Mapping[str, int], counted_from: str = "",
                  fix: str = "") -> None:
    """Check the number of classes per split; a key 'query+gallery' counts the union of those splits."""
    problems = []
    for key, want in expected.items():
        splits = key.split("+")
        got = int(rows.loc[rows["split"].isin(splits), "class_id"].nunique())
        if got != want:
            problems.append(f"{key}: expected {want:,} classes, found {got:,} ({got - want:+,})")
    if problems:
        raise ClassCountMismatchError(
            f"dataset {name}: class counts{f' in {counted_from}' if counted_from else ''} differ from the published "
            f"split ({'; '.join(problems)}). The raw files are incomplete or not the expected release; "
            f"{fix or 're-fetch them and prepare again'}."
        )


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def to_rgb_array(image: Any, size: int) -> np.ndarray:
    """PIL image or array -> RGB, squashed to size x size with Lanczos, uint8 (size, size, 3)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def load_image_file(path: str | os.PathLike, size: int, fix: str = "") -> np.ndarray:
    """Decode an image file once; any decoding problem becomes ImageDecodeError naming the file.

    `fix`: what the user should do (the recipe knows whether re-extracting can help); default REEXTRACT."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb_array(img, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(
            f"cannot decode image {shown(Path(path))}: {type(e).__name__}: {' '.join(str(e).split())}. The raw files are "
            f"damaged; {fix or REEXTRACT + ', or replace the file'}."
        ) from None


def build_prepared(
    name: str,
    rows: pd.DataFrame,
    out_dir: str | os.PathLike,
    image_size: int,
    *,
    raw_root: str | os.PathLike | None = None,
    meta: dict[str, Any] | None = None,
    expected_counts: Mapping[str, int] | None = None,
    expected_classes: Mapping[str, int] | None = None,
    loader: ImageLoader | None = None,
    progress: bool = True,
    workers: int | None = None,
    fix: str = "",
    counted_from: str = "",
    counts_fix: str = "",
) -> PreparedDataset:
    """rows (path, class_id, class_name, split) -> prepared dataset at out_dir.

    Counts are checked before any image is decoded (a wrong release fails in seconds, not after an
    hour), and again by write_prepared. Without `loader`, row i is the image file raw_root / path.
    `fix`: what to do about missing or undecodable images (default: re-extract the verified archive).
    `counted_from`: the annotation file(s) the rows come from, named when a count differs; `counts_fix`: what
    to do then (default: re-fetch).
    """
    if int(image_size) < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    out_dir = Path(out_dir)
    rows = assign_labels(rows)
    counts = rows["split"].value_counts().to_dict()
    if expected_counts:
        check_counts(name, counts, dict(expected_counts), counted_from, counts_fix)
    if expected_classes:
        check_classes(name, rows, expected_classes, counted_from, counts_fix)
    if loader is None:
        if raw_root is None:
            raise ValueError("build_prepared needs raw_root or loader")
        root = Path(raw_root)
        paths = [root / p for p in rows["path"]]
        missing = [str(shown(p)) for p in paths if not p.is_file()]
        if missing:
            fix = fix or f"delete {root / 'extracted'} and run the same command again"
            raise MissingFilesError(
                f"dataset {name}: {len(missing):,} image files listed in the annotations are missing, e.g. "
                f"{', '.join(missing[:5])}. The raw files are incomplete; "
                f"{fix}."
            )
        size = int(image_size)
        loader = lambda i: load_image_file(paths[i], size, fix)  # noqa: E731
    n = len(rows)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        images_path = tmp / "images.npy"
        row_bytes = image_size * image_size * 3
        free = shutil.disk_usage(tmp).free
        if n * row_bytes > free:
            raise OSError(f"preparing {name} at {image_size}px needs {n * row_bytes / 1e9:.1f} GB in {tmp}, "
                          f"but only {free / 1e9:.1f} GB are free")
        mm = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3))
        offset = mm.offset
        del mm
        _fill(images_path, offset, n, image_size, loader, progress, workers or default_workers(), name)
        images = np.load(images_path, mmap_mode="r+")
        full_meta = {
            "name": name,
            "preprocessing": f"decoded once, converted to RGB, resized to {image_size}x{image_size} "
                             "(aspect ratio not kept) with PIL Lanczos",
            **(meta or {}),
        }
        return write_prepared(out_dir, rows, images, full_meta,
                              expected_counts=dict(expected_counts) if expected_counts else None)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_published(name: str, rows: pd.DataFrame, out_dir: str | os.PathLike, image_size: int, *,
                    published_counts: Mapping[str, int], published_classes: Mapping[str, int],
                    expected_counts: Mapping[str, int] | None = None,
                    expected_classes: Mapping[str, int] | None = None, **kwargs: Any) -> PreparedDataset:
    """build_prepared for a recipe: expected_counts / expected_classes None = the published numbers,
    {} = no check (tests on small fakes pass their own)."""
    return build_prepared(
        name, rows, out_dir, image_size,
        expected_counts=published_counts if expected_counts is None else expected_counts,
        expected_classes=published_classes if expected_classes is None else expected_classes,
        **kwargs,
    )


CHUNK = 64  # images per task of the decoding pool (and per step of the progress bar)


def _fill(path: Path, offset: int, n: int, size: int, loader: ImageLoader, progress: bool, workers: int,
          name: str) -> None:
    row_bytes = size * size * 3
    fd = os.open(path, os.O_RDWR)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"caching {name} images", unit="img", dynamic_ncols=True)

    def work(start: int, stop: int) -> int:
        for i in range(start, stop):
            arr = loader(i)
            if not isinstance(arr, np.ndarray) or arr.shape != (size, size, 3) or arr.dtype != np.uint8:
                arr = to_rgb_array(arr, size)
            arr = np.ascontiguousarray(arr)
            view = memoryview(arr).cast("B")
            done = 0
            while done < row_bytes:
                done += os.pwrite(fd, view[done:], offset + i * row_bytes + done)
        return stop - start

    chunk = CHUNK
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending = {pool.submit(work, s, min(n, s + chunk)) for s in range(0, n, chunk)}
            while pending:  # the bar advances as each chunk finishes; the first failure stops the rest
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    if fut.exception() is not None:
                        for p in pending:
                            p.cancel()
                        raise fut.exception()
                    if bar is not None:
                        bar.update(fut.result())
        os.fsync(fd)  # the pixels are on disk before READY can be written
    finally:
        os.close(fd)
        if bar is not None:
            bar.close()


# ------------------------------------------------------------------------------ layout-reading helpers


class MissingAnnotationError(RawFilesError):
    """An annotation file the layout needs is absent; the message names it."""


class LayoutError(RawFilesError):
    """An annotation file is present but does not say what the published one says; the message names it."""


def shown(path: Path) -> Path:
    """`path` as the user knows it: through the links of a --source copy to the user's own file."""
    real = Path(os.path.realpath(path))
    return real if real != Path(os.path.abspath(path)) else path


def require_file(path: Path, dataset: str, what: str = "annotation file", fix: str = "") -> Path:
    if not path.is_file():
        raise MissingAnnotationError(
            f"dataset {dataset}: {what} {shown(path)} is missing. The raw files are incomplete or not the expected "
            f"release; {fix or 're-fetch them (delete the archive and its extracted folder) and prepare again'}."
        )
    return path


def find_folder(base: Path, marker: str, dataset: str, depth: int = 2, fix: str = "") -> Path:
    """The folder at or below `base` (up to `depth` levels) that contains `marker` (a relative path)."""
    frontier = [base]
    for _ in range(depth + 1):
        nxt = []
        for folder in frontier:
            if (folder / marker).exists():
                return folder
            if folder.is_dir():
                nxt.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
        frontier = nxt
    raise MissingAnnotationError(
        f"dataset {dataset}: no {marker} found in {shown(base)} (searched {depth} levels down). The archive is incomplete "
        f"or not the expected release; {fix or 're-fetch it and prepare again'}."
    )


def read_rows(path: Path, dataset: str, ncols: int, header: list[str] | None = None,
              count_line: bool = False, fix: str = "") -> list[list[str]]:
    """Whitespace-separated rows with exactly `ncols` fields (the last may contain spaces when ncols > 1).

    `header`: the expected first line (after the count line). `count_line`: line 1 is the row count,
    checked against the rows read (a truncated file fails here). `fix`: what to do about a bad file.
    """
    require_file(path, dataset, fix=fix)
    where = shown(path)
    todo = f" {fix[0].upper()}{fix[1:]}." if fix else f" {REEXTRACT[0].upper()}{REEXTRACT[1:]}."
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    start = 0
    declared = None
    if count_line:
        try:
            declared = int(lines[0].split()[0])
        except (IndexError, ValueError):
            raise LayoutError(f"dataset {dataset}: {where}: line 1 should be the number of rows, got "
                              f"{lines[0] if lines else '(empty file)'!r}.{todo}") from None
        start = 1
    if header is not None:
        got = lines[start].split() if len(lines) > start else []
        if got != header:
            raise LayoutError(f"dataset {dataset}: {where}: expected header {' '.join(header)!r}, got "
                              f"{' '.join(got)!r}.{todo}")
        start += 1
    rows = []
    for lineno, line in enumerate(lines[start:], start=start + 1):
        parts = line.split(None, ncols - 1)
        if len(parts) != ncols:
            raise LayoutError(f"dataset {dataset}: {where}, line {lineno}: expected {ncols} fields, got {line!r}.{todo}")
        rows.append(parts)
    if declared is not None and declared != len(rows):
        raise LayoutError(f"dataset {dataset}: {where} declares {declared:,} rows on line 1 but has {len(rows):,}; "
                          f"the file is truncated or edited.{todo}")
    return rows


def sources_meta(records: Mapping[str, Any]) -> dict[str, Any]:
    """{filename: {size, sha256, md5, verified...}} for meta.json."""
    return {name: rec.to_meta() for name, rec in sorted(records.items())}
