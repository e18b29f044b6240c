"""`hdkd` command line: model inventory and training outside the pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="HDKD: distil a CNN teacher into a hybrid CNN + transformer student.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


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
    import yaml

    from hdkd.config import load_params
    from hdkd.train import train as train_model

    overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--set")
        overrides[key] = yaml.safe_load(value)
    result = train_model(load_params(params, overrides), kind, train_data, val_data, out, teacher, resume)
    console.print(
        f"{kind}: best validation macro-F1 {result.best_score:.4f} at epoch {result.best_epoch + 1} "
        f"-> {result.best_path}"
    )
