"""Validate stage: a Great Expectations suite over the ingest manifest.

The suite checks the columns, the labels against the known class set, unique image hashes
(an exact duplicate in two splits is leakage), original sizes, channel statistics (no blank
images) and a minimum image count per class. Any failure stops the stage with GX's own result
summary. Outputs: the Data Docs site under `<report_dir>/data_docs/` and
`<report_dir>/stages/validate.json`. GX runs in an ephemeral context: nothing is written to
the repository besides those reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from hdkd.config import Params
from hdkd.data import MANIFEST_COLUMNS, DataError
from hdkd.data.ingest import read_classes, read_manifest
from hdkd.files import atomic_dir, write_json

SUITE = "raw_manifest"
OFFLINE_PAGE = "validation.html"  # readable without internet, unlike GX's CDN-styled Data Docs
SPLIT_VALUES = ["", "train", "val", "test"]
MAX_SIDE = 100_000  # larger "originals" are a corrupt header, not a scan
MIN_SIDE = 8
BLANK_STD = 1.0  # an image whose every channel varies less than this is blank


def build_suite(classes: list[str], min_per_class: int) -> Any:
    """The expectation suite; GX is imported here because `import great_expectations` takes seconds."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    suite = gx.ExpectationSuite(name=SUITE)
    expectations: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in MANIFEST_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeUnique(column="path"),
        gxe.ExpectColumnValuesToBeUnique(column="sha256", description="no exact duplicate images"),
        gxe.ExpectColumnValueLengthsToEqual(column="sha256", value=64),
        gxe.ExpectColumnValuesToBeInSet(column="given_split", value_set=SPLIT_VALUES),
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=side, min_value=MIN_SIDE, max_value=MAX_SIDE)
        for side in ("width", "height")
    ]
    for channel in "rgb":
        expectations += [
            gxe.ExpectColumnValuesToBeBetween(column=f"mean_{channel}", min_value=0, max_value=255),
            gxe.ExpectColumnValuesToBeBetween(column=f"std_{channel}", min_value=0, max_value=127.5),
        ]
    flat = (Column("std_r") < BLANK_STD) & (Column("std_g") < BLANK_STD) & (Column("std_b") < BLANK_STD)
    expectations.append(
        gxe.ExpectTableRowCountToEqual(value=0, row_condition=flat, description="no blank (single-colour) images")
    )
    # GX has no "value counts between": one row count per class, restricted to that class.
    expectations += [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=min_per_class,
            row_condition=Column("label") == name,
            description=f"at least {min_per_class} images of class {name!r} (data.min_per_class)",
        )
        for name in classes
    ]
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def run_suite(manifest: pd.DataFrame, classes: list[str], min_per_class: int, docs_dir: Path) -> Any:
    """Validate `manifest`, build the Data Docs site into `docs_dir`, return GX's suite result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX's metric progress bars ignore TQDM_DISABLE and would flood the stage log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.add_data_docs_site(
        "hdkd",
        {
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
        },
    )
    batch = (
        context.data_sources.add_pandas("raw")
        .add_dataframe_asset("manifest")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(build_suite(classes, min_per_class))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=SUITE, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=SUITE,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["hdkd"])],
            result_format={"result_format": "SUMMARY"},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": manifest})
    return next(iter(result.run_results.values()))


def summarize_failures(result: Any) -> str:
    """GX's result for each failed expectation: type, kwargs and what it observed."""
    lines = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        observed = {
            k: item.result[k]
            for k in ("observed_value", "unexpected_count", "partial_unexpected_list")
            if k in item.result
        }
        if item.exception_info and item.exception_info.get("raised_exception"):
            observed["exception"] = item.exception_info.get("exception_message")
        note = f" [{config.description}]" if config.description else ""
        lines.append(
            f"  {config.type}{note}: kwargs={json.dumps(kwargs, default=str)} "
            f"result={json.dumps(observed, default=str)}"
        )
    return "\n".join(lines)


def offline_page(result: Any, summary: dict[str, Any]) -> str:
    """The validation result as one self-contained HTML page: GX's own Data Docs load their list, styles and
    status icons from CDNs, so offline the index is blank and the status column empty."""
    rows = []
    for item in result.results:
        config = item.expectation_config
        observed = {k: item.result[k] for k in ("observed_value", "unexpected_count") if k in item.result}
        rows.append(
            {
                "status": "passed" if item.success else "FAILED",
                "expectation": config.type,
                "arguments": json.dumps({k: v for k, v in config.kwargs.items() if k != "batch_id"}, default=str),
                "observed": json.dumps(observed, default=str),
            }
        )
    table = pd.DataFrame(rows).to_html(index=False, border=0, classes="results")
    verdict = "passed" if summary["success"] else "FAILED"
    counts = ", ".join(f"{c}: {n}" for c, n in summary["per_class"].items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Data validation: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table.results {{ border-collapse: collapse; }}
table.results td, table.results th {{ padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: left; }}
</style></head><body>
<h1>Data validation {verdict}</h1>
<p>Great Expectations suite <code>{SUITE}</code> on the ingest manifest: {summary["images"]} images,
{summary["classes"]} classes ({counts}); {summary["expectations"] - summary["failed_expectations"]} of
{summary["expectations"]} expectations passed.</p>
{table}
<p>Great Expectations' own Data Docs are in this folder too (they need internet for their styles).</p>
</body></html>
"""


def _duplicates(manifest: pd.DataFrame) -> str:
    """Name the files behind duplicate hashes: GX only reports the hash values."""
    if "sha256" not in manifest or "path" not in manifest:
        return ""
    dup = manifest[manifest["sha256"].duplicated(keep=False)]
    groups = [" = ".join(g["path"]) for _, g in dup.groupby("sha256", sort=False)]
    return "".join(f"\n  identical files: {g}" for g in groups[:10])


def validate(params: Params, raw_dir: str | Path, report_dir: str | Path) -> dict[str, Any]:
    """Run the suite on `raw_dir/manifest.csv`; raise DataError on any failed expectation."""
    raw_dir, report_dir = Path(raw_dir), Path(report_dir)
    manifest_path = raw_dir / "manifest.csv"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: not found (run the ingest stage first)")
    manifest = read_manifest(manifest_path)
    classes = read_classes(raw_dir)
    with atomic_dir(report_dir / "data_docs") as docs:
        result = run_suite(manifest, classes, params.data.min_per_class, docs)
        stats = result.statistics
        counts = manifest["label"].value_counts() if "label" in manifest else pd.Series(dtype=int)
        summary = {
            "success": bool(result.success),
            "images": len(manifest),
            "classes": len(classes),
            "per_class": {c: int(counts.get(c, 0)) for c in classes},
            "expectations": int(stats["evaluated_expectations"]),
            "failed_expectations": int(stats["unsuccessful_expectations"]),
        }
        (docs / OFFLINE_PAGE).write_text(offline_page(result, summary))

    write_json(report_dir / "stages" / "validate.json", summary)
    docs_index = report_dir / "data_docs" / OFFLINE_PAGE
    if not result.success:
        raise DataError(
            f"{manifest_path}: {summary['failed_expectations']} of {summary['expectations']} expectations "
            f"failed (Great Expectations suite '{SUITE}', report {docs_index}):\n{summarize_failures(result)}"
            + _duplicates(manifest)
        )
    print(
        f"validate: {summary['images']} images, {summary['classes']} classes, "
        f"{summary['expectations']} expectations passed -> {docs_index}"
    )
    return summary
