"""The checkpoint format of `cxr train`: one folder per checkpoint, readable without Ray.

    state.pt                 everything to continue: cxrmodel.method.method_state + Progress
    best_model.pt            the network weights with the best validation metric so far
    summary.json             the metrics reported with this checkpoint
    run.json                 the run's config and training plan: the folder loads on its own
    test_predictions.npz     the final checkpoint only: the best model on the internal test split

Ray Train stores the folders (train.storage_path/<run name>/checkpoint_*); the MLflow run's
`cxr.checkpoint` tag names the final one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrmodel.method import Method, load_method_state, method_state
from orchestration.config import Config, ConfigError
from orchestration.method import build_network
from orchestration.plan import TrainingPlan

STATE_FILE = "state.pt"
BEST_MODEL_FILE = "best_model.pt"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
TEST_FILE = "test_predictions.npz"


@dataclass
class Progress:
    """Where training stands."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_metric: float = float("-inf")
    best_step: int = -1
    history: list[dict] = field(default_factory=list)  # validation metrics per evaluation


def write_checkpoint(
    directory: Path, method: Method, progress: Progress, best_state: dict | None, metrics: dict,
    config: Config, plan: TrainingPlan, test: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one checkpoint into `directory`; `test`: sample_id, probs and labels of the test split."""
    torch.save({**method_state(method), "progress": asdict(progress)}, directory / STATE_FILE)
    if best_state is not None:
        torch.save(best_state, directory / BEST_MODEL_FILE)
    (directory / SUMMARY_FILE).write_text(json.dumps(metrics, indent=1))
    (directory / RUN_FILE).write_text(json.dumps({
        "config": config.model_dump(mode="json"), "plan": plan.to_dict(),
    }, indent=1))
    if test is not None:
        np.savez(directory / TEST_FILE, **test)


def restore_checkpoint(directory: Path, method: Method, device: torch.device | str) -> tuple[Progress, dict | None]:
    """Load a checkpoint into `method` (built with the same config and plan); returns where training
    stood and the best weights so far."""
    state = torch.load(directory / STATE_FILE, map_location=device, weights_only=False)
    best_path = directory / BEST_MODEL_FILE
    best_state = torch.load(best_path, map_location="cpu") if best_path.exists() else None
    load_method_state(method, state)
    return Progress(**state["progress"]), best_state


def read_test_predictions(directory: Path) -> dict[str, np.ndarray]:
    """sample_id, probs and labels of the final checkpoint's test split."""
    with np.load(directory / TEST_FILE) as saved:
        return {k: saved[k] for k in ("sample_id", "probs", "labels")}


def read_run_description(checkpoint: str | Path) -> tuple[Config, TrainingPlan]:
    """The config and plan a checkpoint folder was trained with, without loading any weights."""
    directory = Path(checkpoint)
    if not (directory / RUN_FILE).exists():
        raise ConfigError(f"{directory} is not a cxr train checkpoint (no {RUN_FILE}); pass a checkpoint_* folder")
    described = json.loads((directory / RUN_FILE).read_text())
    try:
        return Config.model_validate(described["config"]), TrainingPlan(**described["plan"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{directory / RUN_FILE} was written by another version of cxr-orchestra ({exc}); "
                          "train the model again with this version") from None


def load_trained(checkpoint: str | Path) -> tuple[torch.nn.Module, Config, TrainingPlan]:
    """The best network of a checkpoint folder, in eval mode, with the config and plan it was
    trained with (the last weights when no validation ran)."""
    directory = Path(checkpoint)
    config, plan = read_run_description(directory)
    net = build_network(config, plan)
    best = directory / BEST_MODEL_FILE
    state = torch.load(best, map_location="cpu") if best.exists() else \
        torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)["model"]
    net.load_state_dict(state)
    return net.eval(), config, plan
