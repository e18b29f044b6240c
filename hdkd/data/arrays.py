"""The decoded split cache (`data/split/*.npz`, `data/balanced/train.npz`), without torch.

Kept apart from `loading` so that split and balance do not pay for importing torch.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
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


def read_npz(path: Path, keys: Sequence[str], remedy: str) -> dict[str, np.ndarray]:
    """The named arrays of an .npz file; never unpickles. Anything else is a DataError naming the file."""
    # np.load takes a non-zip file for a pickle and a missing key for a KeyError: check both first.
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (not a zip archive of arrays); {remedy}")
    arrays = {}
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in keys if k not in npz.files]
        if missing:
            found = ", ".join(npz.files) or "none"
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (found: {found}); {remedy}")
        for key in keys:
            try:
                arrays[key] = npz[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
                # numpy refuses an object array (reading it would unpickle) with a ValueError naming allow_pickle.
                pickled = "allow_pickle" in str(error)
                what = "holds Python objects, which are not loaded" if pickled else f"is damaged ({error})"
                raise DataError(f"{path}: array {key!r} {what}; {remedy}") from None
    return arrays


def load_split(path: str | Path) -> SplitArrays:
    """Read one split cache written by the split or balance stage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run the split stage, then balance, first)")
    arrays = read_npz(path, SPLIT_KEYS, "run the split stage again")
    return SplitArrays(
        images=arrays["images"], labels=arrays["labels"].astype(np.int64), classes=[str(c) for c in arrays["classes"]]
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
