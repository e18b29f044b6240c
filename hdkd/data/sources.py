"""Where the images come from: one lister per `data.source`, all giving the same records.

Listing is cheap (no decoding): it walks folders or reads metadata and says, for each image,
its label, its group (lesion or patient when the source knows it, else the image itself), the
split the source already gives and where the pixels are. `ingest` decodes and normalises them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hdkd.config import Params
from hdkd.data import SPLITS, DataError
from hdkd.data.arrays import read_npz
from hdkd.data.synthetic import HAM_CLASSES, generate

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
HAM_METADATA = "HAM10000_metadata.csv"
HAM_COLUMNS = ("lesion_id", "image_id", "dx")
BRAIN_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
# Folder names of the older release of the Brain Tumor MRI data set.
_BRAIN_ALIASES = {
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "no_tumor": "notumor",
    "pituitary_tumor": "pituitary",
}
_MEDMNIST_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))


@dataclass(frozen=True)
class Record:
    label: str
    group: str  # images sharing a group never land in two splits
    given_split: str  # "train", "val" or "test" when the source fixes it, else ""
    source_file: str  # where the image comes from, relative to data.path
    name: str  # output name without suffix, unique within the label
    image: Path | np.ndarray | None  # a file to decode, decoded pixels, or None: listed but absent


@dataclass(frozen=True)
class Source:
    records: list[Record]
    classes: list[str]  # the known class set: canonical for ham10000/brain_tumor_mri, else the one found
    root: Path | None  # data.path (None for synthetic)


def load_source(params: Params) -> Source:
    """List the records of `params.data.source`; raises DataError on a bad layout."""
    data = params.data
    if data.source == "synthetic":
        return _synthetic(data.synthetic_images, data.image_size, params.seed)
    root = Path(data.path or "")
    if not root.exists():
        raise DataError(f"{root}: not found (data.path for data.source '{data.source}')")
    lister = {"imagefolder": _imagefolder, "ham10000": _ham10000, "brain_tumor_mri": _brain, "medmnist": _medmnist}
    return lister[data.source](root)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files at any depth below `folder`, hidden files and folders excluded, sorted."""
    return sorted(
        p
        for p in folder.rglob("*")
        if _is_image(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _names(rel_paths: Iterable[Path]) -> list[str]:
    """Output names: the relative path without suffix, keeping the suffix where two files clash."""
    rel_paths = list(rel_paths)
    stems = Counter(p.with_suffix("").as_posix() for p in rel_paths)
    return [
        p.with_suffix("").as_posix() + (f"_{p.suffix[1:].lower()}" if stems[p.with_suffix("").as_posix()] > 1 else "")
        for p in rel_paths
    ]


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected one sub-folder per class)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders found (expected one sub-folder per class with images in it)")
    return folders


def _folder_records(root: Path, base: Path, split: str = "", labels: dict[str, str] | None = None) -> list[Record]:
    """One record per image below each class folder of `root`; paths relative to `base`."""
    records = []
    for folder in _class_folders(root):
        files = _image_files(folder)
        if not files:
            raise DataError(
                f"{folder}: class folder '{folder.name}' has no images ({', '.join(IMAGE_SUFFIXES)}); "
                "add images or remove the folder"
            )
        label = (labels or {}).get(folder.name.lower(), folder.name)
        prefix = f"{split}/" if split else ""
        for path, name in zip(files, _names(p.relative_to(folder) for p in files), strict=True):
            records.append(
                Record(
                    label=label,
                    group=f"{label}/{prefix}{name}",
                    given_split=split,
                    source_file=path.relative_to(base).as_posix(),
                    name=prefix + name,
                    image=path,
                )
            )
    return records


def _imagefolder(root: Path) -> Source:
    records = _folder_records(root, root)
    return Source(records, sorted({r.label for r in records}), root)


def _brain(root: Path) -> Source:
    parts = {"train": root / "Training", "test": root / "Testing"}
    for split, folder in parts.items():
        if not folder.is_dir():
            raise DataError(
                f"{folder}: not found; the brain_tumor_mri layout is {root}/Training/<class>/ and "
                f"{root}/Testing/<class>/ (Testing is kept as the test split; needed for '{split}')"
            )
    aliases = {**_BRAIN_ALIASES, **{c: c for c in BRAIN_CLASSES}}
    records = [r for split, folder in parts.items() for r in _folder_records(folder, root, split, aliases)]
    return Source(records, list(BRAIN_CLASSES), root)


def _ham10000(root: Path) -> Source:
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected the HAM-10000 images and {HAM_METADATA})")
    csv = root / HAM_METADATA
    if not csv.is_file():
        found = sorted(root.rglob(HAM_METADATA))
        if not found:
            raise DataError(f"{root}: {HAM_METADATA} not found at or below this folder")
        csv = found[0]
    try:
        meta = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(
            f"{csv}: not a readable CSV ({error}); it must be comma-separated text with a header row"
        ) from None
    missing = [c for c in HAM_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(
            f"{csv}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, meta.columns)) or 'none'}); "
            f"the metadata needs {', '.join(HAM_COLUMNS)}"
        )
    for column in HAM_COLUMNS:
        empty = meta.index[meta[column].str.strip() == ""]
        if len(empty):
            raise DataError(f"{csv} line {empty[0] + 2}: empty {column} ({len(empty)} row(s) have none)")
    dup = meta["image_id"][meta["image_id"].duplicated()]
    if len(dup):
        raise DataError(f"{csv}: image_id {dup.iloc[0]!r} is listed more than once")
    unknown = meta.index[~meta["dx"].str.strip().isin(HAM_CLASSES)]
    if len(unknown):
        raise DataError(
            f"{csv} line {unknown[0] + 2}: dx {meta['dx'][unknown[0]]!r} is not a HAM-10000 class "
            f"({', '.join(HAM_CLASSES)}; {len(unknown)} row(s) have another); correct the metadata"
        )

    # The Kaggle copy ships each image twice (HAM10000_images_part_1 and ham10000_images_part_1):
    # the first path in sorted order wins.
    by_stem: dict[str, Path] = {}
    for image_file in _image_files(root):
        by_stem.setdefault(image_file.stem, image_file)
    csv_name = csv.relative_to(root).as_posix()
    records = []
    for line, row in enumerate(meta.itertuples(index=False), start=2):
        image_id, label = row.image_id.strip(), row.dx.strip()
        path = by_stem.get(image_id)
        records.append(
            Record(
                label=label,
                group=row.lesion_id.strip(),
                given_split="",
                source_file=path.relative_to(root).as_posix() if path else f"{csv_name} line {line}: {image_id}",
                name=image_id,
                image=path,
            )
        )
    return Source(records, list(HAM_CLASSES), root)


def _medmnist(path: Path) -> Source:
    if not path.is_file():
        raise DataError(f"{path}: not a file (data.source 'medmnist' expects a MedMNIST .npz file)")
    arrays = read_npz(path, _MEDMNIST_KEYS, "a MedMNIST .npz holds train_/val_/test_images and _labels")
    labels = {}
    for split in SPLITS:
        images, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise DataError(
                f"{path}: {split}_images must be uint8 (N, H, W) or (N, H, W, 3), got {images.dtype} {images.shape}"
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"{path}: {split}_labels must be integer (N,) or (N, 1), got {y.dtype} {y.shape} "
                "(multi-label MedMNIST sets are not supported)"
            )
        if len(y) != len(images):
            raise DataError(f"{path}: {split}_images has {len(images)} rows but {split}_labels has {len(y)}")
        if len(y) and y.min() < 0:
            raise DataError(f"{path}: {split}_labels has a negative label ({y.min()})")
        labels[split] = y
    n_classes = max(int(y.max()) + 1 for y in labels.values() if len(y))
    # Zero-padded so that the sorted names keep the numeric order (class_02 < class_10).
    classes = [f"class_{i:0{len(str(n_classes - 1))}d}" for i in range(n_classes)]
    records = [
        Record(
            label=classes[int(label)],
            group=f"{split}_{i:06d}",
            given_split=split,
            source_file=f"{path.name}:{split}[{i}]",
            name=f"{split}_{i:06d}",
            image=arrays[f"{split}_images"][i],
        )
        for split in SPLITS
        for i, label in enumerate(labels[split])
    ]
    return Source(records, classes, path)


def _synthetic(n: int, size: int, seed: int) -> Source:
    data = generate(n, size, seed)
    records = [
        Record(
            label=label,
            group=group,
            given_split="",
            source_file=f"synthetic:{i}",
            name=f"syn_{i:05d}",
            image=data.images[i],
        )
        for i, (label, group) in enumerate(zip(data.labels, data.groups, strict=True))
    ]
    return Source(records, list(HAM_CLASSES), None)
