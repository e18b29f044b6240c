"""Split stage: `data/raw/` -> `data/split/` (stratified, grouped train/val/test + decoded caches).

Splits the source gives are kept (Brain Tumor MRI's Testing part, MedMNIST's three splits);
a split it does not give is carved from its remaining train pool with scikit-learn's
StratifiedGroupKFold, so class proportions are kept while no group (HAM-10000 lesion) ever
spans two splits. Outputs, written atomically:
- `manifest.csv`: the raw manifest plus a `split` column;
- `train.npz`, `val.npz`, `test.npz`: `images` uint8 (N, H, W, 3), `labels` int64, `classes`
  (sorted names, the same in every file), `ids` (manifest paths), so epochs never re-decode.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from hdkd.config import Params
from hdkd.data import SPLITS, DataError
from hdkd.data.arrays import save_split
from hdkd.data.ingest import read_classes, read_manifest
from hdkd.files import atomic_dir

log = logging.getLogger(__name__)


def _carve(pool: pd.DataFrame, fraction: float, seed: int, name: str) -> pd.Index:
    """Rows of `pool` (about `fraction` of it) for a new split, whole groups only, stratified."""
    n_splits = max(2, round(1 / fraction))
    n_groups = pool["group"].nunique()
    if n_groups < n_splits:
        raise DataError(
            f"cannot carve a {name} split of {fraction:.0%}: only {n_groups} image groups "
            f"(lesions/patients) left; add images or raise data.{name}_fraction"
        )
    folder = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class has only n members": checked below with a clearer message.
        warnings.simplefilter("ignore", UserWarning)
        folds = [held for _, held in folder.split(np.zeros(len(pool)), pool["label"], pool["group"])]
    # The greedy folds differ. Prefer one that holds every class with groups to spare and no
    # class whose only group it would take from train, then the closest size.
    labels = pool["label"].to_numpy()
    groups_per_class = pool.groupby("label")["group"].nunique()
    spare = set(groups_per_class.index[groups_per_class > 1])
    target = fraction * len(pool)

    def cost(fold: np.ndarray) -> tuple:
        present = set(labels[fold])
        return (len(spare - present) + len(present - spare), abs(len(fold) - target), fold.min())

    return pool.index[min(folds, key=cost)]


def assign_splits(manifest: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> pd.Series:
    """One of train/val/test per manifest row (fractions are of the whole data set)."""
    given = manifest["given_split"]
    split = pd.Series("train", index=manifest.index)
    for name in ("val", "test"):
        split[given == name] = name
    carve_test = not (given == "test").any()
    pool = manifest[split == "train"]
    if carve_test:
        test = _carve(pool, test_fraction, seed, "test")
        split[test] = "test"
        pool = pool.drop(test)
    if not (given == "val").any():
        # val_fraction is of the whole set; after carving test the pool is only part of it.
        share = val_fraction / (1 - test_fraction) if carve_test else val_fraction
        split[_carve(pool, share, seed, "val")] = "val"
    return split


def _check_classes(manifest: pd.DataFrame, classes: list[str]) -> None:
    unknown = sorted(set(manifest["label"]) - set(classes))
    if unknown:
        raise DataError(f"labels {unknown} are not in the known class set {classes} (run the validate stage)")
    counts = pd.crosstab(manifest["label"], manifest["split"]).reindex(index=classes, columns=SPLITS, fill_value=0)
    for name, row in counts.iterrows():
        if row.sum() and not row["train"]:
            raise DataError(
                f"class {name!r}: none of its {row.sum()} images landed in train "
                f"({row['val']} val, {row['test']} test, in {manifest.loc[manifest.label == name, 'group'].nunique()} "
                "groups); add images of this class or lower data.val_fraction / data.test_fraction"
            )
        missing = [s for s in ("val", "test") if row.sum() and not row[s]]
        if missing:
            log.warning("split: class %r has no %s images (too few groups)", name, " or ".join(missing))


def _decode(raw_dir: Path, paths: pd.Series, size: int, desc: str) -> np.ndarray:
    images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, rel in enumerate(tqdm(paths, desc=desc, unit="img")):
        with Image.open(raw_dir / rel) as image:
            pixels = np.asarray(image.convert("RGB"))
        if pixels.shape != images.shape[1:]:
            raise DataError(
                f"{raw_dir / rel}: {pixels.shape[1]}x{pixels.shape[0]} px but data.image_size is {size}; "
                "run the ingest stage again"
            )
        images[i] = pixels
    return images


def split(params: Params, raw_dir: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Assign splits to `raw_dir/manifest.csv` and write `out_dir` atomically; return the manifest."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    manifest_path = raw_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: not found (run the ingest stage first)")
    manifest = read_manifest(manifest_path)
    classes = sorted(read_classes(raw_dir))
    manifest["split"] = assign_splits(manifest, params.data.val_fraction, params.data.test_fraction, params.seed)
    _check_classes(manifest, classes)

    index = {name: i for i, name in enumerate(classes)}
    with atomic_dir(out_dir) as tmp:
        manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.4f")
        for name in SPLITS:
            rows = manifest[manifest["split"] == name]
            save_split(
                tmp / f"{name}.npz",
                images=_decode(raw_dir, rows["path"], params.data.image_size, f"split {name}"),
                labels=rows["label"].map(index).to_numpy(np.int64),
                classes=classes,
                ids=rows["path"].to_numpy(dtype=str),
            )
    counts = manifest["split"].value_counts()
    print(
        "split: "
        + ", ".join(f"{counts.get(s, 0)} {s}" for s in SPLITS)
        + f" images, {manifest['group'].nunique()} groups kept whole -> {out_dir}"
    )
    return manifest
