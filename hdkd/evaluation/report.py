"""The comparison of teacher, plain student and HDKD, rendered once for every place that shows it:
`reports/summary.md` (evaluate), `hdkd summary` (terminal) and the Prefect run's markdown artifact.

The numbers come from the evaluate stage's reports (`reports/evaluate/<kind>.json` and
`reports/evaluate/comparison.json`); tables are rendered by pandas (Markdown) and rich (terminal).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from hdkd.errors import HDKDError
from hdkd.evaluation.stats import Interval
from hdkd.kinds import KINDS, label
from hdkd.layout import Layout
from hdkd.tune.best import tuning_lines

COMPARISON = "comparison.json"  # beside the per-model reports in reports/evaluate/


class ReportError(HDKDError, FileNotFoundError):
    """Reports asked for before the evaluate stage wrote them."""


def _rank(name: str) -> tuple[int, str]:
    return (KINDS.index(name) if name in KINDS else len(KINDS), name)


def model_reports(reports_dir: str | Path) -> dict[str, dict[str, Any]]:
    """`reports/evaluate/<model>.json` by model, teacher, plain student and HDKD first."""
    folder = Path(reports_dir) / "evaluate"
    files = sorted((p for p in folder.glob("*.json") if p.name != COMPARISON), key=lambda p: _rank(p.stem))
    if not files:
        raise ReportError(f"{folder}: no evaluation reports; run the evaluate stage first (dvc repro evaluate)")
    return {file.stem: json.loads(file.read_text()) for file in files}


def comparison(reports_dir: str | Path) -> dict[str, Any] | None:
    path = Path(reports_dir) / "evaluate" / COMPARISON
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(interval: Mapping[str, float] | None) -> str:
    return "n/a" if not interval else f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(reports: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per network: size, speed and the test metrics with their 95% intervals, as display strings."""
    rows = []
    for name, report in reports.items():
        metrics, complexity, intervals = report["metrics"], report["complexity"], report.get("intervals", {})
        rows.append(
            {
                "Model": label(name),
                "Params": f"{complexity['parameters']:,}",
                "MMACs": f"{complexity['macs'] / 1e6:,.1f}",
                "ms/img": f"{complexity['latency_ms']:.2f}",
                "Accuracy [95% CI]": _ci(intervals.get("accuracy")) if intervals else _score(metrics["accuracy"]),
                "Macro-F1 [95% CI]": _ci(intervals.get("macro_f1")) if intervals else _score(metrics["macro_f1"]),
                "AUC": _score(metrics.get("roc_auc_ovr")),
                "ECE": _score(metrics.get("ece")),
            }
        )
    return pd.DataFrame(rows)


def markdown_table(reports: Mapping[str, Mapping[str, Any]]) -> str:
    # disable_numparse: the cells are already formatted strings ("0.950" must not become 0.95)
    return table(reports).to_markdown(index=False, colalign=("left", *["right"] * 7), disable_numparse=True)


def rich_table(reports: Mapping[str, Mapping[str, Any]], title: str) -> Any:
    from rich import box
    from rich.table import Table

    frame = table(reports)
    # No grid and short headers: the table fits the 80 columns Rich assumes when output is piped.
    out = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for i, column in enumerate(frame.columns):
        out.add_column(column, justify="left" if i == 0 else "right", no_wrap=i > 0)
    for row in frame.itertuples(index=False):
        out.add_row(*row)
    return out


def comparison_sentence(result: Mapping[str, Any] | None) -> str:
    """Whether HDKD beat the plain student, as the interval says; never more than it says."""
    if not result:
        return "HDKD and the plain student were not both evaluated, so they are not compared here."
    diff, test = result["macro_f1_difference"], result["mcnemar"]
    images = result["test_images"]
    detail = (
        f"macro-F1 difference HDKD - plain student {diff['value']:+.3f}, "
        f"95% CI [{diff['low']:+.3f}, {diff['high']:+.3f}] "
        f"(paired bootstrap over {images} test images, {int(diff['resamples'])} resamples); "
        f"McNemar's exact test on correctness p = {test['p_value']:.3g} "
        f"({test['only_a_correct']} image{'' if test['only_a_correct'] == 1 else 's'} only HDKD gets right, "
        f"{test['only_b_correct']} only the plain student)"
    )
    if result.get("chance_level"):
        return (
            f"HDKD and the plain student are both at chance level (balanced accuracy at most 1/classes) on {images} "
            f"test images, so this says nothing about distillation yet; {detail}."
        )
    sentence = {
        "better": f"HDKD beat the plain student: {detail}.",
        "worse": f"HDKD did worse than the plain student: {detail}.",
        "cannot tell": f"HDKD and the plain student cannot be told apart on {images} test images: the interval "
        f"includes zero; {detail}.",
    }[Interval.from_dict(diff).verdict()]
    if (gap := result.get("teacher_gap")) is not None:
        sentence += f" {gap}"
    if (agreement := result.get("teacher_agreement")) is not None:
        sentence += (
            f" HDKD predicts the teacher's class for {agreement['distilled']:.1%} of the test images, "
            f"the plain student for {agreement['student']:.1%}."
        )
    return sentence


def teacher_gap_sentence(macro_f1: Mapping[str, float]) -> str | None:
    """How much of the teacher's lead over the plain student HDKD recovered (point estimates)."""
    if not {"teacher", "student", "distilled"} <= macro_f1.keys():
        return None
    gap = macro_f1["teacher"] - macro_f1["student"]
    if gap <= 0:
        return (
            f"The teacher does not lead the plain student here (macro-F1 {gap:+.3f}), so there is no lead to pass on."
        )
    closed = (macro_f1["distilled"] - macro_f1["student"]) / gap
    return f"The teacher leads the plain student by {gap:.3f} macro-F1; HDKD closed {closed:.0%} of that gap."


def notes(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Caveats every reader must see: how the students were treated."""
    treatment = next(iter(reports.values())).get("treatment")
    return [treatment] if treatment else []


def summary_markdown(reports_dir: str | Path, image_size: int, learning: bool) -> str:
    """`reports/summary.md`: the table, the verdict, per-class F1 and the figures."""
    reports = model_reports(reports_dir)
    first = next(iter(reports.values()))
    classes, complexity = first["classes"], first["complexity"]
    per_class = pd.DataFrame(
        {label(name): [f"{r['metrics']['per_class'][c]['f1']:.3f}" for c in classes] for name, r in reports.items()},
        index=pd.Index(classes, name="Class"),
    )
    lines = [
        "# Teacher, plain student and HDKD on the test split",
        "",
        f"{first['test_images']} test images, never used for training or model selection; "
        f"{len(classes)} classes: {', '.join(classes)}. Intervals: 95% percentile bootstrap over test images.",
        "",
        markdown_table(reports),
        "",
        comparison_sentence(comparison(reports_dir)),
        "",
        *[f"- {note}" for note in notes(reports)],
        "",
        f"MACs of one {image_size}x{image_size} image. Latency: median of {complexity['latency_repeats']} "
        f"batch-1 forward passes on this machine's CPU ({complexity.get('cpu', 'unknown CPU')}, torch threads: "
        f"{complexity['threads']}); compare the ratios, not the absolute values across machines.",
        "",
        "## Per-class F1",
        "",
        per_class.to_markdown(disable_numparse=True),
        "",
        "## Figures",
        "",
    ]
    for name, report in reports.items():
        title = label(name)
        lines += [
            f"### {title}",
            "",
            f"![{title}: confusion matrix](figures/confusion_{name}.png) "
            f"![{title}: ROC](figures/roc_{name}.png) "
            f"![{title}: reliability](figures/reliability_{name}.png)",
            "",
        ]
        lines += [
            f"![Grad-CAM, actual {cam['actual']}, predicted {cam['predicted']}]({cam['file']})"
            for cam in report["gradcam"]
        ]
        if report["gradcam"]:
            lines += ["", "Grad-CAM (picture | overlay) on the last stage-3 block, for the predicted class.", ""]
    if learning:
        lines += ["### Learning curves", "", "![learning curves](figures/learning_curves.png)", ""]
    lines += [
        "## Files",
        "",
        "- `metrics/<network>.json`: the headline metrics with their intervals (`dvc metrics show`)",
        "- `evaluate/<model>.json`: per-class precision/recall/F1, confusion matrix, per-class ROC-AUC, complexity",
        "- `evaluate/comparison.json`: HDKD against the plain student (paired bootstrap, McNemar)",
        "- `plots/confusion`, `plots/roc`, `plots/reliability`: plot data (`dvc plots show`); PNGs in `figures/`",
        "- `gradcam/`: Grad-CAM overlays",
        "",
    ]
    return "\n".join(lines)


def run_markdown(reports_dir: str | Path, logged_runs: Mapping[str, str] | None = None) -> str:
    """The Prefect run's artifact: the table, the verdict and what was registered."""
    reports_dir = Path(reports_dir)
    lines = ["# HDKD run", ""]
    try:
        reports = model_reports(reports_dir)
    except ReportError as missing:
        lines.append(str(missing))
    else:
        lines += [markdown_table(reports), "", comparison_sentence(comparison(reports_dir)), ""]
        lines += [f"- {note}" for note in notes(reports)]
    registry = reports_dir / "registry.json"
    if registry.is_file():
        lines += ["", "## Registered models", ""]
        for name, entry in json.loads(registry.read_text()).items():
            lines.append(f"- `models:/{name}/{entry['version']}` ({', '.join(entry['aliases'])})")
    for kind, run_id in (logged_runs or {}).items():
        lines.append(f"- {label(kind)}: MLflow run `{run_id}`")
    return "\n".join(lines)


def outcome_lines(reports: Path) -> list[str]:
    """`hdkd summary` after the table: tuning, what compile built or passed over, the registered versions, and
    where to look next."""
    lines = tuning_lines(Layout(reports.parent))
    compiled = reports / "stages" / "compile.json"
    if compiled.is_file():
        for name, entry in json.loads(compiled.read_text()).items():
            if isinstance(entry, dict) and entry.get("status") in ("skipped", "rejected"):
                lines.append(f"compile: {name} {entry['status']} ({entry['reason']})")
            elif isinstance(entry, dict) and "speedup_b1" in entry and name != "eager":
                float_convs = (
                    f", {entry['float_convs']} of {entry['convs']} convolutions float"
                    if entry.get("float_convs")
                    else ""
                )
                lines.append(
                    f"compile: {name} parity max |diff| {entry['max_abs_diff']:.1e}, top-1 agreement "
                    f"{entry['top1_agreement']:.1%}, batch 1 {entry['speedup_b1']:.2f}x eager{float_convs}"
                )
    registry = reports / "registry.json"
    if registry.is_file():
        for name, entry in json.loads(registry.read_text()).items():
            kept = "" if entry.get("new", True) else "; unchanged by this run"
            lines.append(f"registered: models:/{name}/{entry['version']} ({', '.join(entry['aliases'])}{kept})")
    return [
        *lines,
        f"reports: {reports}/summary.md, {reports}/metrics/, {reports}/stages/, {reports}/figures/, {reports}/gradcam/",
        "next, in a shell with the venv active (source .venv/bin/activate):",
        "  compare runs: dvc metrics show, dvc plots show, dvc exp show",
        "  MLflow UI: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db "
        "-h 127.0.0.1 -p 5000 -w 1, then http://127.0.0.1:5000/#/experiments/1/runs",
    ]
