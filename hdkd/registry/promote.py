"""Promotion: moving the `champion` alias to a registered version, after showing it against the champion.

Before the alias moves, the version is paired with the champion on the same test images (`paired.py`):
the verdict goes into its tags and description, and a version that is worse (the 95% interval of the
macro-F1 difference below zero) is refused unless forced. Its lineage (`lineage.py`) is shown too.

Light on purpose (MLflow's client and scipy/sklearn for the paired bootstrap, no torch).
The same alias can be set in the MLflow UI (a version's page, the pencil icon beside "Aliases"); the
paired paragraph that `register` wrote is on that page.
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import Any

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from hdkd.config import Params
from hdkd.errors import HDKDError
from hdkd.registry.lineage import lineage_text
from hdkd.registry.paired import paired_check, record_paired
from hdkd.tracking import require_store, setup_tracking, tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
# What a person compares before promoting: the tags `register` puts on every version.
COMPARED = ("test_macro_f1", "test_accuracy", "val_macro_f1", "test_images", "preset", "data_manifest_sha256")


class RegistryError(HDKDError, RuntimeError):
    """A model or version that the registry does not hold, or a promotion that would mislead."""


def champion_of(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def comparison_table(challenger: ModelVersion, champion: ModelVersion | None) -> list[tuple[str, str, str]]:
    """(what, challenger, champion) rows from the versions' tags."""
    rows = [("version", str(challenger.version), str(champion.version) if champion else "-")]
    for key in (*COMPARED, "classes"):
        rows.append((key, challenger.tags.get(key, "-"), champion.tags.get(key, "-") if champion else "-"))
    return rows


def _classes(version: ModelVersion) -> list[str] | None:
    return json.loads(version.tags["classes"]) if "classes" in version.tags else None


def check_against_champion(
    params: Params, client: MlflowClient, challenger: ModelVersion, champion: ModelVersion, force: bool
) -> str:
    """Pair the challenger with the champion on the same test images, write the verdict on the challenger,
    and refuse one that is worse unless `force`; returns the paired sentence."""
    check = paired_check(client, challenger, champion, params.seed)
    record_paired(client, challenger.name, str(challenger.version), check)
    if check.verdict == "worse" and not force:
        raise RegistryError(
            f"{challenger.name} version {challenger.version} is worse than the champion: {check.sentence()} "
            "Pass --force to promote it anyway"
        )
    return check.sentence()


def promote(params: Params, name: str, version: int, force: bool = False) -> dict[str, Any]:
    """Give `version` of `name` the alias `champion`; returns what was compared and done.

    Refuses, unless `force`, a version whose classes differ from the champion's (everything downstream
    loads `models:/NAME@champion` and would start answering with other labels) and a version that is
    worse than the champion on the same test images (`check_against_champion`).
    """
    require_store(tracking_uri(params))
    uri = setup_tracking(params)
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        known = sorted(model.name for model in client.search_registered_models())
        raise RegistryError(
            f"there is no registered model {name!r} in {uri} (registered: {', '.join(known) or 'none'})"
        ) from None
    try:
        challenger = client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise RegistryError(
            f"model {name!r} has no version {version} (versions: {', '.join(map(str, versions))}); a new version "
            "comes from a pipeline run that changes the model, e.g. `dvc exp run -S distill.epochs=30`"
        ) from None
    champion = champion_of(client, name)
    result: dict[str, Any] = {
        "rows": comparison_table(challenger, champion),
        "lineage": lineage_text(challenger.tags),
        "promoted": False,
    }
    if champion is not None and str(champion.version) == str(challenger.version):
        result["message"] = f"{name} version {version} is already @champion; nothing changed"
        return result
    theirs, ours = (_classes(champion) if champion else None), _classes(challenger)
    if champion is not None and theirs is not None and ours is not None and theirs != ours and not force:
        raise RegistryError(
            f"{name} version {version} predicts classes {ours}, the champion (version {champion.version}) "
            f"{theirs}: promoting it changes what every client of models:/{name}@champion gets; pass --force "
            "if that is intended"
        )
    if champion is not None:
        result["paired"] = check_against_champion(params, client, challenger, champion, force)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "promoted_by", getpass.getuser())
    client.set_model_version_tag(name, str(version), "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
    if champion is not None:
        client.set_model_version_tag(name, str(version), "previous_champion", str(champion.version))
    result.update(promoted=True, message=f"{name} version {version} is now @champion")
    return result
