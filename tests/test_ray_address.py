"""Starting or joining Ray never hangs: no address starts a fresh local Ray even when a stale
/tmp/ray/ray_current_cluster names a dead cluster; `auto` joins the machine's cluster; an address
that does not answer fails within a bound, naming it. The address file is redirected with TMPDIR
(Ray reads it from $TMPDIR/ray) so the machine's own is never touched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import wait_for

from orchestration.settings import runtime
from orchestration.settings.runtime import RayAddressError, ray_address

JOINED = "from orchestration.settings.runtime import init_ray; import ray; init_ray({address!r}); " \
         "print('GCS', ray.get_runtime_context().gcs_address, flush=True)"


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free once closed: nothing listens there


@pytest.fixture
def machine_temp(monkeypatch):
    """A short TMPDIR (Ray's socket paths must stay under 108 bytes) holding ray/ray_current_cluster."""
    root = Path(tempfile.mkdtemp(prefix="cxr", dir="/tmp"))
    (root / "ray").mkdir()
    monkeypatch.setenv("TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _python(code: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ}, cwd=Path(__file__).resolve().parents[1])


def test_an_address_that_does_not_answer_fails_within_the_bound_naming_it(monkeypatch):
    monkeypatch.setattr(runtime, "RAY_CONNECT_TIMEOUT_S", 1.0)
    dead = f"127.0.0.1:{_dead_port()}"
    started = time.monotonic()
    with pytest.raises(RayAddressError, match=f"no Ray answers at {dead} after 1 s"):
        ray_address(dead)
    assert time.monotonic() - started < 10
    with pytest.raises(RayAddressError, match="not HOST:PORT"):
        ray_address("my-head-node")


def test_auto_with_a_stale_cluster_file_fails_within_the_bound_and_says_why(machine_temp, monkeypatch):
    monkeypatch.setattr(runtime, "RAY_CONNECT_TIMEOUT_S", 1.0)
    with pytest.raises(RayAddressError, match="no Ray cluster runs on this machine"):
        ray_address("auto")
    stale = f"127.0.0.1:{_dead_port()}"
    (machine_temp / "ray" / "ray_current_cluster").write_text(stale)
    with pytest.raises(RayAddressError, match=f"{stale} \\(named by {machine_temp}/ray/ray_current_cluster, left by a Ray"):
        ray_address("auto")


@pytest.mark.ray
def test_no_address_starts_a_fresh_local_ray_even_with_a_stale_cluster_file_and_stop_ray_ends_it(machine_temp):
    """A command's own Ray: started fresh beside a stale cluster file, without a dashboard; at the
    command's end `stop_ray` (which kills its autoscaler monitor first) leaves none of its
    processes, and nothing about the autoscaler on the console."""
    stale = f"127.0.0.1:{_dead_port()}"
    (machine_temp / "ray" / "ray_current_cluster").write_text(stale)
    assert ray_address(None) == "local"
    started = time.monotonic()
    # ray.init's context names the dashboard's URL; init_ray keeps the context to itself.
    done = _python("; ".join([
        JOINED.format(address=None), "print('DASHBOARD', repr(ray._private.worker.get_dashboard_url()))",
        "session = ray._private.worker._global_node.get_session_dir_path()", "ray.get(ray.remote(lambda: 1).remote())",
        "from orchestration.settings.runtime import stop_ray", "stop_ray()", "print('SESSION', session)"]), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    gcs = done.stdout.split("GCS ")[1].split()[0]
    assert gcs != stale and time.monotonic() - started < 120
    assert "DASHBOARD ''" in done.stdout  # a command's own Ray starts no dashboard
    session = done.stdout.split("SESSION ")[1].split()[0]
    wait_for(lambda: not runtime.session_processes(session), 30, "the session's processes to end")
    assert "autoscaler" not in (done.stdout + done.stderr).lower(), done.stdout + done.stderr


@pytest.mark.ray
def test_auto_joins_the_running_cluster_the_file_names(ray_session, machine_temp):
    address = ray_session.get_runtime_context().gcs_address
    (machine_temp / "ray" / "ray_current_cluster").write_text(address)
    assert ray_address("auto") == "auto"
    done = _python(JOINED.format(address="auto"), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("GCS ")[1].split()[0] == address


@pytest.mark.ray
def test_the_test_suites_own_ray_starts_beside_a_stale_cluster_file(machine_temp):
    """conftest's Ray (every `ray_session` test runs on it) is a local one of its own: with a stale
    ray_current_cluster in Ray's temp folder, a plain ray.init(num_cpus=...) would try to join the
    dead cluster and refuse ("num_cpus ... must not be provided")."""
    stale = f"127.0.0.1:{_dead_port()}"
    (machine_temp / "ray" / "ray_current_cluster").write_text(stale)
    code = ("import sys; sys.path.insert(0, 'tests'); from conftest import start_test_ray; ray = start_test_ray(); "
            "print('GCS', ray.get_runtime_context().gcs_address, ray.get(ray.remote(lambda: 7).remote()), flush=True)")
    done = _python(code, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    gcs, answer = done.stdout.split("GCS ")[1].split()[:2]
    assert gcs != stale and answer == "7"
