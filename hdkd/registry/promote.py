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
from hdkd.tracking import refusals_explained, require_store, setup_tracking, tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
# What a person compares before promoting: the tags `register` puts on every version.
CURRENT_USER = "/api/2.0/mlflow/users/current"  # MLflow's basic-auth app: who this request authenticated as
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


def promoter_identity(uri: str) -> str:
    """Who promotes: the user an MLflow server with the basic-auth app authenticated (its `users/current`),
    else, on a store that asks no one (a local file, a server without auth), the local account's name."""
    if uri.startswith(("http://", "https://")):
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        with refusals_explained(uri, "say who it is", "an account on the server"):
            response = http_request(get_default_host_creds(uri), CURRENT_USER, "GET", max_retries=0)
            if response.status_code != 404:  # 404: no auth app on that server
                return verify_rest_response(response, CURRENT_USER).json()["user"]["username"]
    return getpass.getuser()


def promote_permission(name: str) -> str:
    return f"EDIT permission on registered model {name!r}, which maintainers hold (MANAGE)"


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
    who = promoter_identity(uri)
    with refusals_explained(uri, f"move @{CHAMPION} of {name}", promote_permission(name), who):
        if champion is not None:  # recorded on the version, so the same permission as the alias
            result["paired"] = check_against_champion(params, client, challenger, champion, force)
        client.set_registered_model_alias(name, CHAMPION, str(version))
        client.set_model_version_tag(name, str(version), "promoted_by", who)
        client.set_model_version_tag(name, str(version), "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
        if champion is not None:
            client.set_model_version_tag(name, str(version), "previous_champion", str(champion.version))
    result.update(promoted=True, message=f"{name} version {version} is now @champion")
    return result
