"""Small real data sets on disk, in each layout the data sources read (written with PIL / numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from hdkd.config import Params, params_from_dict

HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def pixels(seed: int, size: int = 24) -> np.ndarray:
    """A distinct noisy RGB image (so every file has its own sha256)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, 3)
    return np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels(seed, size)).save(path)
    return path


def params(source: str = "synthetic", path: Path | None = None, balance: dict | None = None, **data) -> Params:
    """Validated params for a tiny run: 16 px images, the given data/balance keys."""
    raw = {"source": source, "image_size": 16, **data}
    if path is not None:
        raw["path"] = str(path)
    return params_from_dict({"data": raw, "balance": balance or {}})


def imagefolder(root: Path, per_class: dict[str, int], suffix: str = ".png") -> Path:
    seed = 0
    for label, n in per_class.items():
        for i in range(n):
            sub = "nested/" if i % 3 == 2 else ""  # any depth below the class folder
            write_image(root / label / f"{sub}img_{i}{suffix}", seed)
            seed += 1
    return root


def ham10000(root: Path, lesions_per_class: int = 7) -> Path:
    """HAM layout: two image folders + metadata; lesions with 1-3 images each."""
    rows, seed = [], 0
    for dx in HAM_DX:
        for lesion in range(lesions_per_class):
            for view in range(1 + (lesion % 3)):
                image_id = f"ISIC_{seed:07d}"
                part = "HAM10000_images_part_1" if seed % 2 else "HAM10000_images_part_2"
                write_image(root / part / f"{image_id}.jpg", seed)
                rows.append(
                    {
                        "lesion_id": f"HAM_{dx}_{lesion:04d}",
                        "image_id": image_id,
                        "dx": dx,
                        "dx_type": "histo",
                        "age": 50,
                        "sex": "male",
                        "localization": "back",
                        "view": view,
                    }
                )
                seed += 1
    pd.DataFrame(rows).drop(columns="view").to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


def brain(root: Path, train_per_class: int = 5, test_per_class: int = 2) -> Path:
    folders = {"glioma": "glioma", "meningioma": "meningioma", "notumor": "no_tumor", "pituitary": "pituitary"}
    seed = 0
    for folder in folders.values():
        for split, n in (("Training", train_per_class), ("Testing", test_per_class)):
            for i in range(n):
                write_image(root / split / folder / f"img_{i}.jpg", seed)
                seed += 1
    return root


def medmnist(path: Path, rgb: bool = False, sizes: tuple[int, int, int] = (20, 8, 8), classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        labels = np.arange(n) % classes
        arrays[f"{split}_labels"] = labels if rgb else labels[:, None]
    np.savez(path, **arrays)
    return path
