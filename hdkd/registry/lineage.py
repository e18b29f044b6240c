"""What produced a registered version, in one place: its tags and a paragraph of its description, which
`hdkd promote` prints too.

Read from the MLflow runs that made the model and its numbers, never from the present workspace: the
training run gives the git commit, the DVC experiment (tagged by `stage_run` under `dvc exp run`), a digest
of the params it logged and the manifest of the data it was trained on; the evaluate run gives the manifest
of the data split it was tested on (what pairs two versions) and keeps the per-image predictions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from mlflow import MlflowClient

from hdkd.tracking import DVC_EXP_TAG

UNKNOWN = "not recorded"


def params_digest(params: Mapping[str, str]) -> str:
    """A short digest of the params a run logged (MLflow keeps them as strings)."""
    return hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:16]


def lineage_tags(client: MlflowClient, run_id: str, evaluate_run_id: str | None) -> dict[str, str]:
    """Version tags naming what made the model (its training run) and what tested it (the evaluate run)."""
    trained = client.get_run(run_id).data
    tags = {
        "git_commit": trained.tags.get("git_commit", UNKNOWN),
        "params_sha256": params_digest(trained.params),
        "train_manifest_sha256": trained.tags.get("data_manifest_sha256", UNKNOWN),
    }
    if dvc_exp := trained.tags.get(DVC_EXP_TAG):
        tags["dvc_experiment"] = dvc_exp
    if evaluate_run_id:
        tags["evaluate_run_id"] = evaluate_run_id
        tested = client.get_run(evaluate_run_id).data.tags.get("data_manifest_sha256")
        if tested:
            tags["data_manifest_sha256"] = tested
    return tags


def lineage_text(tags: Mapping[str, str]) -> str:
    """One paragraph from a version's tags (versions registered before these tags say "not recorded")."""
    dvc_exp = tags.get("dvc_experiment")
    where = f"DVC experiment {dvc_exp}" if dvc_exp else "outside a DVC experiment"
    return (
        f"Lineage: trained by MLflow run {tags.get('run_id', UNKNOWN)} at git commit "
        f"{tags.get('git_commit', UNKNOWN)} ({where}) with params {tags.get('params_sha256', UNKNOWN)} (digest of "
        f"the params that run logged) on training data manifest {tags.get('train_manifest_sha256', UNKNOWN)}; "
        f"tested on data manifest {tags.get('data_manifest_sha256', UNKNOWN)} by evaluate run "
        f"{tags.get('evaluate_run_id', UNKNOWN)}; checkpoint sha256 {tags.get('checkpoint_sha256', UNKNOWN)}."
    )
