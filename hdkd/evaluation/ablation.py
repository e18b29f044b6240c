"""`hdkd ablate`: seeds x distillation settings as queued DVC experiments, and their table.

Each (configuration, seed) is one `dvc exp run --queue evaluate -S ...` experiment, run by DVC's own queue
(`dvc queue start`). The students get the seed (`student.seed`, `distill.seed`); the data and the teacher
keep theirs and are brought up to date once, in the workspace, before the experiments start from it, so
they are not retrained (except the MBConv teacher of the `mbconv` configuration, once). The plain student
of a seed, the baseline of every comparison, is trained by that seed's first experiment; the others get
it from DVC's run cache.

The results come back through MLflow: each experiment's evaluate run is tagged `ablation.batch`,
`ablation.config` and `ablation.seed`, and holds the per-image test predictions. For each configuration
the report gives the mean and standard deviation over seeds of test accuracy and macro-F1, and the
paired bootstrap interval of its macro-F1 difference to the plain student, pooled over seeds: test images
(each with all its seeds) and seeds (each with its plain student) are both resampled, so the interval holds
the seed-to-seed variation of training as well as the test sample's (`stats.paired_difference_ci`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hdkd.config import Params, TrainParams
from hdkd.errors import HDKDError
from hdkd.evaluation.dvc_queue import dvc, flag, run_queue, stage_lock_file
from hdkd.evaluation.stats import Interval, accuracy, macro_f1_over, paired_difference_ci
from hdkd.files import atomic_path, write_json
from hdkd.layout import REPO, Layout

# The configurations of the HDKD ablation, as params overrides on top of params.yaml's distill section.
CONFIGS: dict[str, dict[str, Any]] = {
    "hdkd": {},  # logits + features, as params.yaml says
    "logit_only": {"distill.lambda_feat": 0.0},
    # Hinton's KD on the plain student network, alpha and temperature as params.yaml says: the standard reference.
    "vanilla_kd": {"distill.method": "vanilla_kd"},
    # Hypothesis: tau 1 passes on too little of the teacher's dark knowledge (Hinton et al. use 2-20).
    "hdkd_t4": {"distill.temperature": 4.0},
    "vanilla_kd_t4": {"distill.method": "vanilla_kd", "distill.temperature": 4.0},
    "feature_only": {"distill.alpha": 0.0},  # the distillation head learns nothing: predicts with the class head
    "hard": {"distill.kind": "hard"},
    "mbconv": {"model.block": "mbconv"},  # teacher and students with MBConv (squeeze-excitation) blocks
}
# What `hdkd ablate` and the Prefect deployment run unless told: does HDKD beat the plain student, what do its
# features add, and how does it compare with standard KD. The others answer narrower questions on request.
DEFAULT_CONFIGS = ("hdkd", "logit_only", "vanilla_kd")
LABELS = {
    "plain": "Plain student (no KD)",
    "hdkd": "HDKD (logits + features)",
    "logit_only": "Logit distillation only (lambda_feat 0)",
    "vanilla_kd": "Vanilla KD (Hinton), plain student network",
    "hdkd_t4": "HDKD, temperature 4",
    "vanilla_kd_t4": "Vanilla KD, temperature 4",
    "feature_only": "Feature distillation only (alpha 0)",
    "hard": "HDKD, hard logit distillation",
    "mbconv": "HDKD with MBConv blocks",
}
BASELINE = "hdkd"  # the plain student (MBCSA) of each seed comes from this configuration's experiment


class AblationError(HDKDError, RuntimeError):
    """The ablation could not be queued, run or collected."""


@dataclass(frozen=True)
class Experiment:
    config: str
    seed: int
    name: str


def plan(configs: Sequence[str], seeds: int, first_seed: int, batch: str) -> list[Experiment]:
    """The experiments in queue order: the baseline of every seed first (each trains the plain student of its
    seed, which the seed's other experiments then take from DVC's run cache), then `mbconv` (it trains the
    MBConv teacher, shared by its seeds), then the other configurations."""
    if unknown := [c for c in configs if c not in CONFIGS]:
        raise AblationError(f"unknown configuration(s) {unknown}: use some of {', '.join(CONFIGS)}")
    if seeds < 1:
        raise AblationError("--seeds must be at least 1")
    wanted = list(dict.fromkeys([BASELINE, *configs]))
    wanted.sort(key=lambda config: (config != BASELINE, config != "mbconv"))  # stable: the given order otherwise
    return [
        Experiment(config, seed, f"{batch}-{config}-s{seed}".replace("_", "-"))
        for config in wanted
        for seed in range(first_seed, first_seed + seeds)
    ]


def overrides(experiment: Experiment, batch: str, tracking_uri: str) -> dict[str, Any]:
    return {
        **CONFIGS[experiment.config],
        "student.seed": experiment.seed,
        "distill.seed": experiment.seed,
        "ablation.batch": batch,
        "ablation.config": experiment.config,
        # The configurations are compared at params.yaml's settings: tuning each seed and configuration anew
        # would add a noisy search to every row and multiply the cost (tune first, then write what it chose).
        "tune.enabled": False,
        # Queued experiments run in temporary copies of the repository: a relative sqlite path would
        # give each its own store.
        "mlflow.tracking_uri": tracking_uri,
    }


def _absolute_uri(uri: str, root: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((root / uri.removeprefix(prefix)).resolve())
    return uri


def queue(experiments: Sequence[Experiment], batch: str, tracking_uri: str, root: Path) -> None:
    for experiment in experiments:
        args = ["exp", "run", "--queue", "evaluate", "-n", experiment.name]
        for key, value in overrides(experiment, batch, tracking_uri).items():
            args += ["-S", flag(key, value)]
        dvc(args, root)


def _predictions(client: Any, run_id: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    path = client.download_artifacts(run_id, f"reports/plots/confusion/{kind}.csv")
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    return np.array([row["actual"] for row in rows]), np.array([row["predicted"] for row in rows])


def _best_epoch(client: Any, run_id: str, kind: str) -> int:
    """The 0-based epoch of the checkpoint the evaluate run scored (its best on validation)."""
    path = client.download_artifacts(run_id, f"reports/evaluate/{kind}.json")
    return int(json.loads(Path(path).read_text())["checkpoint"]["epoch"])


def collect(params: Params, tracking_uri: str, batch: str) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (config, seed): the test labels, the plain and distilled students' predictions (as class names) and
    their best epochs."""
    from mlflow import MlflowClient

    from hdkd.tracking import use_store

    use_store(tracking_uri)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one bar per downloaded CSV otherwise
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    if experiment is None:
        raise AblationError(f"no MLflow experiment {params.mlflow.experiment!r} in {tracking_uri}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`ablation.batch` = '{batch}' and tags.stage = 'evaluate'",
    )
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for run in runs:
        key = (run.data.tags["ablation.config"], int(run.data.tags["ablation.seed"]))
        found[key] = {}
        for kind in ("student", "distilled"):
            found[key]["labels"], found[key][kind] = _predictions(client, run.info.run_id, kind)
            found[key][f"{kind}_best_epoch"] = _best_epoch(client, run.info.run_id, kind)
    return found


def summarize(
    results: Mapping[tuple[str, int], Mapping[str, Any]], configs: Sequence[str], params: Params
) -> dict[str, Any]:
    """Mean and std over seeds per configuration, the pooled paired interval against the plain student, and
    each run's best epoch (marked when the run hit its maximum of epochs instead of converging)."""
    seeds = sorted({s for c, s in results if c == BASELINE})
    if not seeds:
        raise AblationError(f"no finished {BASELINE!r} experiment: the plain-student baseline is missing")
    labels = results[(BASELINE, seeds[0])]["labels"]
    classes = sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}

    def encode(values: np.ndarray) -> np.ndarray:
        return np.array([index.get(v, -1) for v in values])

    y = encode(labels)
    f1 = macro_f1_over(len(classes))
    plain = np.stack([encode(results[(BASELINE, s)]["student"]) for s in seeds], axis=1)
    rows: dict[str, Any] = {"plain": _row("plain", y, plain, None, f1, params.seed)}
    rows["plain"] |= _epochs([results[(BASELINE, s)]["student_best_epoch"] for s in seeds], params.student)
    for config in dict.fromkeys([BASELINE, *configs]):
        done = [s for s in seeds if (config, s) in results]
        if not done:
            rows[config] = {"label": LABELS[config], "seeds": 0}
            continue
        for s in done:
            if not np.array_equal(results[(config, s)]["labels"], labels):
                raise AblationError(f"{config} seed {s}: another test split than the baseline's; rerun the ablation")
        distilled = np.stack([encode(results[(config, s)]["distilled"]) for s in done], axis=1)
        baseline = np.stack([encode(results[(BASELINE, s)]["student"]) for s in done], axis=1)
        rows[config] = _row(config, y, distilled, baseline, f1, params.seed)
        rows[config] |= _epochs([results[(config, s)]["distilled_best_epoch"] for s in done], params.distill)
    return {"test_images": len(y), "seeds": seeds, "classes": classes, "rows": rows}


def _epochs(best_epochs: Sequence[int], section: TrainParams) -> dict[str, Any]:
    """The 1-based best epoch of each seed's run, and which of them ran into `epochs` without converging."""
    return {
        "best_epoch_per_seed": [epoch + 1 for epoch in best_epochs],
        "hit_max_per_seed": [section.hit_max(epoch) for epoch in best_epochs],
        "max_epochs": section.epochs,
        "patience": section.patience,
    }


def _row(
    config: str, y: np.ndarray, predicted: np.ndarray, baseline: np.ndarray | None, f1: Any, seed: int
) -> dict[str, Any]:
    per_seed_f1 = [f1(y, predicted[:, i]) for i in range(predicted.shape[1])]
    per_seed_acc = [accuracy(y, predicted[:, i]) for i in range(predicted.shape[1])]
    row: dict[str, Any] = {
        "label": LABELS[config],
        "seeds": predicted.shape[1],
        "macro_f1_mean": float(np.mean(per_seed_f1)),
        "macro_f1_std": float(np.std(per_seed_f1, ddof=1)) if len(per_seed_f1) > 1 else 0.0,
        "accuracy_mean": float(np.mean(per_seed_acc)),
        "accuracy_std": float(np.std(per_seed_acc, ddof=1)) if len(per_seed_acc) > 1 else 0.0,
        "macro_f1_per_seed": per_seed_f1,
    }
    if baseline is not None:
        row["vs_plain_macro_f1"] = paired_difference_ci(y, predicted, baseline, f1, seed).as_dict()
    return row


def markdown(summary: Mapping[str, Any]) -> str:
    table = []
    for row in summary["rows"].values():
        if not row["seeds"]:
            table.append({"Configuration": row["label"], "Seeds": 0})
            continue
        diff = row.get("vs_plain_macro_f1")
        verdict = "baseline" if diff is None else Interval.from_dict(diff).verdict()
        best = zip(row["best_epoch_per_seed"], row["hit_max_per_seed"], strict=True)
        table.append(
            {
                "Configuration": row["label"],
                "Seeds": row["seeds"],
                "Macro-F1 mean ± std": f"{row['macro_f1_mean']:.3f} ± {row['macro_f1_std']:.3f}",
                "Accuracy mean ± std": f"{row['accuracy_mean']:.3f} ± {row['accuracy_std']:.3f}",
                "Δ macro-F1 vs plain [95% CI]": ""
                if diff is None
                else (f"{diff['value']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"),
                "Verdict": verdict,
                "Best epoch per seed": ", ".join(f"{epoch}{'*' if hit else ''}" for epoch, hit in best),
            }
        )
    caps = {
        f"{row['max_epochs']} epochs, patience {row['patience']}" for row in summary["rows"].values() if row["seeds"]
    }
    return "\n".join(
        [
            "# HDKD ablation",
            "",
            f"{summary['test_images']} test images, seeds {summary['seeds']}. Each configuration is compared with "
            "the plain student of the same seed, every network at params.yaml's settings (no tuning); the interval "
            "is a paired bootstrap of the macro-F1 difference, pooled over seeds (1000 resamples of both the test "
            "images, each with all its seeds, and the seeds, each with its plain student). A verdict is "
            "'better' or 'worse' only when the interval excludes zero.",
            "",
            pd.DataFrame(table).fillna("").to_markdown(index=False, disable_numparse=True),
            "",
            f"Best epoch: of the checkpoint kept (best validation macro-F1; at most {' / '.join(sorted(caps))}). "
            "`*`: the run trained its maximum of epochs without converging, so it may still have been improving.",
            "",
        ]
    )


def ablate(
    params: Params,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    seeds: int = 3,
    first_seed: int = 1,
    jobs: int | None = None,
    layout: Layout = REPO,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Queue, run and summarise the ablation; writes `reports/ablation.md` and `reports/ablation.json`.

    `jobs` experiments run at once (default: one per core). A training stage takes one core when its
    DataLoader workers take the others (`share_cores`), so on 2 cores two experiments at once keep both busy.
    """

    from hdkd.tracking import setup_tracking, use_store

    root = layout.root.resolve()
    batch = f"abl-{uuid.uuid4().hex[:6]}"
    tracking_uri = _absolute_uri(setup_tracking(params), root)  # creates the experiment here, not in a temp copy
    # MLflow exports the URI to MLFLOW_TRACKING_URI, which the queue's workers inherit and which wins over
    # params: make it the absolute one.
    use_store(tracking_uri)
    experiments = plan(configs, seeds, first_seed, batch)
    began = time.perf_counter()
    # The teacher and the data first, here: the experiments then start from them.
    log("ablation: data and teacher (dvc repro train_teacher; nothing runs when they are up to date)")
    dvc(["repro", "train_teacher"], root)
    stage_lock_file(root, log)
    queue(experiments, batch, tracking_uri, root)
    log(f"ablation {batch}: {len(experiments)} experiment(s) queued ({', '.join(e.name for e in experiments)})")
    failed = run_queue(root, jobs or len(os.sched_getaffinity(0)), log, batch)
    if failed:
        log(f"ablation {batch}: {len(failed)} experiment(s) failed (see `dvc queue logs NAME`):\n" + "\n".join(failed))
    summary = summarize(collect(params, tracking_uri, batch), configs, params)
    summary |= {"batch": batch, "wall_seconds": round(time.perf_counter() - began, 1), "failed": failed}
    _write_report(summary, layout, log)
    log(f"ablation {batch}: {summary['wall_seconds']:.0f} s; reports/ablation.md, `dvc exp show` lists the runs")
    return summary


def report(params: Params, batch: str, layout: Layout = REPO, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The report of a batch already run, from its MLflow runs: after `hdkd ablate` was stopped while DVC's queue
    finished its experiments, or to score an old batch with this version's statistics. Writes what `ablate`
    writes, the configurations being those the batch's runs are tagged with; its wall time and failed
    experiments are not in MLflow (None)."""
    from hdkd.tracking import require_store, tracking_uri

    uri = _absolute_uri(tracking_uri(params), layout.root.resolve())
    require_store(uri)  # only reads: a missing SQLite store is an error, not a new empty one
    results = collect(params, uri, batch)
    if not results:
        raise AblationError(f"no finished experiment of ablation batch {batch!r} in MLflow (see `dvc exp show`)")
    tagged = {config for config, _ in results}
    configs = [config for config in CONFIGS if config in tagged]
    summary = summarize(results, configs, params) | {"batch": batch, "wall_seconds": None, "failed": None}
    _write_report(summary, layout, log)
    return summary


def _write_report(summary: dict[str, Any], layout: Layout, log: Callable[[str], None]) -> None:
    write_json(layout.reports / "ablation.json", summary)
    with atomic_path(layout.reports / "ablation.md") as tmp:
        tmp.write_text(markdown(summary))
    log(markdown(summary))
