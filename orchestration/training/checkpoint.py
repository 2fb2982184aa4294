"""The checkpoint format of `cxr train`: one folder per checkpoint, readable without Ray.

    state.pt                 the tensors to continue: cxrmodel.method.method_state
    progress.json            where training stands (Progress)
    best_model.pt            the network weights with the best validation metric so far
    summary.json             the metrics reported with this checkpoint
    run.json                 the run's config and training plan: the folder loads on its own
    test_predictions.npz     the final checkpoint only: the best model on the internal test split

Ray Train stores the folders (train.storage_path/<run name>/checkpoint_*); the MLflow run's
`cxr.checkpoint` tag names the final one.

A checkpoint folder may come from someone else (a shared store, a run whose tag was rewritten), so
nothing in it can run code: the .pt files hold only tensors and plain containers and load with
`torch.load(weights_only=True)`, the .npz file without pickles, the rest is JSON. A file that does
not load that way is refused (`CheckpointError`), never loaded another way.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrcommon.errors import first_line
from cxrmodel.method import Method, load_method_state, method_state
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.masking import masked
from orchestration.settings.plan import TrainingPlan
from orchestration.training.configured import configured_network

STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"
BEST_MODEL_FILE = "best_model.pt"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
TEST_FILE = "test_predictions.npz"


class CheckpointError(ConfigError):
    """A checkpoint file that cannot be loaded safely; the message names it and says why."""


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
    torch.save(method_state(method), directory / STATE_FILE)
    (directory / PROGRESS_FILE).write_text(json.dumps(asdict(progress), indent=1))
    if best_state is not None:
        torch.save(best_state, directory / BEST_MODEL_FILE)
    (directory / SUMMARY_FILE).write_text(json.dumps(metrics, indent=1))
    (directory / RUN_FILE).write_text(json.dumps({
        "config": masked(config.model_dump(mode="json")), "plan": plan.to_dict(),
    }, indent=1))
    if test is not None:
        np.savez(directory / TEST_FILE, **test)


def restore_checkpoint(directory: Path, method: Method, device: torch.device | str) -> tuple[Progress, dict | None]:
    """Load a checkpoint into `method` (built with the same config and plan); returns where training
    stood and the best weights so far."""
    state = load_tensors(directory / STATE_FILE, device)
    best_path = directory / BEST_MODEL_FILE
    best_state = load_tensors(best_path, "cpu") if best_path.exists() else None
    try:
        load_method_state(method, state)
        progress = Progress(**json.loads((directory / PROGRESS_FILE).read_text()))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{directory} is not a checkpoint of this run and version ({first_line(exc, 300)}); "
                              "start a new run with another --run-name") from None
    return progress, best_state


def load_tensors(path: Path, map_location: torch.device | str = "cpu"):
    """A .pt file that holds tensors and plain containers only; anything else is refused, unloaded."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"GLOBAL (\S+)", str(exc))  # torch names the callable the file asked for
        if named:
            raise CheckpointError(f"{path}: refused: it holds Python objects that could run code, not only "
                                  f"tensors (it calls {named.group(1)})") from None
        raise CheckpointError(f"{path}: not a readable checkpoint file ({_unpickler_detail(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint file ({first_line(exc, 300)})") from None


def _unpickler_detail(exc: Exception) -> str:
    """The line of torch's safe-load message that says what was wrong (the rest is boilerplate)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(boilerplate)), "not a torch file")[:300]


def read_test_predictions(directory: Path) -> dict[str, np.ndarray]:
    """sample_id, probs and labels of the final checkpoint's test split."""
    try:
        with np.load(directory / TEST_FILE, allow_pickle=False) as saved:
            return {k: saved[k] for k in ("sample_id", "probs", "labels")}
    except (ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{directory / TEST_FILE}: not readable as test predictions "
                              f"({first_line(exc, 300)})") from None


def read_run_description(checkpoint: str | Path) -> tuple[Config, TrainingPlan]:
    """The config and plan a checkpoint folder was trained with, without loading any weights."""
    directory = Path(checkpoint)
    if not (directory / RUN_FILE).exists():
        raise ConfigError(f"{directory} is not a cxr train checkpoint (no {RUN_FILE}); pass a checkpoint_* folder")
    try:
        described = json.loads((directory / RUN_FILE).read_text())
        return Config.model_validate(described["config"]), TrainingPlan(**described["plan"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{directory / RUN_FILE} was written by another version of cxr-orchestra ({exc}); "
                          "train the model again with this version") from None


def trained_weights(checkpoint: str | Path) -> tuple[dict, Path]:
    """The state dict `load_trained` loads (the best weights, else the last) and the file it came
    from, loaded safely: a check that the folder is usable, before Ray starts workers that load it."""
    directory = Path(checkpoint)
    best = directory / BEST_MODEL_FILE
    if best.exists():
        return load_tensors(best), best
    state = load_tensors(directory / STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{directory / STATE_FILE}: holds no network weights ('model')")
    return state["model"], directory / STATE_FILE


def load_trained(checkpoint: str | Path) -> tuple[torch.nn.Module, Config, TrainingPlan]:
    """The best network of a checkpoint folder, in eval mode, with the config and plan it was
    trained with (the last weights when no validation ran)."""
    config, plan = read_run_description(checkpoint)
    net = configured_network(config, plan)
    state, source = trained_weights(checkpoint)
    try:
        net.load_state_dict(state)
    except (TypeError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"{source}: its weights do not fit the network {RUN_FILE} describes "
                              f"({first_line(exc, 300)})") from None
    return net.eval(), config, plan
