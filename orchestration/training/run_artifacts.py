"""What a training run leaves in MLflow when it is done, besides its metrics: the final checkpoint's
figures, the resolved config, a data summary, its provenance, Grad-CAM sheets and the model
(registering it, with its model card, is orchestration.evaluation.model_card's)."""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow.tracking import MlflowClient

from cxrcommon.storage import Folder
from cxrmodel.inference import ProbabilityModel
from data_prep.prepared import MANIFEST_NAME, PreparedDataset
from orchestration.evaluation.scoring import Predictions, auc_table, report_for, roc_figure
from orchestration.settings.config import Config
from orchestration.settings.masking import masked
from orchestration.settings.plan import TrainingPlan
from orchestration.settings.schema import (
    CONFIG_ARTIFACT,
    DATA_SUMMARY_ARTIFACT,
    EXPLAIN_ARTIFACT_DIR,
    MODEL_ARTIFACT,
    PROVENANCE_ARTIFACT,
    SUMMARY_ARTIFACT,
    TEST_AUC_ARTIFACT,
    TEST_PREDICTIONS_ARTIFACT,
    TEST_ROC_ARTIFACT,
)
from orchestration.training.checkpoint import SUMMARY_FILE, TEST_FILE, load_trained, read_test_predictions
from orchestration.training.configured import configured_network

MODEL_REQUIREMENTS = ("torch",)  # what serving the logged program needs besides MLflow
_EXPORTING = threading.Lock()  # torch.export is not documented as thread-safe: one export at a time
# The program `_log_model` saved last, holding that network's tensors. A Tune trial process that
# Tune reuses for the next trial (`reuse_actors`) logs that trial's network, of the same
# architecture unless the sweep changes it, without tracing again (7-10 s a trial here).
_last_logged_program: torch.export.ExportedProgram | None = None


def log_run_artifacts(client: MlflowClient, run_id: str, config: Config, plan: TrainingPlan, checkpoint: Path,
                      traced_model: Future[torch.export.ExportedProgram] | None = None) -> None:
    """The final checkpoint's figures, the resolved config, a data summary and (optionally) the model;
    `traced_model`: the model's program traced while the run trained (`trace_model`)."""
    prepared = PreparedDataset.load(plan.data)
    manifest = prepared.manifest
    client.log_text(run_id, yaml.safe_dump(masked(config.model_dump(mode="json")), sort_keys=False), CONFIG_ARTIFACT)
    client.log_dict(run_id, {
        "data": plan.data, "format_version": manifest.format_version, "image_size": manifest.image_size,
        "label_space": manifest.label_space, "training_domains": plan.domains, "common": plan.common,
        "internal_only": plan.internal_only,
        "domains": {d: info.model_dump(exclude={"counts"}) for d, info in manifest.domains.items()},
        "skipped_images": len(manifest.skipped),
        "manifest_sha256": hashlib.sha256(Folder.at(plan.data).read_bytes(MANIFEST_NAME)).hexdigest(),
    }, DATA_SUMMARY_ARTIFACT)
    client.log_dict(run_id, provenance(), PROVENANCE_ARTIFACT)
    client.log_text(run_id, (checkpoint / SUMMARY_FILE).read_text(), SUMMARY_ARTIFACT)
    client.log_artifact(run_id, str(checkpoint / TEST_FILE), str(Path(TEST_PREDICTIONS_ARTIFACT).parent))
    test = Predictions(**read_test_predictions(checkpoint))
    report = report_for(test, plan)
    client.log_text(run_id, auc_table(report, test, plan).to_csv(index=False), TEST_AUC_ARTIFACT)
    client.log_figure(run_id, roc_figure(test, plan.label_space, report, f"{plan.internal} test split"),
                      TEST_ROC_ARTIFACT)
    if config.mlflow.log_model or config.train.explain_top:
        net = load_trained(checkpoint)[0]
    if config.train.explain_top and len(test.sample_id):
        _log_explanations(client, run_id, net, plan, prepared, test, config.train.explain_top)
    if config.mlflow.log_model:
        _log_model(client.tracking_uri, run_id, net, manifest.image_size, traced_model)


def prepare_model_logging() -> None:
    """What MLflow does once in a process before it logs a model, done ahead: it lists every installed
    distribution's files to check the model's requirements against them (~0.6 s here). Where MLflow
    no longer has the check, nothing is done."""
    try:
        from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches
    except ImportError:
        return
    warn_dependency_requirement_mismatches(list(MODEL_REQUIREMENTS))


def trace_model(config: Config, plan: TrainingPlan) -> torch.export.ExportedProgram:
    """The logged model's program, traced from a network of the run's architecture with random
    weights, which `_log_model` replaces with the trained ones: torch.export's trace takes 7-10 s
    here, and this way it runs while the run trains rather than after it."""
    image_size = PreparedDataset.load(plan.data).manifest.image_size
    return _trace(ProbabilityModel(configured_network(config, plan)), image_size)


def _trace(model: torch.nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """`model`'s program as MLflow's "pt2" flavour traces it for `_log_model`'s signature: any batch size."""
    with _EXPORTING:
        return torch.export.export(model, (torch.from_numpy(_example(image_size)),),
                                   dynamic_shapes=({0: torch.export.Dim.AUTO},))


def provenance() -> dict:
    """The code that trained: its git commit (where it runs from a checkout) and package versions."""
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", ""
    versions = {"python": platform.python_version()}
    for package in ("cxr-orchestra", "torch", "torchvision", "ray", "mlflow", "optuna", "numpy", "pandas"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return {"git_commit": commit + ("+uncommitted changes" if dirty and commit != "unknown" else ""),
            "versions": versions}


def _log_explanations(client: MlflowClient, run_id: str, net: torch.nn.Module, plan: TrainingPlan,
                      prepared: PreparedDataset, test: Predictions, top: int) -> None:
    """Grad-CAM contact sheets of the best model for the internal test split (`cxr explain`'s)."""
    from orchestration.evaluation.grad_cam import explain_top_images

    with tempfile.TemporaryDirectory() as folder:
        explain_top_images(net, plan.label_space, prepared, plan.internal, "test", test,
                           plan.evaluated, top, Path(folder), overlays=False)
        client.log_artifacts(run_id, folder, EXPLAIN_ARTIFACT_DIR)


def _log_model(uri: str, run_id: str, net: torch.nn.Module, image_size: int,
               traced: Future[torch.export.ExportedProgram] | None = None) -> None:
    """The best network as an mlflow.pytorch model taking uint8 images (the one fluent MLflow call:
    log_model writes only to an active run). Saved as a torch.export program ("pt2"), which loads
    without unpickling; MLflow's check that loads it back and runs the example is left out (5.5 s of
    every run's 17 s export here): tests/test_train.py loads a logged model and runs it. MLflow saves
    the program `traced` ahead or, failing that, the one this process logged last, holding the
    trained weights, when either fits the network; otherwise it traces the network itself."""
    global _last_logged_program
    model = ProbabilityModel(net)
    example = _example(image_size)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    # A trace that failed leaves the export to MLflow, which names what fails, if anything does.
    ahead = [traced.result()] if traced is not None and traced.exception() is None else []
    mlflow.set_tracking_uri(uri)
    with _EXPORTING:
        program = _first_fitting(model, [*ahead, _last_logged_program], image_size)
        with _exported_as(model, program) as saved, mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                model, name=MODEL_ARTIFACT, input_example=example,
                signature=mlflow.models.infer_signature(example, output), pip_requirements=list(MODEL_REQUIREMENTS),
                serialization_format="pt2", validate_serving_input=False,
            )
        _last_logged_program = saved[-1] if saved else _last_logged_program


def _example(image_size: int) -> np.ndarray:
    # Two images: an example of one would fix the exported graph's batch size to 1.
    return np.zeros((2, image_size, image_size), np.uint8)


def _first_fitting(model: torch.nn.Module, programs: list[torch.export.ExportedProgram | None],
                   image_size: int) -> torch.export.ExportedProgram | None:
    for program in programs:
        if program is not None and (fitted := _with_weights_of(model, program, image_size)) is not None:
            return fitted
    return None


def _with_weights_of(model: torch.nn.Module, program: torch.export.ExportedProgram,
                     image_size: int) -> torch.export.ExportedProgram | None:
    """`program`, traced from a model of `model`'s architecture, holding `model`'s weights; None when
    its tensors differ from `model`'s in name, shape or type (another architecture), or when it then
    computes otherwise than `model` on a probe batch of another size than the example's (a graph that
    depended on the weights)."""
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    held = program.state_dict | {name: program.constants[name] for name in program.constants.keys() & tensors.keys()}
    if any(name not in tensors or (tensors[name].shape, tensors[name].dtype) != (value.shape, value.dtype)
           for name, value in held.items()):
        return None
    for name in program.state_dict:
        program.state_dict[name] = tensors[name]
    for name in held.keys() - program.state_dict.keys():
        program.constants[name] = tensors[name]
    probe = torch.randint(0, 256, (3, image_size, image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(program.module()(probe), model(probe), rtol=0, atol=1e-6)
    return program if same else None


@contextmanager
def _exported_as(model: torch.nn.Module, program: torch.export.ExportedProgram | None
                 ) -> Iterator[list[torch.export.ExportedProgram]]:
    """MLflow's "pt2" flavour exports the model it is given with `torch.export.export`; inside this
    block, that call for `model` returns `program` (when there is one) instead of tracing again.
    Yields the list of the programs that call returned. Callers hold `_EXPORTING`, so no other
    export runs meanwhile."""
    export = torch.export.export
    returned: list[torch.export.ExportedProgram] = []

    def export_model(module: torch.nn.Module, *args, **kwargs) -> torch.export.ExportedProgram:
        if module is not model:
            return export(module, *args, **kwargs)
        returned.append(program if program is not None else export(module, *args, **kwargs))
        return returned[-1]

    torch.export.export = export_model
    try:
        yield returned
    finally:
        torch.export.export = export
