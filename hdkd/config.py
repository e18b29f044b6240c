"""Typed view of `params.yaml`: the single source of every knob.

Unknown keys are refused and every value is checked, so a typo stops the run at once with
the dotted key and what it accepts, instead of silently training with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hdkd.errors import HDKDError
from hdkd.files import atomic_path
from hdkd.layout import run_from_root_hint

DEFAULT_PARAMS = Path("params.yaml")

SourceName = Literal["synthetic", "imagefolder", "ham10000", "brain_tumor_mri", "medmnist"]


class ConfigError(HDKDError, ValueError):
    """A params file or override that does not describe a valid run."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Strict):
    source: SourceName = "synthetic"
    path: str | None = None
    image_size: int = Field(32, ge=16, le=1024)
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    on_bad_image: Literal["error", "skip"] = "error"
    num_workers: int = Field(0, ge=0)
    synthetic_images: int = Field(700, ge=50)
    min_per_class: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _path_for_real_sources(self) -> DataParams:
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        return self


class BalanceParams(_Strict):
    enabled: bool = True
    targets: Literal["auto"] | dict[str, int] = "auto"
    k_neighbors: int = Field(5, ge=1)


class ModelParams(_Strict):
    preset: Literal["paper", "small", "tiny"] = "tiny"
    block: Literal["mbcsa", "mbconv"] = "mbcsa"


class TrainParams(_Strict):
    epochs: int = Field(10, ge=1)  # the most epochs a run trains; `patience` may end it sooner
    # Early stopping: end the run once validation macro-F1 has not improved for this many epochs (the best
    # checkpoint is kept either way); None: always train `epochs`.
    patience: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=1)
    opt: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = Field(5e-5, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    sched: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(2e-5, ge=0.0)
    min_lr: float = Field(2e-5, ge=0.0)
    bf16: bool = False
    seed: int | None = None  # None: the top-level seed; set per network by `hdkd ablate` (data stay the same)

    def converged(self, epoch: int, best_epoch: int) -> bool:
        """Whether early stopping ends a run after 0-based `epoch`, its best validation score so far at
        `best_epoch`: `patience` epochs have passed without a better one."""
        return self.patience is not None and epoch - best_epoch >= self.patience

    def stops_after(self, epoch: int, best_epoch: int) -> bool:
        """Whether a run ends after `epoch`: it converged, or it was the last of `epochs`."""
        return epoch + 1 >= self.epochs or self.converged(epoch, best_epoch)

    def hit_max(self, best_epoch: int) -> bool:
        """Whether a run with its best at `best_epoch` trained all `epochs` without converging: it may still
        have been improving when it stopped."""
        return not self.converged(self.epochs - 1, best_epoch)


class DistillParams(TrainParams):
    # hdkd: the HDKD student (distillation token and head, DeiT-style logit term, feature term);
    # vanilla_kd: Hinton's KD on the plain student network (no token, no feature term), the standard reference.
    method: Literal["hdkd", "vanilla_kd"] = "hdkd"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    kind: Literal["soft", "hard"] = "soft"
    # HDKD's soft KD term divides its summed KL by batch x classes (DeiT's and the paper's `per_logit`), 1/C of
    # Hinton's KL per image (`per_image`, which vanilla_kd always uses).
    kl_scale: Literal["per_logit", "per_image"] = "per_logit"
    lambda_feat: float = Field(10.0, ge=0.0)
    beta: float = 1.0
    stages: list[Literal[1, 2, 3]] = [1, 2, 3]  # pydantic copies mutable defaults per instance
    # The frozen teacher's precision: auto = bf16 where it is native (CUDA, or a CPU with AVX512-BF16 or AMX),
    # fp32 elsewhere (emulated bf16 is ~13x slower); see hdkd.models.fuse.prepare_teacher.
    teacher_dtype: Literal["auto", "fp32", "bf16"] = "auto"


class FloatRange(_Strict):
    """A float searched between `low` and `high`, log-uniformly with `log: true`."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"need 0 < low < high for a log range, low < high otherwise (got {self.low}, {self.high})")
        return self


class Choice(_Strict):
    """One of `choices`, each a value of the distill key (the stages as lists: `[[1, 2, 3], [2, 3], [3]]`)."""

    choices: list[bool | int | float | str | list[int]] = Field(min_length=1)


UNTUNABLE = frozenset({"epochs", "patience", "method"})  # a trial always trains `tune.epochs` of one method


class TuneParams(_Strict):
    """The Optuna studies of both students. `space` maps distill keys to a range or choices."""

    enabled: bool = False
    storage: str = "sqlite:///optuna.db"  # an RDB URL; PostgreSQL for workers on several machines
    study_name: str = "hdkd"
    n_trials: int = Field(8, ge=1)  # the study's total, over every rerun and every worker
    timeout: float | None = Field(None, gt=0)  # seconds after which a worker starts no new trial
    epochs: int = Field(3, ge=1)
    workers: int = Field(1, ge=1)
    pruner: Literal["median", "hyperband", "none"] = "median"
    sampler_startup_trials: int = Field(4, ge=0)  # random trials before TPE models the space
    pruner_startup_trials: int = Field(2, ge=0)  # complete trials before the median pruner compares
    pruner_warmup_epochs: int = Field(1, ge=0)  # epochs every trial runs before the median pruner may stop it
    space: dict[str, FloatRange | Choice] = Field(default_factory=dict)

    def shared_space(self) -> dict[str, FloatRange | Choice]:
        """What the plain student searches: the keys of `space` its section has too (lr, weight_decay, ...),
        with the same ranges as HDKD, which searches all of `space`."""
        return {key: spec for key, spec in self.space.items() if key in TrainParams.model_fields}

    @model_validator(mode="after")
    def _space_fits_distill(self) -> TuneParams:
        tunable = sorted(set(DistillParams.model_fields) - UNTUNABLE)
        for key, spec in self.space.items():
            if key not in tunable:
                raise ValueError(f"space.{key}: not a distill key that can be tuned (one of {', '.join(tunable)})")
            if isinstance(spec, FloatRange) and DistillParams.model_fields[key].annotation is not float:
                raise ValueError(f"space.{key}: distill.{key} is not a float; search it with `choices`")
            # Both ends of a range and every choice must be valid distill values, so no trial can fail on them.
            for value in (spec.low, spec.high) if isinstance(spec, FloatRange) else spec.choices:
                try:
                    DistillParams.model_validate({key: value})
                except ValidationError as error:
                    reason = error.errors()[0]["msg"]
                    raise ValueError(f"space.{key}: {value!r} is not a valid distill.{key} ({reason})") from None
        return self


class CompileParams(_Strict):
    # `aoti` (an AOTInductor C++ build, about a minute even for the tiny preset) is opt-in.
    targets: list[Literal["onnx", "onnx_int8", "torch_export", "aoti", "tensorrt"]] = [
        "onnx",
        "onnx_int8",
        "torch_export",
        "tensorrt",
    ]
    max_batch: int = Field(64, ge=2)  # exports trace a batch of 2 to keep the batch axis dynamic
    parity_max_abs_diff: float = Field(1e-3, gt=0)
    parity_min_agreement: float = Field(1.0, gt=0, le=1)
    parity_max_abs_diff_fp16: float = Field(5e-2, gt=0)
    parity_min_agreement_fp16: float = Field(0.99, gt=0, le=1)
    latency_repeats: int = Field(30, ge=3)
    int8_calibration_images: int = Field(64, ge=1)  # from the training split, never test
    int8_min_agreement: float = Field(0.99, gt=0, le=1)  # top-1 agreement with fp32 on the validation split
    int8_max_macro_f1_drop: float = Field(0.01, ge=0, le=1)  # validation macro-F1 may fall at most this much
    # Accuracy control: convolutions the gate may see left in float, most sensitive first (0: all-int8 or nothing).
    int8_max_float_share: float = Field(0.5, ge=0, le=1)


class DistributedParams(_Strict):
    nproc: int = Field(1, ge=1)


class AblationParams(_Strict):
    """Labels `hdkd ablate` sets on each queued experiment: they tag its MLflow runs and name its row."""

    batch: str | None = None
    config: str | None = None


class MlflowParams(_Strict):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "hdkd"


class Params(_Strict):
    seed: int = 42
    data: DataParams = DataParams()
    balance: BalanceParams = BalanceParams()
    model: ModelParams = ModelParams()
    teacher: TrainParams = TrainParams(opt="adam", lr=1e-3, weight_decay=0.0, sched="none")
    student: TrainParams = TrainParams()
    distill: DistillParams = DistillParams()
    tune: TuneParams = TuneParams()
    compile: CompileParams = CompileParams()
    distributed: DistributedParams = DistributedParams()
    mlflow: MlflowParams = MlflowParams()
    ablation: AblationParams = AblationParams()


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source} is not valid:"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see params.yaml for the known keys)")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read `params.yaml`, apply dotted-key overrides (`{"data.source": "medmnist"}`), validate."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; {run_from_root_hint()}, or pass the file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        where = getattr(error, "problem_mark", None)  # where PyYAML stopped; None for an undecodable file
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason = getattr(error, "problem", None) or error
        raise ConfigError(
            f"{path}: not valid YAML{at} ({reason}); it must be UTF-8 text of `section:` blocks indented with spaces"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return params_from_dict(raw, source=str(path))


def load_params_with_sets(path: str | Path, sets: list[str] | None) -> Params:
    """`load_params` with command-line `KEY=VALUE` overrides (`--set distill.epochs=5`; values read as YAML)."""
    overrides = {}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: use KEY=VALUE, e.g. --set distill.epochs=5")
        overrides[key] = yaml.safe_load(value)
    return load_params(path, overrides)


def with_section(params: Params, section: str, values: dict[str, Any]) -> Params:
    """`params` with `values` merged into one section (`distill`, `student`, ...), validated like params.yaml."""
    current = getattr(params, section)
    try:
        updated = type(current).model_validate({**current.model_dump(), **values})
    except ValidationError as error:
        item = error.errors()[0]
        where = ".".join(map(str, item["loc"]))
        raise ConfigError(f"{section}.{where}: {item['msg']} (got {item.get('input')!r})") from None
    return params.model_copy(update={section: updated})


def save_overrides(path: str | Path, overrides: dict[str, Any]) -> Params:
    """Validate dotted-key overrides, then write them into the params file keeping its comments
    (what `dvc exp run -S` does), so DVC sees exactly the values a run used."""
    from ruamel.yaml import YAML

    params = load_params(path, overrides)
    yaml_rt = YAML()
    # ruamel writes None as nothing at all (`path:`); keep the `null` the file was written with.
    yaml_rt.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    path = Path(path)
    tree = yaml_rt.load(path.read_text())
    for dotted, value in overrides.items():
        _set_dotted(tree, dotted, value)
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        yaml_rt.dump(tree, handle)
    return params
