"""Balance stage: SMOTE on the train split only -> `data/balanced/` (val and test stay untouched).

SMOTE interpolates between an image and one of its k nearest neighbours *of the same class*,
so it is run one class at a time: peak memory grows with the largest class, not with the data
set, and with an integer seed the samples are bit-identical to one whole-set call (imbalanced-
learn draws every class from a fresh RandomState(seed)). Pixels go through SMOTE as float32
and come back through rint/clip: uint8 input is silently corrupted (differences wrap around).

Outputs, written atomically: `train.npz` (the split keys plus a `synthetic` bool array, real
images first) and `manifest.csv` (the train rows of the split manifest, then one row per
synthetic image, `synthetic` marking them).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hdkd.config import Params
from hdkd.data import DataError
from hdkd.data.arrays import load_split, save_split
from hdkd.data.ingest import read_manifest
from hdkd.files import atomic_dir

log = logging.getLogger(__name__)


def class_targets(counts: dict[str, int], targets: str | dict[str, int]) -> dict[str, int]:
    """Wanted train count per class: `auto` = the largest class; a mapping names some classes.

    A target below a class's current count is an error: SMOTE only adds images.
    """
    if not isinstance(targets, dict):  # "auto"
        top = max(counts.values())
        return dict.fromkeys(counts, top)
    unknown = sorted(set(targets) - set(counts))
    if unknown:
        raise DataError(f"balance.targets: unknown class(es) {unknown}; the classes are {sorted(counts)}")
    for name, want in targets.items():
        if want < counts[name]:
            raise DataError(
                f"balance.targets.{name} = {want} is below the {counts[name]} train images of {name!r}; "
                "SMOTE only adds images: raise the target or drop the key"
            )
    return {name: targets.get(name, have) for name, have in counts.items()}


def smote_class(images: np.ndarray, target: int, k_neighbors: int, seed: int) -> np.ndarray:
    """`target - len(images)` new uint8 images interpolated within one class.

    SMOTE refuses a single class, so one all-zero row of a dummy class rides along; it is
    never a neighbour (neighbours are searched within the class) and draws no samples.
    """
    from imblearn.over_sampling import SMOTE

    n, shape = len(images), images.shape[1:]
    x = np.empty((n + 1, int(np.prod(shape))), dtype=np.float32)
    x[:n] = images.reshape(n, -1)
    x[n] = 0
    y = np.zeros(n + 1, dtype=np.int64)
    y[n] = 1
    sampler = SMOTE(sampling_strategy={0: target}, k_neighbors=k_neighbors, random_state=seed)
    new = sampler.fit_resample(x, y)[0][n + 1 :]
    np.clip(np.rint(new, out=new), 0, 255, out=new)  # in place: no float copies of the output
    return new.astype(np.uint8).reshape(-1, *shape)


def balance(params: Params, split_dir: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """SMOTE `split_dir/train.npz` up to `params.balance.targets`; write `out_dir`; return its manifest."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    train = load_split(split_dir / "train.npz")
    manifest = read_manifest(split_dir / "manifest.csv").set_index("path")
    with np.load(split_dir / "train.npz", allow_pickle=False) as npz:
        ids = npz["ids"]
    counts = {name: int((train.labels == i).sum()) for i, name in enumerate(train.classes)}
    cfg = params.balance
    wanted = class_targets(counts, cfg.targets) if cfg.enabled else counts

    extra = {name: wanted[name] - counts[name] for name in train.classes}
    images = np.empty((len(train) + sum(extra.values()), *train.images.shape[1:]), dtype=np.uint8)
    images[: len(train)] = train.images
    labels = [train.labels]
    new_ids = []
    at = len(train)
    for i, name in enumerate(train.classes):
        if not extra[name]:
            continue
        have = counts[name]
        if have < 2:
            raise DataError(
                f"class {name!r} has {have} train image(s): SMOTE needs at least 2 to interpolate; "
                f"add images of {name!r}, or set balance.targets.{name} to {have} (or balance.enabled: false)"
            )
        k = min(cfg.k_neighbors, have - 1)
        if k < cfg.k_neighbors:
            log.warning(
                "balance: class %r has only %d train images: k_neighbors lowered from %d to %d",
                name,
                have,
                cfg.k_neighbors,
                k,
            )
        images[at : at + extra[name]] = smote_class(train.images[train.labels == i], wanted[name], k, params.seed)
        labels.append(np.full(extra[name], i, dtype=np.int64))
        new_ids += [f"smote/{name}/{j:06d}" for j in range(extra[name])]
        at += extra[name]

    synthetic = np.zeros(len(images), dtype=bool)
    synthetic[len(train) :] = True
    all_ids = np.concatenate([ids, np.array(new_ids, dtype=str)]) if new_ids else ids
    real = manifest.loc[ids].reset_index()
    real["synthetic"] = False
    height, width = images.shape[1:3]
    fake = pd.DataFrame(
        {
            "path": new_ids,
            "label": [p.split("/")[1] for p in new_ids],
            "group": new_ids,
            "given_split": "",
            "width": width,
            "height": height,
            "source_file": "smote",
            "split": "train",
            "synthetic": True,
        }
    )
    out_manifest = pd.concat([real, fake], ignore_index=True)[[*real.columns]]
    with atomic_dir(out_dir) as tmp:
        save_split(tmp / "train.npz", images, np.concatenate(labels), train.classes, all_ids, synthetic=synthetic)
        out_manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.4f")

    per_class = ", ".join(f"{n} {counts[n]}->{wanted[n]}" for n in train.classes)
    how = f"SMOTE k<={cfg.k_neighbors}" if cfg.enabled else "balance disabled"
    print(
        f"balance: {len(train)} -> {len(images)} train images ({synthetic.sum()} synthetic, {how}; "
        f"{per_class}) -> {out_dir}"
    )
    return out_manifest
