"""Files from others cannot run code or take data they should not: a crafted checkpoint is refused by
every verb that loads one and by a resume, no file is read from a predictable shared temp path, no
secret is written down, no value or YAML document outside its bounds gets in, and run names stay
inside the storage folder. Every crafted file is made here."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxrcommon.yaml_files import YamlError, load_yaml
from orchestration.cli import app
from orchestration.settings import runtime
from orchestration.settings.config import ConfigError, load_config
from orchestration.settings.masking import mask_text, masked
from orchestration.settings.plan import TrainingPlan
from orchestration.settings.tracking import MetricLogger
from orchestration.training.checkpoint import (
    BEST_MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    Progress,
    load_trained,
    read_run_description,
    restore_checkpoint,
    write_checkpoint,
)
from orchestration.training.configured import configured_method

runner = CliRunner()
SPACE = ["Nodule", "Mass", "Effusion"]


class _Payload:
    """What a hostile state.pt holds: unpickling it runs a command (here: writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _checkpoint(folder: Path, data: str = "") -> Path:
    """A real checkpoint of a tiny method, as `cxr train` writes it."""
    config = load_config(updates={"model.branch_features": 4, "model.discriminator_hidden": 4})
    plan = TrainingPlan(data=data, domains=["nih", "chexpert"], label_space=SPACE, common=["Mass", "Effusion"],
                        internal_only=["Nodule"], evaluated=SPACE, trained=["Nodule", "Mass"], alpha=[1.0, 3.0, 3.0],
                        beta=[4.0, 2.0, 1.0], positive=[2, 3, 0], negative=[8, 6, 0], ensemble=["Nodule"],
                        per_domain_batch=2, steps_per_epoch=1, num_samples=7)
    method = configured_method(config, plan)
    best = {k: v.clone() for k, v in method.network.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder, method, Progress(epoch=1, global_step=1), best, {"epoch": 1}, config, plan)
    return folder


def _poison(folder: Path, marker: Path, file: str = STATE_FILE) -> None:
    """The crafted state.pt of the report: a payload beside real tensors, best_model.pt removed."""
    state = torch.load(folder / STATE_FILE, weights_only=True)
    state["progress"] = _Payload(marker)
    torch.save(state, folder / file)
    if file == STATE_FILE:
        (folder / BEST_MODEL_FILE).unlink()


def test_the_checkpoint_format_loads_safely_and_round_trips(tmp_path):
    folder = _checkpoint(tmp_path / "ckpt")
    for name in (STATE_FILE, BEST_MODEL_FILE):  # nothing in it needs unsafe loading
        torch.load(folder / name, weights_only=True)
    assert json.loads((folder / "progress.json").read_text())["epoch"] == 1
    net, _, plan = load_trained(folder)
    assert plan.label_space == SPACE and not net.training


def test_a_crafted_state_file_is_refused_by_load_and_resume_and_runs_nothing(tmp_path):
    folder, marker = _checkpoint(tmp_path / "ckpt"), tmp_path / "pwned"
    method = configured_method(*read_run_description(folder))
    _poison(folder, marker)
    assert pickle.loads(pickle.dumps(_Payload(tmp_path / "probe"))) == 0 and (tmp_path / "probe").exists()  # it does run
    with pytest.raises(CheckpointError, match=f"{folder / STATE_FILE}: refused: it holds Python objects"):
        load_trained(folder)
    with pytest.raises(CheckpointError, match="refused"):  # what a resumed `cxr train` worker calls
        restore_checkpoint(folder, method, "cpu")
    assert not marker.exists()


def test_a_crafted_best_model_is_refused_with_one_line(tmp_path):
    folder, marker = _checkpoint(tmp_path / "ckpt"), tmp_path / "pwned"
    torch.save({"weights": _Payload(marker)}, folder / BEST_MODEL_FILE)
    with pytest.raises(CheckpointError, match=f"{folder / BEST_MODEL_FILE}: refused"):
        load_trained(folder)
    (folder / BEST_MODEL_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint file"):
        load_trained(folder)
    assert not marker.exists()


def test_every_verb_that_reads_a_checkpoint_refuses_the_crafted_one(prepared_dir, tmp_path):
    folder, marker = _checkpoint(tmp_path / "ckpt", data=str(prepared_dir)), tmp_path / "pwned"
    _poison(folder, marker)
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "one.png"), np.zeros((16, 16), np.uint8))
    store = [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    commands = {
        "predict --checkpoint": ["predict", "--data", str(prepared_dir), "--checkpoint", str(folder),
                                 "--out", str(tmp_path / "p.csv"), *store],
        "predict --images --model": ["predict", "--images", str(images), "--model", str(folder),
                                     "--out", str(tmp_path / "i.csv"), *store],
        "evaluate --checkpoint": ["evaluate", "--data", str(prepared_dir), "--checkpoint", str(folder), *store],
        "explain --checkpoint": ["explain", "--checkpoint", str(folder), "--out", str(tmp_path / "x"), *store],
    }
    for what, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (what, result.output)
        assert "refused: it holds Python objects" in result.output and "Traceback" not in result.output, what
    assert not marker.exists()


def test_ray_data_logging_config_is_the_packages_own_file_never_one_in_the_temp_folder(tmp_path, monkeypatch):
    """Ray Data builds whatever classes its logging config names: cxr points it at the file shipped
    in the package, never at a temp folder's file (where one used to be written at each start, and
    left behind when the process was killed)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    planted = tmp_path / f"cxr-ray-data-logging-{os.getuid()}.yaml"  # where it used to be written and read
    hostile = json.dumps({"version": 1, "handlers": {"x": {"class": "os.system"}}})
    planted.write_text(hostile)
    monkeypatch.delenv(runtime.RAY_DATA_LOGGING_CONFIG, raising=False)

    class Started(Exception):
        """Where ray.init would start a local Ray: the settings it inherits are all made by then."""

    def start(**kwargs):
        raise Started

    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)  # the session's own Ray may be up
    monkeypatch.setattr(runtime, "stop_orphaned_ray", lambda: None)
    monkeypatch.setattr(runtime.ray, "init", start)
    with pytest.raises(Started):
        runtime.init_ray("local")
    used = Path(os.environ[runtime.RAY_DATA_LOGGING_CONFIG])
    assert used == Path(runtime.__file__).with_name("ray_data_logging.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name] and planted.read_text() == hostile


def test_undelivered_metrics_without_a_spill_file_go_to_a_new_private_file(tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    planted = tmp_path / "cxr-undelivered-0123abcd.jsonl"  # the old predictable name
    planted.write_text("")
    logger = MetricLogger(f"http://127.0.0.1:{free_port()}", "0123abcd", retry_s=0.5, retry_every_s=0.2)
    logger.log({"train/loss_cls": 0.5}, 1)
    assert logger.close(timeout=60) == 1
    assert logger.spill_file != planted and planted.read_text() == ""
    assert stat.S_IMODE(logger.spill_file.stat().st_mode) == 0o600
    assert json.loads(logger.spill_file.read_text())["metrics"] == {"train/loss_cls": 0.5}


def test_secrets_are_masked_in_text_and_nested_values():
    assert mask_text("at https://alice:s3cret@mlflow.example:5000/x and ok") == "at https://***@mlflow.example:5000/x and ok"
    assert mask_text("http://host/api?user=a&token=abc123&x=1") == "http://host/api?user=a&token=***&x=1"
    written = masked({"mlflow": {"tracking_uri": "https://bob:pw@h/", "experiment": "e"},
                      "sources": [{"api_key": "k", "path": "/data"}], "lr": 0.1})
    assert written == {"mlflow": {"tracking_uri": "https://***@h/", "experiment": "e"},
                       "sources": [{"api_key": "***", "path": "/data"}], "lr": 0.1}


def test_error_messages_on_the_console_mask_credentials(tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://alice:PLANTED-SECRET@127.0.0.1:{free_port()}"  # nothing listens: the error names the URI
    result = runner.invoke(app, ["predict", "--data", str(tmp_path), "--model", "models:/nothing@champion",
                                 "--out", str(tmp_path / "p.csv"), f"mlflow.tracking_uri={uri}"])
    assert result.exit_code == 2 and "no such registered model version in http://***@127.0.0.1" in result.output
    assert "PLANTED-SECRET" not in result.output


@pytest.mark.parametrize("override, message", [
    ("train.lr=.inf", "train.lr=inf: Input should be a finite number"),
    ("train.lr=.nan", "train.lr=nan: Input should be a finite number"),
    ("train.lr=5", "train.lr=5: Input should be less than or equal to 1"),
    ("method.lambda_tat=.inf", "method.lambda_tat=inf: Input should be a finite number"),
    ("method.lambda_ute=-1", "method.lambda_ute=-1: Input should be greater than or equal to 0"),
    ("method.alpha=.inf", "method.alpha=inf"),
    ("method.gamma=1", "method.gamma=1: Input should be less than 1"),
    ("method.h_schedule.start=.nan", "method.h_schedule.start=nan"),
    ("prepare.val_fraction=.nan", "prepare.val_fraction=nan"),
    ("method.alpha_overrides={Mass: .inf}", "method.alpha_overrides.Mass=inf: Input should be a finite number"),
    ("method.alpha_overrides={Mass: 5000}", "method.alpha_overrides must be > 0 and <= 1000"),
])
def test_non_finite_and_out_of_range_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config([], [override])


def test_a_yaml_alias_bomb_is_refused_at_once_and_long_values_are_cut(tmp_path):
    levels = ['a: &a ["xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "xxxxxxxx", "x"]']
    for i in range(1, 9):
        ref = chr(96 + i)
        levels.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + ref] * 9)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + "\n")
    started = time.monotonic()
    with pytest.raises(YamlError, match=f"config file {bomb}: its aliases expand to more than"):
        load_config([bomb])
    assert time.monotonic() - started < 2
    with pytest.raises(YamlError, match="recursive"):
        load_yaml("a: &a [*a]", "x.yaml")
    with pytest.raises(ConfigError) as refused:
        load_config([], ["train.run_name=" + "x" * 500_000])
    assert len(str(refused.value)) < 1000 and "500,002 characters" in str(refused.value)


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", "x" * 129])
def test_run_names_are_checked_by_one_validator_whatever_sets_them(name, tmp_path, prepared_dir):
    with pytest.raises(ConfigError, match="is not allowed"):
        load_config([], [f"train.run_name={name}"])
    storage = tmp_path / "storage"
    result = runner.invoke(app, ["train", "--data", str(prepared_dir), "--run-name", name,
                                 f"train.storage_path={storage}", f"mlflow.tracking_uri=sqlite:///{tmp_path / 'm.db'}"])
    assert result.exit_code == 2 and "is not allowed" in result.output, result.output
    result = runner.invoke(app, ["ablate", "--grid", "paper_default", "--data", str(prepared_dir),
                                 "--sweep-name", name, f"train.storage_path={storage}"])
    assert result.exit_code == 2 and "is not allowed" in result.output, result.output
    assert not any(tmp_path.parent.glob("escaped*")) and not storage.exists()


_OPEN_AND_LOG = """
import sys, time
from orchestration.settings.config import load_config
from orchestration.settings.tracking import MetricLogger, client_for, open_run
print("imported", flush=True)
start = float(sys.stdin.readline())  # the same instant for both processes
while time.time() < start:
    time.sleep(0.005)
config = load_config([], [f"mlflow.tracking_uri={sys.argv[1]}"])
client = client_for(config)
run_id, _ = open_run(client, config, sys.argv[2])
logger = MetricLogger(client.tracking_uri, run_id)
for step in (1, 2, 3):
    logger.log({"train/loss_cls": 1.0 / step}, step)
assert logger.close() == 0
client.set_terminated(run_id, "FINISHED")
"""


@pytest.mark.slow
def test_two_first_runs_on_a_new_sqlite_store_both_finish(tmp_path):
    """What `cxr train` does first (open the store and its run, log metrics), in two processes that
    start at the same instant on a store that does not exist yet: without the creation lock one of
    them fails in MLflow's schema migration (3 of 3 tries on the old code)."""
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    runs = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_LOG, uri, f"run-{i}"], cwd=tmp_path, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    before = [_lines_until("imported\n", run.stdout) for run in runs]  # both have imported MLflow
    assert all(said.endswith("imported\n") for said in before), "\n".join(b[-2000:] for b in before)
    start = f"{time.time() + 0.2}\n"
    for run in runs:
        run.stdin.write(start)
        run.stdin.flush()
    outputs = [b + run.communicate(timeout=120)[0] for b, run in zip(before, runs)]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for name in ("run-1", "run-2"):
        [run] = client.search_runs([client.get_experiment_by_name("cxr-orchestra").experiment_id],
                                   f"tags.`cxr.run_name` = '{name}'")
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_cls")] == [1, 2, 3]


def _lines_until(last: str, stream) -> str:
    """What `stream` says up to and including the line `last` (or to its end)."""
    said = ""
    for line in stream:
        said += line
        if line == last:
            break
    return said


@pytest.mark.slow
def test_a_ray_left_by_a_killed_driver_is_stopped_by_cxr_clean(tmp_path):
    """kill -9 of a command that started a local Ray leaves Ray's agents running; `cxr clean` finds
    them by the session the command recorded and stops them."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    driver = subprocess.Popen(
        [sys.executable, "-c", "from orchestration.settings.runtime import init_ray; import ray, time; init_ray(num_cpus=1); "
         "print(ray._private.worker._global_node.get_session_dir_path(), flush=True); time.sleep(600)"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        session = driver.stdout.readline().strip()
        assert session, "the driver did not start Ray"
        time.sleep(2)  # the agents start with the raylet
        driver.kill()
        driver.wait(timeout=30)
        time.sleep(3)
        left = runtime.session_processes(session)
        assert left, "nothing outlived the killed driver: this test would prove nothing"
        result = subprocess.run([sys.executable, "-m", "orchestration.cli", "clean"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert f"of the Ray session {session}" in result.stderr
        assert not [p for p in left if p.is_running() and p.status() != "zombie"]
        assert not list((tmp_path / "cache" / "cxr-orchestra" / "ray-sessions").glob("*.json"))
        assert Path(session).is_dir()  # processes stopped, nothing deleted
    finally:
        driver.kill()
        for process in runtime.session_processes(session) if session else []:
            process.kill()
