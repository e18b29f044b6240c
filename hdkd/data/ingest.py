"""Ingest stage: any source -> `data/raw/` (square RGB PNGs at data.image_size + manifest.csv).

Outputs, written to a temporary folder and renamed whole (a failure leaves the old `data/raw`):
- `images/<label>/<name>.png`
- `manifest.csv` (hdkd.data.MANIFEST_COLUMNS: width/height of the original, sha256 of the PNG,
  channel mean/std of the normalised pixels for validation)
- `classes.json` (source and known class set), `skipped.csv` (every skipped file and why).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from hdkd.config import Params
from hdkd.data import MANIFEST_COLUMNS, DataError
from hdkd.data.sources import Record, Source, load_source
from hdkd.files import atomic_dir, sha256_file

_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class BadImage(Exception):
    """A file that cannot be turned into an RGB image; the message is the reason."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    16/32-bit and float images are min-max stretched to 0..255 (PIL's own conversion clips
    everything above 255, which turns most 12/16-bit scans white); transparent pixels are
    composited on black.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        image = Image.fromarray(np.rint(scaled).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_image(image: Path | np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image -> (uint8 (size, size, 3), original (width, height)); raises BadImage."""
    if isinstance(image, np.ndarray):
        pil = Image.fromarray(image)
        original = pil.size
    else:
        if image.stat().st_size == 0:
            raise BadImage("empty file (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                pil = Image.open(image)
                original = pil.size
                if pil.format == "JPEG":
                    pil.draft(pil.mode, (size, size))  # decode at a reduced scale: much faster
                pil.load()
                pil = ImageOps.exif_transpose(pil)
        except UnidentifiedImageError:
            raise BadImage("not an image file PIL can decode (unknown format or damaged header)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise BadImage(f"corrupt or truncated image data ({error})") from None
    rgb = to_rgb(pil)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8), original


def _where(record: Record) -> str:
    """The file as the user knows it: its full path, or the pseudo path of in-memory pixels."""
    return str(record.image) if isinstance(record.image, Path) else record.source_file


def _check_labels(source: Source) -> None:
    labels = sorted({r.label for r in source.records})
    for label in labels:
        if not label or label in (".", "..") or "/" in label or "\\" in label:
            raise DataError(f"class name {label!r} cannot be used as a folder name (from {source.root})")
    if len(labels) == 1:
        raise DataError(
            f"{source.root}: every image is of one class ({labels[0]!r}); a classifier needs at least 2: add the "
            "images of the other classes (imagefolder: one sub-folder per class)"
        )


def ingest(params: Params, out_dir: str | Path) -> pd.DataFrame:
    """Read `params.data.source`, write `out_dir` atomically, return the manifest."""
    out_dir = Path(out_dir)
    size, policy = params.data.image_size, params.data.on_bad_image
    source = load_source(params)
    _check_labels(source)
    absent = [r for r in source.records if r.image is None]
    if absent and policy == "error":
        raise DataError(
            f"{source.root}/{absent[0].source_file}: listed in the metadata but no image file with that "
            f"name (.jpg/.png/...) below {source.root} ({len(absent)} of {len(source.records)} images absent); "
            "add the images, or set data.on_bad_image: skip to ingest the rest"
        )

    rows: list[dict] = []
    skipped: list[dict] = [
        {"source_file": r.source_file, "reason": "listed in the metadata but no image file found"} for r in absent
    ]
    reasons: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:
        for record in tqdm([r for r in source.records if r.image is not None], desc="ingest", unit="img"):
            try:
                pixels, (width, height) = load_image(record.image, size)  # type: ignore[arg-type]  # filtered above
            except BadImage as error:
                where = _where(record)
                if policy == "error":
                    raise DataError(
                        f"{where}: {error}. Fix or remove the file, or set data.on_bad_image: skip "
                        "to skip unreadable images (they are then listed in skipped.csv)"
                    ) from None
                skipped.append({"source_file": record.source_file, "reason": str(error)})
                reasons.setdefault(record.label, f"{where}: {error}")
                continue
            rel = Path("images", record.label, f"{record.name}.png")
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target, format="PNG")
            flat = pixels.reshape(-1, 3).astype(np.float64)
            mean, std = flat.mean(axis=0), flat.std(axis=0)
            rows.append(
                {
                    "path": rel.as_posix(),
                    "label": record.label,
                    "group": record.group,
                    "given_split": record.given_split,
                    "width": width,
                    "height": height,
                    "source_file": record.source_file,
                    "sha256": sha256_file(target),
                    **{f"mean_{c}": m for c, m in zip("rgb", mean, strict=True)},
                    **{f"std_{c}": s for c, s in zip("rgb", std, strict=True)},
                }
            )

        listed = Counter(r.label for r in source.records)
        kept = Counter(row["label"] for row in rows)
        for label in sorted(listed):
            if not kept[label]:
                raise DataError(
                    f"class {label!r}: none of its {listed[label]} image(s) could be read "
                    f"(first: {reasons.get(label, 'absent')}); fix the files or remove the class"
                )
        manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).sort_values("path", ignore_index=True)
        manifest.to_csv(tmp / "manifest.csv", index=False, float_format="%.4f")
        pd.DataFrame(skipped, columns=["source_file", "reason"]).to_csv(tmp / "skipped.csv", index=False)
        (tmp / "classes.json").write_text(
            json.dumps({"source": params.data.source, "classes": source.classes}, indent=2) + "\n"
        )

    note = f" (listed in {out_dir / 'skipped.csv'})" if skipped else ""
    print(f"ingest: {len(manifest)} images, {len(kept)} classes, {len(skipped)} skipped{note} -> {out_dir}")
    return manifest


def read_manifest(path: str | Path) -> pd.DataFrame:
    """A manifest CSV with text columns kept as text (an empty given_split stays '', not NaN)."""
    text = {c: str for c in ("path", "label", "group", "given_split", "source_file", "sha256", "split")}
    return pd.read_csv(path, dtype=text, keep_default_na=False)


def read_classes(raw_dir: str | Path) -> list[str]:
    path = Path(raw_dir) / "classes.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (run the ingest stage first)")
    return list(json.loads(path.read_text())["classes"])
