"""The decoded split cache (`data/split/*.npz`, `data/balanced/train.npz`), without torch.

Kept apart from `loading` so that split and balance do not pay for importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdkd.data import DataError

SPLIT_KEYS = ("images", "labels", "classes", "ids")


@dataclass(frozen=True)
class SplitArrays:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,), indices into classes
    classes: list[str]  # sorted class names, the same for every split

    def __len__(self) -> int:
        return len(self.labels)


def load_split(path: str | Path) -> SplitArrays:
    """Read one split cache written by the split or balance stage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the split stage, then balance, first)")
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in SPLIT_KEYS if k not in npz.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; run the split stage again")
        return SplitArrays(
            images=npz["images"], labels=npz["labels"].astype(np.int64), classes=[str(c) for c in npz["classes"]]
        )


def save_split(
    path: Path, images: np.ndarray, labels: np.ndarray, classes: list[str], ids: np.ndarray, **extra: np.ndarray
) -> None:
    """Uncompressed on purpose: loading is a plain read, and compressed pixels save little."""
    np.savez(
        path,
        images=images,
        labels=labels.astype(np.int64),
        classes=np.array(classes, dtype=str),
        ids=np.asarray(ids, dtype=str),
        **extra,  # type: ignore[arg-type]  # numpy's stubs type **kwds as bool
    )
