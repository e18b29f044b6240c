"""A version against the champion on the same test images, the check made before promoting.

Both versions' per-image predictions come from their evaluate runs (`hdkd/evaluation/predictions.py`); the
paired bootstrap interval of the macro-F1 difference (this version minus the champion), McNemar's test and
the verdict of `Interval.verdict` are written on the version (tags `paired.*` and one paragraph of its
description) by `register`, as soon as there is a champion, and again by `hdkd promote`.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from hdkd.evaluation.predictions import PREDICTIONS_PATH, UnpairedError, compare_paired, pair, read_predictions
from hdkd.evaluation.stats import Interval

PARAGRAPH = "Against the champion"  # how the description's paired paragraph starts: the one a new check replaces
TAG = "paired."
NO_CHAMPION = f"{PARAGRAPH}: there is none yet, so this version becomes it."
VERDICTS = {
    "better": "better (the interval is above zero)",
    "worse": "worse (the interval is below zero)",
    "cannot tell": "cannot tell (the interval includes zero)",
}


@dataclass(frozen=True)
class PairedCheck:
    """The outcome against one champion version: a paired `result`, or the `reason` why there is none."""

    champion: str
    result: dict[str, Any] | None = None
    reason: str | None = None

    @property
    def verdict(self) -> str:
        if self.result is None:
            return "cannot be paired"
        return Interval.from_dict(self.result["macro_f1_difference"]).verdict()

    def sentence(self) -> str:
        if self.result is None:
            return f"{PARAGRAPH} (version {self.champion}): cannot be paired, {self.reason}."
        diff, test = self.result["macro_f1_difference"], self.result["mcnemar"]
        return (
            f"{PARAGRAPH} (version {self.champion}) on the same {self.result['test_images']} test images: macro-F1 "
            f"difference (this version - champion) {diff['value']:+.4f}, 95% CI [{diff['low']:+.4f}, "
            f"{diff['high']:+.4f}] (paired bootstrap, {int(diff['resamples'])} resamples); McNemar's exact test "
            f"p = {test['p_value']:.3g} ({test['only_a_correct']} images only this version gets right, "
            f"{test['only_b_correct']} only the champion). Verdict: {VERDICTS[self.verdict]}."
        )

    def tags(self) -> dict[str, str]:
        tags = {f"{TAG}champion_version": self.champion, f"{TAG}verdict": self.verdict}
        if self.result is None:
            return {**tags, f"{TAG}reason": str(self.reason)}
        diff, accuracy = self.result["macro_f1_difference"], self.result["accuracy_difference"]
        return {
            **tags,
            f"{TAG}macro_f1_diff": f"{diff['value']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]",
            f"{TAG}accuracy_diff": f"{accuracy['value']:+.4f} [{accuracy['low']:+.4f}, {accuracy['high']:+.4f}]",
            f"{TAG}mcnemar_p": f"{self.result['mcnemar']['p_value']:.3g}",
            f"{TAG}test_images": str(self.result["test_images"]),
        }


def _same_test_split(challenger: ModelVersion, champion: ModelVersion) -> None:
    for version in (challenger, champion):
        if "data_manifest_sha256" not in version.tags:
            raise UnpairedError(f"version {version.version} does not record the data manifest it was tested on")
    ours, theirs = challenger.tags["data_manifest_sha256"], champion.tags["data_manifest_sha256"]
    if ours != theirs:
        raise UnpairedError(
            f"they were tested on other data (data manifest {ours[:12]} for version {challenger.version}, "
            f"{theirs[:12]} for version {champion.version}), so on other test images"
        )
    if challenger.tags.get("classes") != champion.tags.get("classes"):
        raise UnpairedError(
            f"they predict other classes ({challenger.tags.get('classes')} and {champion.tags.get('classes')})"
        )


def stored_predictions(client: MlflowClient, version: ModelVersion, folder: Path) -> pd.DataFrame:
    """The per-image test predictions the evaluate run of `version` kept."""
    run_id, kind = version.tags.get("evaluate_run_id"), version.tags.get("kind")
    if not run_id:
        raise UnpairedError(
            f"version {version.version} keeps no per-image test predictions (registered before the evaluate stage "
            "stored them)"
        )
    try:
        path = client.download_artifacts(run_id, f"{PREDICTIONS_PATH}/{kind}.csv", str(folder))
    except (MlflowException, OSError) as error:
        raise UnpairedError(
            f"the evaluate run {run_id} of version {version.version} holds no {PREDICTIONS_PATH}/{kind}.csv ({error})"
        ) from None
    return read_predictions(Path(path))


def paired_check(client: MlflowClient, challenger: ModelVersion, champion: ModelVersion, seed: int) -> PairedCheck:
    """`challenger` against `champion` on the test images both were evaluated on."""
    try:
        _same_test_split(challenger, champion)
        with tempfile.TemporaryDirectory() as folder:
            ours = stored_predictions(client, challenger, Path(folder) / "challenger")
            theirs = stored_predictions(client, champion, Path(folder) / "champion")
        classes = json.loads(challenger.tags["classes"])
        labels, predicted, champion_predicted = pair(ours, theirs, classes)
    except UnpairedError as error:
        return PairedCheck(str(champion.version), reason=str(error))
    result = compare_paired(labels, predicted, champion_predicted, len(classes), seed)
    return PairedCheck(str(champion.version), result=result)


def with_paragraph(description: str, paragraph: str) -> str:
    """`description` with its paired paragraph replaced by `paragraph` (or `paragraph` appended)."""
    kept = [part for part in description.split("\n\n") if part.strip() and not part.startswith(PARAGRAPH)]
    return "\n\n".join([*kept, paragraph])


def record_paired(client: MlflowClient, name: str, version: str, check: PairedCheck) -> None:
    """The check in the version's tags (those of an earlier check removed) and its description."""
    current = client.get_model_version(name, version)
    tags = check.tags()
    for key in current.tags:
        if key.startswith(TAG) and key not in tags:
            client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=with_paragraph(current.description or "", check.sentence()))
