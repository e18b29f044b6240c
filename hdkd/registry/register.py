"""MLflow model registry: register trained networks, alias new versions, promote a champion.

A version is added only for a model that differs from every version of its name: another checkpoint
(sha256; the same weights give the same bytes) or, for `hdkd-student`, other compiled artifacts; otherwise
the stage says "unchanged: version N kept" and moves no alias. Every new version gets the alias `challenger`; `champion`
is given automatically only to the first version of a model. After that a person promotes, in the MLflow
UI (set the alias `champion` on a version) or with `hdkd promote NAME VERSION`; either way the version's
description already holds its lineage (`lineage.py`) and its paired verdict against the champion
(`paired.py`). Compile, predict and serve load `models:/<name>@champion`.

`hdkd-student` is registered as the serving pyfunc (image bytes or arrays in, class and
probabilities out) logged into the distill run, with the compiled artifacts of models/compiled
uploaded to that run and described in tags on the version. The teacher and the baseline are
registered as the PyTorch models their training runs logged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from hdkd.config import Params
from hdkd.data.arrays import load_split
from hdkd.deploy.artifacts import ARTIFACT_INDEX, read_artifact_index
from hdkd.deploy.pyfunc import log_compiled_artifacts, log_student_pyfunc
from hdkd.evaluation.report import ReportError, comparison, comparison_sentence, model_reports
from hdkd.files import sha256_file, write_json
from hdkd.kinds import NETWORKS, label
from hdkd.layout import REPO, Layout
from hdkd.registry.lineage import lineage_tags, lineage_text
from hdkd.registry.paired import NO_CHAMPION, paired_check, record_paired
from hdkd.registry.promote import CHALLENGER, CHAMPION, champion_of
from hdkd.tracking import setup_tracking


def has_alias(client: MlflowClient, name: str, alias: str) -> bool:
    try:
        client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return False
    return True


def register_version(client: MlflowClient, name: str, model_uri: str, tags: dict[str, str]) -> dict[str, Any]:
    version = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if not has_alias(client, name, CHAMPION):
        client.set_registered_model_alias(name, CHAMPION, version.version)
    aliases = client.get_model_version(name, version.version).aliases
    return {"version": int(version.version), "aliases": sorted(aliases), "source": model_uri, "new": True}


def model_identity(kind: str, layout: Layout) -> dict[str, str]:
    """What makes two versions the same model: its checkpoint's bytes and, for the HDKD student (registered with
    its compiled artifacts), theirs. Not the training run: a stage rerun by a code change that trains the very
    same weights adds no version. Not the compiled index either: it holds latencies, which differ every run."""
    identity = {"checkpoint_sha256": sha256_file(layout.checkpoint(kind))}
    if kind == "distilled" and (compiled := compiled_dir(layout)) is not None:
        built = {name: entry["sha256"] for name, entry in read_artifact_index(compiled)["artifacts"].items()}
        identity["compiled_sha256"] = hashlib.sha256(json.dumps(built, sort_keys=True).encode()).hexdigest()
    return identity


def same_model(client: MlflowClient, name: str, identity: dict[str, str]) -> ModelVersion | None:
    """The newest version of `name` that holds this very model, if any."""
    versions = client.search_model_versions(f"name = '{name}'")
    same = [v for v in versions if all(v.tags.get(key) == value for key, value in identity.items())]
    return max(same, key=lambda version: int(version.version), default=None)


def compiled_dir(layout: Layout) -> Path | None:
    """models/compiled when the compile stage built it (it is optional for registering)."""
    folder = layout.models / "compiled"
    return folder if (folder / ARTIFACT_INDEX).is_file() else None


def log_serving_model(run_id: str, layout: Layout) -> str:
    """Log the HDKD student's serving pyfunc (with the compiled artifacts) into its training run."""
    with mlflow.start_run(run_id=run_id):
        info = log_student_pyfunc(layout.checkpoint("distilled"), compiled_dir(layout), name="serving")
    return str(info.model_uri)


def evaluation_tags(kind: str, reports_dir: Path) -> dict[str, str]:
    """The test metrics with their 95% intervals, and for HDKD the verdict against the plain student:
    shown on the version page of the MLflow UI, where a person decides what to promote."""
    try:
        report = model_reports(reports_dir).get(kind)
    except ReportError:
        return {}
    if report is None:
        return {}
    tags = {
        f"test_{key}": f"{ci['value']:.4f} [{ci['low']:.4f}, {ci['high']:.4f}]"
        for key, ci in report["intervals"].items()
    }
    tags["test_images"] = str(report["test_images"])
    if "evaluate_run_id" in report:
        tags["evaluate_run_id"] = report["evaluate_run_id"]
    result = comparison(reports_dir)
    if kind == "distilled" and result:
        diff = result["macro_f1_difference"]
        tags["vs_plain_student_macro_f1_diff"] = f"{diff['value']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
        tags["vs_plain_student_mcnemar_p"] = f"{result['mcnemar']['p_value']:.3g}"
        tags["verdict"] = comparison_sentence(result)
    return tags


MODEL_DESCRIPTIONS = {
    "teacher": "The HDKD teacher: a CNN (stem + MBCSA stages) distilled into hdkd-student.",
    "student": "The plain student: the hybrid CNN + DFLT network trained without distillation, HDKD's baseline.",
    "distilled": (
        "The HDKD student: the hybrid CNN + DFLT network distilled from hdkd-teacher through logits and stage "
        "features. Registered as the serving pyfunc (image bytes in, class and probabilities out) with its "
        "compiled artifacts. Promote a version by giving it the alias `champion` (pencil icon beside Aliases)."
    ),
}


def version_description(kind: str, tags: dict[str, str]) -> str:
    """The version page's text: what it is and what it scored, then its lineage. The paired paragraph against
    the champion follows (`paired.record_paired`)."""
    text = f"{label(kind)} ({tags['preset']} preset, {tags['block']} blocks), classes "
    text += f"{', '.join(json.loads(tags['classes']))}. Validation macro-F1 {tags['val_macro_f1']}"
    if "test_macro_f1" in tags:
        text += f"; test macro-F1 {tags['test_macro_f1']} and accuracy {tags['test_accuracy']} (95% CI) on "
        text += f"{tags['test_images']} test images"
    return f"{text}.\n\n{lineage_text(tags)}"


def describe(
    client: MlflowClient, name: str, version: str, tags: dict[str, str], champion: ModelVersion | None, seed: int
) -> None:
    """Write the new version's description, and the paired check against the champion (tags `paired.*`), so
    that the version page says it before anyone promotes, in the UI or with `hdkd promote`."""
    description = version_description(tags["kind"], tags)
    if champion is None:
        client.update_model_version(name, version, description=f"{description}\n\n{NO_CHAMPION}")
        return
    client.update_model_version(name, version, description=description)
    check = paired_check(client, client.get_model_version(name, version), champion, seed)
    record_paired(client, name, version, check)
    print(f"{name} version {version}: {check.sentence()}")


def register(params: Params, layout: Layout = REPO) -> dict[str, Any]:
    """Register the teacher, the HDKD student and the plain student from their training runs."""
    setup_tracking(params)
    client = MlflowClient()
    registered: dict[str, Any] = {}
    manifest = layout.split / "manifest.csv"
    test_data = layout.split / "test.npz"
    classes = list(load_split(test_data).classes) if test_data.is_file() else []
    for kind, network in NETWORKS.items():
        name = network.registered_name
        logged = json.loads(layout.logged_model(kind).read_text())
        identity = model_identity(kind, layout)
        if (kept := same_model(client, name, identity)) is not None:
            registered[name] = {
                "version": int(kept.version),
                "aliases": sorted(kept.aliases),
                "source": kept.source,
                "new": False,
            }
            print(f"{name} unchanged: version {kept.version} kept")
            continue
        model_uri = log_serving_model(logged["run_id"], layout) if kind == "distilled" else logged["model_uri"]
        metrics = json.loads(layout.stage_summary(kind).read_text())
        tested = evaluation_tags(kind, layout.reports)
        tags = {
            "kind": kind,
            "preset": params.model.preset,
            "block": params.model.block,
            **identity,
            "run_id": logged["run_id"],
            "val_macro_f1": f"{metrics['val_macro_f1']:.4f}",
            "classes": json.dumps(list(classes)),
            # the split at hand, unless the evaluate run that tested the model names its own (lineage_tags)
            **({"data_manifest_sha256": sha256_file(manifest)} if manifest.is_file() else {}),
            **tested,
            **lineage_tags(client, logged["run_id"], tested.get("evaluate_run_id")),
        }
        champion = champion_of(client, name)
        registered[name] = register_version(client, name, model_uri, tags)  # creates the model the first time
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=MODEL_DESCRIPTIONS[kind])
        version = str(registered[name]["version"])
        describe(client, name, version, tags, champion, params.seed)
        if kind == "distilled" and (compiled := compiled_dir(layout)) is not None:
            log_compiled_artifacts(compiled, logged["run_id"], name, registered[name]["version"])
        print(f"registered {name} version {version} ({', '.join(registered[name]['aliases'])})")
    write_json(layout.reports / "registry.json", registered)
    return registered
