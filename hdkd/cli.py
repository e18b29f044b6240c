"""`hdkd` command line: model inventory and training outside the pipeline.

Commands that use the project (params.yaml, reports/, the MLflow store) run from its root; elsewhere they
stop with one line naming the root, and create nothing."""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hdkd.errors import HDKDError

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="HDKD: distil a CNN teacher into a hybrid CNN + transformer student.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(soft_wrap=True)  # whole lines in logs and pipes; tables still fit the terminal


@app.command()
def info(classes: Annotated[int, typer.Option(help="number of classes of the heads")] = 7) -> None:
    """Parameters and MACs of every network at every preset, at the preset's image size."""
    from hdkd.models import KINDS, PRESETS, build_model
    from hdkd.models.complexity import count_macs, count_parameters

    table = Table(title=f"HDKD networks ({classes} classes)")
    for column in ("preset", "network", "image", "parameters", "MMACs"):
        table.add_column(column, justify="left" if column in ("preset", "network") else "right")
    for preset, spec in PRESETS.items():
        for kind in KINDS:
            model = build_model(kind, preset, classes)
            table.add_row(
                preset,
                f"hdkd_{kind}_{preset}",
                str(spec.img_size),
                f"{count_parameters(model):,}",
                f"{count_macs(model, spec.img_size) / 1e6:,.1f}",
            )
    console.print(table)


@app.command()
def train(
    kind: Annotated[str, typer.Option(help="teacher | student | distilled")],
    train_data: Annotated[Path, typer.Option(help="train split .npz (data/balanced/train.npz)")] = Path(
        "data/balanced/train.npz"
    ),
    val_data: Annotated[Path, typer.Option(help="validation split .npz")] = Path("data/split/val.npz"),
    out: Annotated[Path, typer.Option(help="checkpoint folder")] = Path("runs/train"),
    teacher: Annotated[Path | None, typer.Option(help="teacher best.pt, for --kind distilled")] = None,
    params: Annotated[Path, typer.Option(help="params file")] = Path("params.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set teacher.epochs=3")] = None,
    resume: Annotated[bool, typer.Option(help="continue from out/last.pt")] = False,
) -> None:
    """Train one network on prepared splits (see `python -m pipelines.split`), outside DVC."""
    from hdkd.config import load_params_with_sets
    from hdkd.training.distributed import share_cores
    from hdkd.training.train import train as train_model

    loaded = load_params_with_sets(params, set_)
    share_cores(loaded.data.num_workers)
    result = train_model(loaded, kind, train_data, val_data, out, teacher, resume)
    console.print(
        f"{kind}: best validation macro-F1 {result.best_score:.4f} at epoch {result.best_epoch + 1} "
        f"-> {result.best_path}"
    )


@app.command()
def recipe(
    name: Annotated[str, typer.Argument(help="paper: the published HDKD recipe")],
    params: Annotated[Path, typer.Option(help="params file to update")] = Path("params.yaml"),
    dvc_flags: Annotated[
        bool, typer.Option(help="print `dvc exp run -S` flags instead of writing the params file")
    ] = False,
) -> None:
    """Put the pipeline on a named recipe: writes its values into params.yaml (comments kept)."""
    from hdkd.config import load_params, save_overrides
    from hdkd.recipes import dvc_flags as as_flags
    from hdkd.recipes import recipe_overrides

    try:
        overrides = recipe_overrides(name, load_params(params))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="NAME") from None
    if dvc_flags:
        typer.echo(" ".join(shlex.quote(flag) for flag in as_flags(overrides)))
        return
    save_overrides(params, overrides)
    console.print(f"{params}: {len(overrides)} values set to the {name} recipe; `dvc repro` runs it")
    for key, value in overrides.items():
        console.print(f"  {key}: {value}", highlight=False)


@app.command()
def ablate(
    seeds: Annotated[int, typer.Option(help="seeds per configuration (students only; data and teacher are kept)")] = 3,
    configs: Annotated[
        str | None,
        typer.Option(
            help="comma-separated, of hdkd, logit_only, vanilla_kd, hdkd_t4, vanilla_kd_t4, feature_only, hard, mbconv "
            "(default: hdkd,logit_only,vanilla_kd)"
        ),
    ] = None,
    first_seed: Annotated[int, typer.Option(help="the first student seed")] = 1,
    jobs: Annotated[int | None, typer.Option(help="experiments at once (default: one per core)")] = None,
    params: Annotated[Path, typer.Option(help="params file")] = Path("params.yaml"),
    report: Annotated[
        str | None,
        typer.Option(
            help="write the report of batch REPORT (e.g. abl-1a2b3c), already run, from its MLflow runs; queues nothing"
        ),
    ] = None,
) -> None:
    """Seeds x distillation settings as queued DVC experiments; writes reports/ablation.md with intervals."""
    from hdkd.config import load_params
    from hdkd.evaluation.ablation import DEFAULT_CONFIGS
    from hdkd.evaluation.ablation import ablate as run_ablation
    from hdkd.evaluation.ablation import report as batch_report

    if report is not None:
        batch_report(load_params(params), report, log=console.print)
        return
    chosen = [name.strip() for name in configs.split(",") if name.strip()] if configs else list(DEFAULT_CONFIGS)
    run_ablation(load_params(params), chosen, seeds, first_seed, jobs, log=console.print)


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="registered model, e.g. hdkd-student")],
    version: Annotated[int, typer.Argument(help="the version to make champion")],
    force: Annotated[
        bool, typer.Option(help="promote even if it is worse than the champion or predicts other classes")
    ] = False,
    params: Annotated[Path, typer.Option(help="params file (for the tracking URI)")] = Path("params.yaml"),
) -> None:
    """Give VERSION of NAME the alias `champion`, after pairing it with the current champion on the same test images."""
    from hdkd.config import load_params
    from hdkd.registry.promote import promote as promote_version

    result = promote_version(load_params(params), name, version, force)
    table = Table(title=f"{name}: version {version} (challenger) against the champion", box=None)
    for column in ("", "challenger", "champion"):
        table.add_column(column, overflow="fold")
    for row in result["rows"]:
        table.add_row(*row)
    console.print(table)
    for paragraph in (result["lineage"], result.get("paired")):
        if paragraph:
            typer.echo(paragraph)
    console.print(result["message"])


@app.command("team-mlflow")
def team_mlflow(
    team: Annotated[Path, typer.Argument(help="folder with team.yaml (roles) and passwords/<user> (chmod 600)")],
    backend_store_uri: Annotated[
        str,
        typer.Option(envvar="MLFLOW_BACKEND_STORE_URI", help="runs, registry and users, e.g. postgresql+psycopg://..."),
    ],
    artifacts_destination: Annotated[
        str,
        typer.Option(
            envvar="MLFLOW_ARTIFACTS_DESTINATION", help="where the server stores artifacts (s3://..., a folder)"
        ),
    ],
    host: Annotated[
        str, typer.Option(help="address to bind; another than 127.0.0.1 needs --allowed-hosts")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
    allowed_hosts: Annotated[
        str | None, typer.Option(help="MLflow's Host-header allow-list, e.g. mlflow.lan:5000")
    ] = None,
) -> None:
    """The team's MLflow server with MLflow's basic-auth app: users and roles from TEAM, Ctrl-C stops it."""
    from hdkd.servers import stop_on_sigterm
    from hdkd.servers import team_mlflow as start

    stop_on_sigterm()
    with start(team, backend_store_uri, artifacts_destination, host, port, allowed_hosts) as running:
        console.print(f"MLflow with basic auth: {running.uri} (users in its database)")
        for line in running.users:
            console.print(f"  {line}")
        with contextlib.suppress(KeyboardInterrupt):
            running.process.wait()


@app.command()
def summary(reports: Annotated[Path, typer.Option(help="reports folder")] = Path("reports")) -> None:
    """What the last pipeline run produced: comparison table, reports, MLflow and registry."""
    from hdkd.layout import run_from_root_hint

    if not reports.is_dir():
        raise HDKDError(f"{reports}: no reports folder here; {run_from_root_hint()}, or pass --reports")

    from hdkd.evaluation.report import (
        ReportError,
        comparison,
        comparison_sentence,
        markdown_table,
        model_reports,
        outcome_lines,
        rich_table,
    )

    try:
        reports_by_model = model_reports(reports)
    except ReportError:
        reports_by_model = {}
    if reports_by_model:
        title = "Test split (touched once, by the evaluate stage)"
        if console.is_terminal:
            console.print(rich_table(reports_by_model, title))
        else:  # piped or logged: a Markdown table at full width, never cut to 80 columns
            typer.echo(f"{title}\n\n{markdown_table(reports_by_model)}\n")
        typer.echo(comparison_sentence(comparison(reports)))
    for line in outcome_lines(reports):
        console.print(line, highlight=False)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (searched recursively)")],
    model: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS or models:/NAME/VERSION, a best.pt checkpoint, or models/compiled")
    ] = "models:/hdkd-student@champion",
    backend: Annotated[str, typer.Option(help="auto | torch | onnx | onnx_int8 | tensorrt")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="one JSON object per image on stdout")] = False,
    params: Annotated[Path, typer.Option(help="params file (for the MLflow tracking URI)")] = Path("params.yaml"),
) -> None:
    """Classify images: the class and its probabilities per image. Unreadable files are reported by name and
    skipped; the exit status is 1 if any failed. `auto` picks the fastest compiled artifact that runs here."""
    import json
    import os
    import sys

    from hdkd.deploy.predict import IMAGE_EXTENSIONS, Predictor, predict_files

    errors = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the terminal width
    # Check the inputs before loading a model: that takes seconds, a typo should not.
    if missing := [str(path) for path in paths if not path.exists()]:
        for path in missing:
            errors.print(f"[red]error:[/red] {escape(path)}: no such file or folder", highlight=False)
        raise typer.Exit(1)
    if model.startswith("models:/"):
        from hdkd.config import Params, load_params
        from hdkd.tracking import require_store, tracking_uri, use_store

        # Runs and registry both at MLFLOW_TRACKING_URI, else params.yaml's store, which must exist.
        uri = tracking_uri(Params() if os.environ.get("MLFLOW_TRACKING_URI") else load_params(params))
        require_store(uri)
        use_store(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stdout/stderr to our lines
    predictor = Predictor.load(model, backend)
    shown = model if predictor.source == model else f"{model} ({predictor.source})"
    errors.print(f"model {shown}, backend {predictor.backend}", highlight=False)
    for reason in predictor.passed_over:
        errors.print(f"passed over {escape(reason)}", highlight=False)
    # A table for a person at a terminal; whole paths, tab-separated, when the output goes to a file or pipe.
    tsv = not json_output and not sys.stdout.isatty()
    table = Table(title=f"Predictions ({predictor.backend})")
    columns = ("image", "class", "p", *predictor.classes)
    for column in columns:
        table.add_column(column, justify="left" if column in ("image", "class") else "right", overflow="fold")
    if tsv:
        typer.echo("\t".join(columns))
    done = failed = 0
    for item in predict_files(predictor, paths):
        if item.result is None:
            failed += 1
            if json_output:
                typer.echo(json.dumps({"path": str(item.path), "error": str(item.error)}))
            errors.print(f"[red]error:[/red] {escape(str(item.error))}", highlight=False)
            continue
        done += 1
        cells = (
            str(item.path),
            item.result["class"],
            f"{item.result['probability']:.3f}",
            *(f"{p:.3f}" for p in item.result["probabilities"].values()),
        )
        if json_output:
            typer.echo(json.dumps({"path": str(item.path), **item.result}))
        elif tsv:
            typer.echo("\t".join(cells))
        else:
            table.add_row(*cells)
    if not json_output and not tsv and done:
        console.print(table)
    if not done and not failed:
        errors.print(f"[red]error:[/red] no image files ({' '.join(sorted(IMAGE_EXTENSIONS))}) found", highlight=False)
    errors.print(
        f"{done} image{'' if done == 1 else 's'} classified with {predictor.backend} ({shown}); {failed} failed"
    )
    if failed or not done:
        raise typer.Exit(1)


def main() -> None:
    """Console entry: user errors end with one line on stderr and exit status 1."""
    try:
        app()
    except HDKDError as error:
        # One line whatever the terminal width (Rich wraps at 80 columns when stderr is a pipe), and the
        # message as written: a path like `scans[v2]` is not Rich markup.
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise SystemExit(1) from None


@app.command()
def tune(
    workers: Annotated[int | None, typer.Option(help="worker processes here (default: tune.workers)")] = None,
    join: Annotated[
        bool, typer.Option(help="only add workers to the study `hdkd tune` prepared (e.g. on another machine)")
    ] = False,
    first_worker: Annotated[
        int | None, typer.Option(help="with --join: number of the first worker here (seeds are seed + number)")
    ] = None,
    params: Annotated[Path, typer.Option(help="params file")] = Path("params.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set tune.n_trials=20")] = None,
) -> None:
    """Optuna studies of both students alike: queue trials up to tune.n_trials each, run workers, report."""
    from hdkd.config import load_params_with_sets
    from hdkd.tune.space import TUNED_KINDS
    from hdkd.tune.stage import tune_stage
    from hdkd.tune.storage import study_name
    from hdkd.tune.worker import run_workers

    loaded = load_params_with_sets(params, set_)
    if not loaded.tune.enabled:
        typer.echo(
            f"error: tuning is disabled (tune.enabled: false in {params}); set it to true there, or add "
            "--set tune.enabled=true for this sweep",
            err=True,
        )
        raise typer.Exit(1)
    if not join:
        tune_stage(loaded, workers=workers)
        return
    if first_worker is None:
        raise typer.BadParameter(
            "give this machine's workers their own numbers, e.g. --first-worker 2 when the first machine runs 2",
            param_hint="--first-worker",
        )
    count = workers or loaded.tune.workers
    ran = run_workers(loaded, count, first_worker=first_worker)
    names = " and ".join(repr(study_name(loaded, kind)) for kind in TUNED_KINDS)
    console.print(f"tune: {ran} trial(s) run by {count} worker(s) joined to {names}")
