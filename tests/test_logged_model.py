"""The logged model's program is traced while a run trains and saved after it with the trained
weights (`run_artifacts.trace_model`, `_log_model`), and the program a process logged last serves its
next network of the same architecture (a reused Tune trial process): what MLflow serves must be the
trained network, for any batch size, and a program that does not fit the network is not used."""

from __future__ import annotations

from concurrent.futures import Future

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from cxrmodel.inference import ProbabilityModel
from cxrmodel.network import NetOutput
from orchestration.training import run_artifacts

SIDE = 32


class _SmallNet(torch.nn.Module):
    """Stands for CXRNet, whose DenseIBN-121 takes ~9 s to trace (`tests/test_train.py` logs one): its
    output, a norm's running statistics and a non-persistent buffer like its common findings' indices."""

    def __init__(self, width: int = 4, findings: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3, stride=4)
        self.norm = torch.nn.BatchNorm2d(width)
        self.fc = torch.nn.Linear(width, findings)
        self.register_buffer("scale", torch.full((findings,), 0.5), persistent=False)

    def forward(self, x: torch.Tensor):
        features = torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return NetOutput(self.fc(features) * self.scale, None)


def _trained(seed: int, **shape) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = _SmallNet(**shape)
    net.norm.running_mean.normal_()  # buffers that differ from a fresh network's, like trained ones
    net.norm.running_var.uniform_(0.5, 2)
    net.scale.fill_(seed + 1.0)
    return net.eval()


def _traced(net: torch.nn.Module) -> Future:
    future = Future()
    future.set_result(run_artifacts._trace(ProbabilityModel(net), SIDE))
    return future


@pytest.fixture(autouse=True)
def nothing_logged_before(monkeypatch):
    monkeypatch.setattr(run_artifacts, "_last_logged_program", None)


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")


def _log(client: MlflowClient, tmp_path, net: torch.nn.Module, traced: Future | None, monkeypatch) -> tuple[str, int]:
    """Logs `net` as a run's model; returns the run and how many times torch.export traced."""
    experiment = client.create_experiment(f"e{len(client.search_experiments())}", artifact_location=str(tmp_path / "a"))
    run_id = client.create_run(experiment).info.run_id
    traces = []
    export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: traces.append(1) or export(*a, **k))
    run_artifacts._log_model(client.tracking_uri, run_id, net, SIDE, traced)
    monkeypatch.setattr(torch.export, "export", export)
    return run_id, len(traces)


def _logged(client: MlflowClient, run_id: str, tmp_path) -> torch.nn.Module:
    mlflow.set_tracking_uri(client.tracking_uri)
    downloads = tmp_path / "downloads" / run_id  # MLflow downloads a model it loads
    downloads.mkdir(parents=True)
    return mlflow.pytorch.load_model(f"runs:/{run_id}/model", dst_path=str(downloads))


def test_the_program_traced_ahead_is_logged_holding_the_trained_weights(client, tmp_path, monkeypatch):
    untrained, trained = _trained(0), _trained(1)
    run_id, traces = _log(client, tmp_path, trained, _traced(untrained), monkeypatch)
    assert traces == 0  # MLflow saved the program traced ahead instead of tracing again
    images = torch.randint(0, 256, (5, SIDE, SIDE), dtype=torch.uint8)  # another batch size than the trace's
    served = _logged(client, run_id, tmp_path)(images)
    assert torch.allclose(served, ProbabilityModel(trained)(images), rtol=0, atol=1e-6)
    assert not torch.allclose(served, ProbabilityModel(untrained)(images), atol=1e-2)


@pytest.mark.parametrize("ahead", ["another architecture", "a failed trace"])
def test_without_a_program_that_fits_mlflow_traces_the_trained_network(client, tmp_path, monkeypatch, ahead):
    trained = _trained(1)
    traced = _traced(_trained(0, width=6)) if ahead == "another architecture" else Future()
    if ahead == "a failed trace":
        traced.set_exception(RuntimeError("the trace failed"))
    run_id, traces = _log(client, tmp_path, trained, traced, monkeypatch)
    assert traces == 1
    images = torch.randint(0, 256, (3, SIDE, SIDE), dtype=torch.uint8)
    served = _logged(client, run_id, tmp_path)(images)
    assert torch.allclose(served, ProbabilityModel(trained)(images), rtol=0, atol=1e-6)


def test_the_program_a_process_logged_last_serves_its_next_network_of_that_architecture(client, tmp_path, monkeypatch):
    """As in a Tune trial process reused for trial after trial: only the first network and one of
    another architecture are traced; every logged model serves its own network's weights."""
    networks = [_trained(1), _trained(2), _trained(3, width=6), _trained(4, width=6)]
    logged = [_log(client, tmp_path, net, None, monkeypatch) for net in networks]
    assert [traces for _, traces in logged] == [1, 0, 1, 0]
    images = torch.randint(0, 256, (4, SIDE, SIDE), dtype=torch.uint8)
    served = [_logged(client, run_id, tmp_path)(images) for run_id, _ in logged]
    for net, got in zip(networks, served):  # the earlier ones too, though their program took later weights
        assert torch.allclose(got, ProbabilityModel(net)(images), rtol=0, atol=1e-6)
    assert not torch.allclose(served[0], served[1], atol=1e-2)


def test_mlflow_lists_the_installed_distributions_ahead_of_the_models_log(client, tmp_path, monkeypatch):
    """MLflow checks a logged model's requirements against the installed distributions, listing them
    once in a process: `prepare_model_logging` (on the thread that traces while a run trains) does
    that listing, so the model's log after the test does not."""
    import importlib_metadata
    from mlflow.utils import requirements_utils

    listed = []
    packages_distributions = importlib_metadata.packages_distributions
    monkeypatch.setattr(importlib_metadata, "packages_distributions",
                        lambda: listed.append(1) or packages_distributions())
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # as in a new process
    run_artifacts.prepare_model_logging()
    assert listed == [1]
    run_id, _ = _log(client, tmp_path, _trained(1), None, monkeypatch)
    assert listed == [1]
    assert client.list_artifacts(run_id, "model")
