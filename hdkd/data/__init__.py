"""Data layer: sources -> ingest -> validate -> split -> balance, plus the training-side loaders.

Stage modules are imported on use (GX and torch are slow to import); this package only holds
what every stage shares.
"""

from __future__ import annotations

from hdkd.errors import HDKDError

SPLITS = ("train", "val", "test")

# The manifest written by ingest: these columns, in this order (stats are of the normalised image).
MANIFEST_COLUMNS = (
    "path",
    "label",
    "group",
    "given_split",
    "width",
    "height",
    "source_file",
    "sha256",
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
)


class DataError(HDKDError, ValueError):
    """Bad input data. The message names the file, class or key at fault and what to do."""
