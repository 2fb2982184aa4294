"""The one typed config of cxr-orchestra: YAML files + dotted overrides, validated once at the edge.

    cfg = load_config(["my_run.yaml"], ["method.lambda_tat=0.03", "prepare.image_size=256"])

A bad key or value raises ConfigError naming the key, the value and what is allowed, before any
Ray work starts.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from cxrcommon.errors import UserError
from cxrcommon.yaml_files import load_yaml
from cxrmodel import paper
from cxrmodel.schedules import HSchedule
from data_prep.config import PrepareConfig
from orchestration.settings.schema import SELECTION_METRICS

MAX_SHOWN_VALUE = 200  # characters of a bad value an error message repeats


class ConfigError(UserError):
    """A configuration that cannot be used; the message says which key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def check_run_name(name: str, what: str = "run name") -> str:
    """The one check of a run or sweep name, whatever flag or key sets it: it becomes a folder under
    train.storage_path, so it may not climb out of it (`..`, `/`) or hide (a leading dot). Raises
    ConfigError, a ValueError, so it also serves as the config field's validator."""
    if not re.fullmatch(RUN_NAME_PATTERN, name) or len(name) > 128:
        raise ConfigError(f"{what} {_shown(name)} is not allowed: use letters, digits, '_', '.' and '-', "
                          "starting with a letter or digit, at most 128 characters")
    return name


def imagenet_warning(config: Config) -> str | None:
    """The paper starts from ImageNet weights; nothing is downloaded here, so say how to get them."""
    if config.model.weights:
        return None
    return ("no model.weights: the network starts from random weights, the paper from ImageNet. Results are not "
            "comparable with the paper's (MLflow param model.pretrained=false). On a machine with internet, save "
            "torchvision's weights once: python -c \"import torch, torchvision; torch.save(torchvision.models."
            "densenet121(weights='IMAGENET1K_V1').state_dict(), 'densenet121.pth')\" then pass "
            "model.weights=densenet121.pth")


class HScheduleConfig(_Section):
    name: Literal["constant", "linear", "cosine", "exponential", "step"] = "linear"  # how UTE's threshold H falls
    start: float = Field(default=paper.H_START, ge=0.0, le=0.5)  # H at the first step
    end: float = Field(default=paper.H_END, ge=0.0, le=0.5)  # H at the last step
    steps: int = Field(default=4, ge=1)  # plateaus of the step schedule

    @model_validator(mode="after")
    def _check(self) -> HScheduleConfig:
        self.build()  # the schedule's own rules (end <= start, exponential end > 0)
        return self

    def build(self) -> HSchedule:
        return HSchedule(self.name, self.start, self.end, self.steps)


class MethodConfig(_Section):
    """The paper's switches (Table VI) and weights (eq. 1, 7). Defaults: the paper's method."""

    task_weighting: bool = True  # TW: α on common findings
    adversarial: Literal["task", "holistic", "none"] = "task"  # TAT, HAT, or neither
    temporal_ensemble: bool = True  # TE
    uncertainty: bool = True  # UTE's threshold H (needs TE or hard labels)
    hard_labels: bool = False  # 0/1 pseudo-labels from the ensemble enter eq. 1 (Table VI i)
    # Which unknown labels get ensemble targets: the internal-only findings' (the paper, §III-C),
    # or those of every finding some training domain labels.
    ensemble_findings: Literal["internal_only", "all_unknown"] = "internal_only"
    multi_task: bool = False  # Table III baseline: common findings scored per domain
    lambda_tat: float = Field(default=paper.LAMBDA_TAT, ge=0.0, le=1e3)  # eq. 7's weight of the adversarial loss
    lambda_ute: float = Field(default=paper.LAMBDA_UTE, ge=0.0, le=1e4)  # eq. 7's weight of the UTE loss
    # How eq. 6's squared errors are reduced: "mean" over the step batch's B x C outputs (Laine &
    # Aila's temporal ensembling, the paper's [22], whose w_max = 30 is λ_ute), or "per_sample_sum"
    # (summed over findings, averaged over the batch: ~C times the weight; before Dec 2026).
    ute_reduction: Literal["mean", "per_sample_sum"] = "mean"
    alpha: float = Field(default=paper.ALPHA_COMMON, gt=0.0, le=1e3)  # eq. 1's α_c of the common findings
    alpha_overrides: dict[str, float] = Field(default_factory=dict)  # α per finding by name, over the defaults
    gamma: float = Field(default=paper.GAMMA, gt=0.0, lt=1.0)  # eq. 4's momentum of the temporal ensemble
    h_schedule: HScheduleConfig = Field(default_factory=HScheduleConfig)

    @model_validator(mode="after")
    def _check(self) -> MethodConfig:
        if self.uncertainty and not (self.temporal_ensemble or self.hard_labels):
            raise ValueError("method.uncertainty needs method.temporal_ensemble or method.hard_labels")
        if self.multi_task and self.adversarial != "none":
            raise ValueError("method.multi_task is a baseline without adversarial training: set method.adversarial=none")
        bad = {k: v for k, v in self.alpha_overrides.items() if not 0 < v <= 1e3}
        if bad:
            raise ValueError(f"method.alpha_overrides must be > 0 and <= 1000, got {_shown(bad)}")
        return self

    @property
    def uses_ensemble(self) -> bool:
        return self.temporal_ensemble or self.hard_labels


class ModelConfig(_Section):
    weights: str | None = None  # local torchvision densenet121 or densenet121_ibn_a file
    branch_features: int = Field(default=128, ge=1)  # width of each finding's task-specific feature
    discriminator_hidden: int = Field(default=128, ge=1)  # hidden width of each domain discriminator


class TrainConfig(_Section):
    epochs: int = Field(default=paper.EPOCHS, ge=1)  # passes over the internal training split
    batch_size: int = Field(default=32, ge=1)  # per worker and step, split equally over domains
    # None: one pass over the internal dataset's training split per epoch.
    steps_per_epoch: int | None = Field(default=None, ge=1)
    domains: list[str] | None = None  # None: every prepared domain
    lr: float = Field(default=paper.LR, gt=0.0, le=1.0)  # Adam's initial learning rate
    # epochs after which Adam's LR is multiplied by lr_decay
    lr_milestones: list[int] = Field(default_factory=lambda: list(paper.LR_MILESTONES))
    lr_decay: float = Field(default=paper.LR_DECAY, gt=0.0, le=1.0)  # Adam's LR factor at each milestone
    discriminator_lr: float = Field(default=paper.DISCRIMINATOR_LR, gt=0.0, le=1.0)  # RMSprop's fixed learning rate
    val_every_steps: int = Field(default=0, ge=0)  # 0: validate at epoch ends only
    # the validation figure that picks the best checkpoint
    select_metric: Literal[SELECTION_METRICS] = SELECTION_METRICS[0]  # type: ignore[valid-type]
    eval_batch_size: int = Field(default=64, ge=1)  # images per scoring batch (validation, test)
    log_every_steps: int = Field(default=10, ge=1)  # steps between logged (and printed) losses
    workers: int = Field(default=1, ge=1)  # data-parallel Ray Train workers
    # Elastic training: after losing workers (a node), go on with as few as this many from the last
    # checkpoint instead of waiting for all `workers`. None: a fixed worker count.
    min_workers: int | None = Field(default=None, ge=1)
    # PACK fills a node first; SPREAD / STRICT_SPREAD put workers on different nodes (a lost node
    # then costs fewer workers).
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    gpu: bool = False  # one GPU per worker
    cpus_per_worker: float | None = Field(default=None, gt=0.0)  # None: 1 with GPUs, 0.5 without
    # Custom Ray resources each worker also needs, e.g. {trainer_slot: 1} to keep workers on the
    # nodes started with `ray start --resources='{"trainer_slot": 1}'`, one per node.
    worker_resources: dict[str, float] = Field(default_factory=dict)
    bf16: bool | None = None  # None: on GPUs only
    channels_last: bool | None = None  # None: on GPUs only
    compile: bool | None = None  # torch.compile the trained network; None: on GPUs only
    # "reduce-overhead" adds CUDA graphs, "max-autotune" searches kernels (minutes of compiling).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    # What torch.compile takes: the network alone, or the whole step (forward, losses, both
    # optimizer updates; the backward is AOTAutograd's compiled one either way).
    compile_scope: Literal["network", "step"] = "network"
    max_failures: int = Field(default=0, ge=0)  # worker failures Ray Train restarts from the last checkpoint
    seed: int = 0  # seeds weights, data order and augmentation
    # None: train-<date>-<time>; the same name again resumes
    run_name: Annotated[str, AfterValidator(check_run_name)] | None = None
    storage_path: str = "ray_results"  # where Ray Train keeps each run's checkpoints: a folder or s3://bucket/prefix
    test_tencrop: bool = False  # average 10 crops when testing the best model
    # Pad-and-crop: shift each training image by up to 1/16 of its side (for runs tested with TenCrop).
    random_crop: bool = False
    # Rows each domain's training rows are mixed among (feed.InternalPasses, feed.ExternalPasses).
    # Memory: rows x image bytes per domain and worker, e.g. 2,048 x 320² B = 210 MB.
    shuffle_buffer: int = Field(default=2048, ge=1)
    # Batches built ahead of the step on a background thread (0: built on the training thread).
    prefetch_batches: int = Field(default=2, ge=0)
    # At the end, Grad-CAM contact sheets of the best model's K highest-scoring internal test images
    # per finding, logged under explain/ (0: none).
    explain_top: int = Field(default=4, ge=0)
    # Log the temporal ensemble's targets and the epoch's predictions at every epoch end
    # (diagnostics/ensemble/epoch_N.npz: what `cxr diagnose` checks against a truth file).
    ensemble_history: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_workers is not None and self.min_workers > self.workers:
            raise ValueError(f"train.min_workers ({self.min_workers}) must be <= train.workers ({self.workers})")
        return self


class MlflowConfig(_Section):
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: str = "cxr-orchestra"  # the MLflow experiment runs are logged to
    # The best model as an mlflow.pytorch export: traced while the run trains, ~3 s after it on a CPU
    # (a sweep trial, which trains in its own process, traces after: ~10 s for a trial process's first
    # trial, ~3 s for its later ones of the same architecture); off for quick sweeps.
    log_model: bool = True
    # Register the logged model under this name in the Model Registry; alias `champion` moves to it
    # when its best validation metric (train.select_metric) beats the current champion's.
    register_model: str | None = None

    @model_validator(mode="after")
    def _check(self) -> MlflowConfig:
        if self.register_model and not self.log_model:
            raise ValueError("mlflow.register_model needs mlflow.log_model=true (the registry holds the logged model)")
        return self


class Config(_Section):
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'method.lambda_tat=0.03' -> ('method.lambda_tat', 0.03); values are read as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    value = load_yaml(raw, f"override {_shown(text)}") if raw.strip() else None
    return key.strip(), value


def _nested_model(model: type[BaseModel], name: str, *, through_lists: bool = False) -> type[BaseModel] | None:
    """The section model behind field `name` (Optional[...] unwrapped; list[...] too if asked)."""
    field = model.model_fields.get(name)
    annotation = getattr(field, "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if getattr(annotation, "__origin__", None) is list and not through_lists:
        return None
    inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
    return inner[0] if inner else None


def _allowed_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    for key in path:
        if isinstance(key, int):
            continue
        model = _nested_model(model, str(key), through_lists=True)
        if model is None:
            return []
    return sorted(model.model_fields)


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            lines.append(f"unknown key {key!r}; allowed here: {', '.join(allowed)}")
        else:
            lines.append(f"{key}={_shown(err.get('input'))}: {err['msg'][:MAX_SHOWN_VALUE]}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _shown(value: Any) -> str:
    """repr(value), cut to MAX_SHOWN_VALUE characters: a bad value may be huge."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else f"{text[:MAX_SHOWN_VALUE]}... ({len(text):,} characters)"


def load_config(
    files: Sequence[str | Path] = (), overrides: Sequence[str] = (), base: dict | None = None,
    updates: dict[str, Any] | None = None,
) -> Config:
    """Merge `base`, each YAML file in order, dotted overrides, then dotted `updates` (already-typed
    values, e.g. a sweep trial's); validate once."""
    tree: dict = copy.deepcopy(base or {})  # the caller's nested dicts stay as they were
    for file in files:
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        loaded = load_yaml(_read_text(path), f"config file {path}") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections at the top")
        for key, value in _flatten(loaded):
            _set_dotted(tree, key, value)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    for key, value in (updates or {}).items():
        _set_dotted(tree, key, value)
    _drop_retired(tree)
    return _validate(tree)


# Settings older versions wrote into saved configs (a sweep's best_config.yaml, resolved_config.yaml):
# those files still load, the key ignored with a note saying why.
RETIRED_KEYS = {
    "train.reproducible_order": "a worker's data order is always the same for the same train.seed now",
}


def _drop_retired(tree: dict) -> None:
    for key, why in RETIRED_KEYS.items():
        section, name = key.split(".")
        if isinstance(tree.get(section), dict) and name in tree[section]:
            del tree[section][name]
            print(f"note: {key} is no longer a setting ({why}); ignored", file=sys.stderr)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None


def _validate(tree: dict) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, Config)) from None


def with_updates(config: Config, section: str, **updates: Any) -> Config:
    """A copy of `config` with keys of one section replaced, validated again."""
    tree = config.model_dump(mode="json")
    tree[section].update(
        {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in updates.items()}
    )
    return _validate(tree)


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _OPAQUE_MAPPINGS:
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


# Mappings whose keys are data (label names, finding names), not config keys.
_OPAQUE_MAPPINGS = {"label_map", "alpha_overrides"}


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> set[str]:
    """Every dotted key of the config, sections included (e.g. 'method', 'method.h_schedule.start')."""
    keys = set()
    for name in model.model_fields:
        dotted = f"{prefix}{name}"
        keys.add(dotted)
        section = _nested_model(model, name)
        if section is not None:
            keys |= config_keys(section, dotted + ".")
    return keys


def flatten_config(config: Config) -> dict[str, Any]:
    """`section.key` -> value, for MLflow params."""
    return dict(_flatten(config.model_dump(mode="json")))
