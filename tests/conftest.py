"""Shared fixtures: the real label tables in ../shared/data, one local Ray per session, small synth sets,
and a `ray start --head` of a test's own."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Quiet, fast-failing Ray for tests: dead workers are noticed within a second, no progress bars.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")  # as cxr does for a local Ray
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Each node's dashboard agent samples every Ray process every 5 s for the dashboard no test looks at:
# a few seconds of CPU a minute per node, on the cores the tests train on.
os.environ.setdefault("REPORTER_UPDATE_INTERVAL_MS", "60000")


def pytest_collection_modifyitems(items):
    """A test that needs the session's Ray (directly, or through a prepared dataset) is a `ray` test:
    `make test-fast` leaves those out, and the `slow` (multi-process, end-to-end) ones."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session", autouse=True)
def _outside_the_checkout(tmp_path_factory):
    """The tests run in a temporary folder: an experiment created in a sqlite store keeps its
    artifacts in ./mlruns of the folder it was created from (MLflow's default), which was the
    checkout. At the end, a check that nothing was written there after all."""
    def runs() -> set[Path]:  # mlruns/<experiment>/<run or model>
        return set((ROOT / "mlruns").glob("*/*"))

    before, here = runs(), os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(here)
    written = sorted(str(p) for p in runs() - before)
    assert not written, f"tests wrote MLflow artifacts into the checkout: {written[:5]}"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real label tables not found at {SHARED_DATA} (only on the project's machines)")
    return SHARED_DATA


def start_test_ray():
    """A fresh local Ray of this process's own (address="local": never a cluster that a stale
    ray_current_cluster file names), oversubscribed so Data and Train do not starve."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session."""
    yield start_test_ray()


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic copy of the three datasets (read-only for tests: copy before changing)."""
    from data_prep.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, images_per_source=40, image_size=64, seed=3)
    return out


def synth_sources(root: Path) -> list[dict]:
    return [
        {"name": "nih", "kind": "nih", "path": str(root / "nih")},
        {"name": "chexpert", "kind": "chexpert", "path": str(root / "chexpert")},
        {"name": "inhouse", "kind": "csv", "path": str(root / "inhouse" / "labels.csv")},
    ]


@pytest.fixture(scope="session")
def prepared_dir(ray_session, tmp_path_factory) -> Path:
    """A tiny prepared dataset (3 domains, 32x32) for training and sweep tests."""
    from data_prep.config import PrepareConfig, SourceConfig
    from data_prep.join import load_sources
    from data_prep.pipeline import run_prepare
    from data_prep.synth import synthesize

    root = tmp_path_factory.mktemp("train_data")
    synthesize(root / "raw", images_per_source=80, image_size=40, seed=5)
    config = PrepareConfig(
        sources=[
            SourceConfig(name="nih", kind="nih", path=root / "raw" / "nih"),
            SourceConfig(name="chexpert", kind="chexpert", path=root / "raw" / "chexpert"),
            SourceConfig(name="inhouse", kind="csv", path=root / "raw" / "inhouse" / "labels.csv"),
        ],
        image_size=32,
        max_bad_fraction=0.05,  # the in-house DICOM set's file without pixels
    )
    run_prepare(load_sources(config), config, root / "prepared")
    return root / "prepared"


def tiny_training(tmp: Path, **extra) -> list[str]:
    """Overrides for a seconds-long training on `prepared_dir`, with its own MLflow store."""
    values = {
        "train.epochs": 2, "train.batch_size": 8, "train.domains": "[nih, chexpert]",
        "train.log_every_steps": 1, "model.branch_features": 16, "model.discriminator_hidden": 16,
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "train.storage_path": str(tmp / "ray_results"),
        "mlflow.log_model": "false",  # the ~10 s export is tested once, in test_train
        "train.explain_top": 0,  # Grad-CAM sheets: tested in test_train's two-worker run and test_explain
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None, log: Path | None = None):
    """Poll `condition` until true; fail with the log's tail on timeout or if `process` exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """`count` ports free now, none handed out before in this session: a port let go may be the
    kernel's next answer (the demo's head once got one port for two of its options), so every probe
    stays bound until all are picked, and ports picked earlier, perhaps not yet taken, are skipped."""
    picked: list[int] = []
    with ExitStack() as probes:
        while len(picked) < count:
            probe = probes.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            if probe.getsockname()[1] not in _HANDED_OUT:
                picked.append(probe.getsockname()[1])
                _HANDED_OUT.add(picked[-1])
    return picked


def free_port() -> int:
    return free_ports(1)[0]


def serve_mlflow(store: Path, port: int, log: Path, *, wait: bool = True) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:`port` over a SQLite store in `store`, once it answers
    (`wait=False`: at once; `mlflow_up` waits, so that its start overlaps other work). Without
    MLflow's job runner (GenAI jobs, unused here): four more processes importing MLflow beside the
    server, a 5 s stop, and a folder left in /dev/shm per server."""
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log.open("a"), stderr=subprocess.STDOUT, cwd=store,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if wait:
        mlflow_up(server, port, log)
    return server


def mlflow_up(server: subprocess.Popen, port: int, log: Path) -> None:
    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(up, 120, "mlflow server", server, log)


@contextmanager
def ray_head(env: dict, token_dir: Path, *options: str, num_cpus: int = 4):
    """`ray start --head` with token auth, free ports and a temp dir of its own; yields its address
    and `env` with what its clients need (the token in `token_dir`). Its processes are started with
    that environment; only they are stopped after."""
    token = token_dir / "ray_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    temp = Path(f"/tmp/cxr_head_{secrets.token_hex(3)}")  # short: Ray's socket paths have a length limit
    temp.mkdir(mode=0o700)
    port, client, agent, agent_grpc, metrics, runtime_env = free_ports(6)
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}",
         f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={runtime_env}", f"--temp-dir={temp}", f"--num-cpus={num_cpus}",
         "--disable-usage-stats", *options],
        # Its processes' own temporary files too (the dashboard's forkserver socket), since they are
        # killed rather than left to clean up.
        env={**env, "TMPDIR": str(temp)}, check=True, capture_output=True, timeout=120,
    )
    from ray.util import get_node_ip_address  # where the head's GCS listens unless told otherwise

    ip = next((o.split("=", 1)[1] for o in options if o.startswith("--node-ip-address=")), None)
    try:
        yield f"{ip or get_node_ip_address()}:{port}", env
    finally:
        for process in psutil.process_iter(["cmdline"]):
            try:
                if str(temp) in " ".join(process.info["cmdline"] or []):
                    process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp, ignore_errors=True)
