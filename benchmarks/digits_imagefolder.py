"""scikit-learn's handwritten digits (1 797 images, 10 classes, shipped with scikit-learn: no download) as an
image folder the pipeline can ingest: `<out>/<digit>/<index>.png`, each 8x8 image upscaled to `--size` pixels.

Real images that are small enough for two CPU cores, for the evidence runs (README, "Does HDKD help?"):

    .venv/bin/python benchmarks/digits_imagefolder.py /tmp/digits
    .venv/bin/dvc exp run -S data.source=imagefolder -S data.path=/tmp/digits   # or: hdkd ablate, same params
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def export_digits(out: Path, size: int) -> int:
    """Write the digits as grey PNGs, upscaled bicubically (as ingest resizes) to `size`; returns the count."""
    digits = load_digits()
    # The pixels are counts 0..16 of set bits in 4x4 blocks of the original scans: stretch them to 0..255.
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, digits.target, strict=True)):
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").resize((size, size), Image.Resampling.BICUBIC).save(folder / f"{index}.png")
    return len(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (one subfolder per digit)")
    parser.add_argument("--size", type=int, default=32, help="pixels per side (the tiny preset's 32 by default)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty: give a new folder")
    count = export_digits(args.out, args.size)
    print(f"{count} digit images ({args.size}x{args.size}) in {args.out}/0 ... {args.out}/9")


if __name__ == "__main__":
    main()
