"""Where each stage reads and writes, relative to the repository root (DVC's working tree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path = Path(".")

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def split(self) -> Path:
        return self.root / "data" / "split"

    @property
    def balanced(self) -> Path:
        return self.root / "data" / "balanced"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def metrics(self) -> Path:
        """Only the headline metrics (a file per network), for `dvc metrics show` and `dvc exp show`."""
        return self.reports / "metrics"

    def stage_summary(self, stage: str) -> Path:
        """What a stage measured besides the headline (validation, training, tuning, compile numbers)."""
        return self.reports / "stages" / f"{stage}.json"

    def tuned_params(self, kind: str) -> Path:
        """The tune stage's best settings for a student, applied by its stage (`hdkd.tune.best.apply_best_params`)."""
        return self.reports / "tune" / f"{kind}.json"

    def checkpoint(self, kind: str) -> Path:
        return self.models / kind / "best.pt"

    def unfinished(self, kind: str) -> Path:
        """Where a training stage keeps `last.pt` and `best.pt` while it runs. Outside its DVC output, which
        DVC deletes before a rerun, so a killed stage resumes; and the output itself needs no `persist`,
        which would keep DVC's run cache from restoring a stage it ran before with the same inputs."""
        return self.models / ".unfinished" / kind

    def logged_model(self, kind: str) -> Path:
        """The MLflow run and logged-model ids of a trained network, read by `register`."""
        return self.models / kind / "mlflow.json"


REPO = Layout()


def project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above `start` (default: the working directory) that holds `dvc.yaml` and
    `params.yaml`, or None outside a checkout."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            return folder
    return None


def run_from_root_hint() -> str:
    """What to do when a command that needs the project runs elsewhere: the root to `cd` to, if there is one."""
    root = project_root()
    if root is not None and root != Path.cwd().resolve():
        return f"run it from the project root: cd {root}"
    return "run it from the project root (the folder with dvc.yaml and params.yaml)"
