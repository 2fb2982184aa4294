"""Starting or joining Ray (a local Ray when no address is given, the cluster otherwise), and a
quiet console.

By default the console shows the project's own lines only: progress lines that Ray workers print
with `say` (marked, and forwarded by Ray's log streaming), and what the driver prints. Everything
else that Ray workers, actors and the raylet write (Ray Data execution plans, warnings, shutdown
errors) stays in Ray's log files (`/tmp/ray/session_latest/logs`). `--verbose` or CXR_VERBOSE=1
shows it all, as Ray prints it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import ray

from cxrcommon.errors import UserError

PROJECT_LINE = "[cxr] "  # marks the lines of `say` in Ray's worker logs
PROJECT_HANDLER = "cxr_project_lines"
RAY_DATA_LOGGING_CONFIG = "RAY_DATA_LOGGING_CONFIG"  # Ray Data reads its logging config from this file
# Ray Data's default logging config with its console at ERROR, shipped with the package: nothing
# to write at run time, nothing left behind by a killed process, and nothing anyone else could
# have put there (Ray Data builds whatever classes the file names).
QUIET_RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"  # Ray Train's switch for its watcher actor
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # seconds between Ray Train controller polls
RAY_CONNECT_TIMEOUT_S = float(os.environ.get("CXR_RAY_CONNECT_TIMEOUT_S", 30))  # a given address must answer
TIMELINE_ENV = "CXR_TIMELINE"  # a file: the run's start-up and wind-down events go there (benchmarks/startup.py)


def verbose() -> bool:
    return os.environ.get("CXR_VERBOSE", "") not in ("", "0")


def say(line: str) -> None:
    """A progress line of the project's own, from a Ray worker: written to the worker's stdout,
    marked for the driver's console (not with print, which Ray Train patches to both tee and log:
    the driver would show it twice)."""
    print(PROJECT_LINE + line, file=sys.__stdout__, flush=True)


def mark(event: str) -> None:
    """With $CXR_TIMELINE naming a file, append `event` and the wall clock to it as a JSON line: where
    a run's seconds go, across the driver and its workers (they inherit the variable)."""
    path = os.environ.get(TIMELINE_ENV)
    if path:
        with open(path, "a") as sink:
            sink.write(json.dumps({"event": event, "time": time.time(), "pid": os.getpid()}) + "\n")


def release_memory() -> None:
    """Give back what a finished run left before the next one runs in this process (Tune reuses a
    trial's process, running each trial in a new thread): its reference cycles (the network,
    optimizer and ensemble are in some), then the freed heap glibc keeps in that thread's arena
    (malloc_trim; where the C library has none, only the cycles)."""
    import ctypes
    import gc

    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)

class RayAddressError(UserError):
    """A Ray address that does not answer; the message names it and what to do."""


def ray_address(address: str | None) -> str:
    """What to pass to ray.init: `address` or $RAY_ADDRESS (`ray job submit` sets it), checked to
    answer within RAY_CONNECT_TIMEOUT_S; `auto` the machine's running cluster (`ray start`);
    neither: "local", a fresh Ray of this process's own, never a cluster a stale
    /tmp/ray/ray_current_cluster file still names."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None or address == "local":
        return "local"
    target = address
    if address == "auto":
        from ray._common.utils import get_ray_address_file
        from ray._private.utils import read_ray_address

        target = read_ray_address()
        if not target:
            raise RayAddressError("--address auto: no Ray cluster runs on this machine (no ray_current_cluster "
                                  "file); start one with `ray start --head`, or leave --address out for a local Ray")
    host, _, port = target.split("://")[-1].rpartition(":")
    if not port.isdigit():
        raise RayAddressError(f"Ray address {target!r} is not HOST:PORT (or auto, or ray://HOST:PORT)")
    deadline = time.monotonic() + RAY_CONNECT_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=2).close()
            return address
        except OSError as exc:
            if time.monotonic() >= deadline:
                origin = f" (named by {get_ray_address_file(None)}, left by a Ray that stopped without " \
                         "`ray stop`)" if address == "auto" else ""
                raise RayAddressError(
                    f"no Ray answers at {target}{origin} after {RAY_CONNECT_TIMEOUT_S:.0f} s ({exc.strerror or exc}): "
                    "start the cluster (`ray start --head`), fix --address / $RAY_ADDRESS, "
                    "or leave both unset for a local Ray") from None
            time.sleep(1)


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join `address` / $RAY_ADDRESS (see `ray_address`), else start a local Ray; then keep the
    console quiet unless verbose. Idempotent."""
    if ray.is_initialized():
        return
    address = ray_address(address)
    if address == "local":
        stop_orphaned_ray()
        # One machine has no node to drain: Ray Train's preemption watcher would be one more actor
        # process per worker group (~1.5 s of CPU). Set before ray.init: the local Ray's workers inherit it.
        os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")
    # Ray Train's controller polls its workers every 2 s by default, so a run's end (and each
    # worker-group step) is noticed up to 2 s late; Ray Train hands this setting on to its controller.
    os.environ.setdefault(TRAIN_POLL_ENV, "0.5")
    quiet = not verbose()
    if quiet:  # before ray.init: a local Ray's workers inherit it
        os.environ.setdefault(RAY_DATA_LOGGING_CONFIG, str(QUIET_RAY_DATA_LOGGING))
    kwargs = {"logging_level": logging.ERROR if quiet else logging.WARNING, "log_to_driver": True}
    if address == "local":
        # A command's own Ray lives as long as the command: its dashboard would be ~1 s more of start
        # and a few seconds of CPU beside the run's start on 2 cores (a cluster's head keeps one).
        kwargs["include_dashboard"] = False
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    if address != "local" and os.environ.get(TIMELINE_ENV):
        # A local Ray's workers inherit the variable; a joined cluster's get it through the job.
        kwargs["runtime_env"] = {"env_vars": {TIMELINE_ENV: os.environ[TIMELINE_ENV]}}
    ray.init(address=address, **kwargs)
    if address == "local":
        _record_session()
    _tighten_token_file()
    if quiet:
        quiet_console()


def quiet_console() -> None:
    """Of what Ray streams to this driver from workers, actors and raylets, print only the lines
    of `say` (unprefixed); keep Ray Data's console at errors (it logs each dataset's execution
    plan and progress at INFO). All of it stays in Ray's log files."""
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    # Ray's own switch for its log printing (ray.util.rpdb uses it): off for worker output and
    # raylet messages alike. tests/test_runtime.py checks both hooks on the installed Ray.
    worker._worker_logs_enabled = False

    def project_lines(batch: dict) -> None:
        for line in batch.get("lines", ()):
            if line.startswith(PROJECT_LINE):
                print(line[len(PROJECT_LINE):], file=sys.stderr if batch.get("is_err") else sys.stdout, flush=True)

    global_worker_stdstream_dispatcher.remove_handler(PROJECT_HANDLER)
    global_worker_stdstream_dispatcher.add_handler(PROJECT_HANDLER, project_lines)
    # Ray Data configured its loggers when imported; it reconfigures them from the file set above.
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.ERROR)


def stop_ray() -> None:
    """Stop (or leave) this process's Ray at a command's end, ~1.4 s sooner than Python's exit would:
    Ray's exit hook first waits 0.5 s for log lines that a quiet console does not show, then stops
    the GCS before the autoscaler monitor of a local Ray, which on SIGTERM tries to tell that GCS
    of its end and is killed after a second. The monitor of a Ray this process started is killed
    first (it keeps nothing). Verbose, Ray's exit hook runs as it is, so that its last lines print."""
    if verbose() or not ray.is_initialized():
        return
    node = ray._private.worker._global_node
    if node is not None and node.is_head():
        from ray._private.ray_constants import PROCESS_TYPE_MONITOR

        node._kill_process_type(PROCESS_TYPE_MONITOR, allow_graceful=False, check_alive=False)
    ray.shutdown()


# --- Ray processes left by a killed driver ------------------------------------------------------
# A local Ray's processes end with the driver that started it, unless the driver is killed with
# SIGKILL: then its dashboard and runtime-env agents (~250 MB) live on and ignore SIGTERM. Each
# local Ray a cxr command starts is recorded in a private folder; the next local start (or
# `cxr clean`) stops the processes of every recorded session whose driver is gone. A Ray process
# is known by the files it holds open in its session folder (its logs): agents rename themselves.

def sessions_dir() -> Path | None:
    """The private folder of session records (None where it cannot be made: nothing is recorded)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "cxr-orchestra" / "ray-sessions"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return folder


def _record_session() -> None:
    import atexit
    import json

    import psutil

    folder = sessions_dir()
    if folder is None:
        return
    session = ray._private.worker._global_node.get_session_dir_path()
    record = folder / f"{os.getpid()}-{Path(session).name}.json"
    record.write_text(json.dumps({"driver_pid": os.getpid(), "driver_started": psutil.Process().create_time(),
                                  "session_dir": session}))
    atexit.register(record.unlink, missing_ok=True)


def session_processes(session_dir: str) -> list:
    """This user's processes that hold files open in `session_dir` (psutil.Process objects)."""
    import psutil

    inside = os.path.join(session_dir, "")
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.info["uids"] is None or process.info["uids"].real != os.getuid() or process.pid == os.getpid():
                continue
            if any(f.path.startswith(inside) for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def stop_orphaned_ray() -> list[tuple[str, int]]:
    """Stop the processes of recorded local Ray sessions whose driver no longer runs; returns
    (session folder, processes stopped) for each. Only the records are removed; Ray's session
    folders and logs stay."""
    import json

    import psutil

    stopped, folder = [], sessions_dir()
    for record in sorted(folder.glob("*.json")) if folder else []:
        try:
            entry = json.loads(record.read_text())
            driver = psutil.Process(int(entry["driver_pid"]))
            if abs(driver.create_time() - float(entry["driver_started"])) < 1:
                continue  # still running
        except psutil.NoSuchProcess:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a record this code wrote: left alone
        processes = session_processes(str(entry["session_dir"]))
        for process in processes:
            try:
                process.kill()  # they ignore SIGTERM
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=10)
        record.unlink(missing_ok=True)
        stopped.append((str(entry["session_dir"]), len(processes)))
    return stopped


def _tighten_token_file() -> None:
    # A local ray.init() writes its auth token (~/.ray/auth_token) readable by the group and others.
    token = Path.home() / ".ray" / "auth_token"
    if token.exists() and token.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        token.chmod(0o600)


class ClusterStorageError(UserError):
    """A path or store that the nodes of a multi-node cluster cannot all reach."""


class ClusterResourceError(UserError):
    """Workers (and a sweep's trial drivers beside them) that this cluster can never place."""


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _node_name(node: dict) -> str:
    """IP and the start of the node id: nodes may share an IP (several on one machine)."""
    return f"{node['NodeManagerAddress']} ({node['NodeID'][:8]})"


def check_resources(per_worker: dict[str, float], workers: int, placement: str,
                    nodes: list[dict] | None = None, *, trials: int = 1, trial_driver_cpus: float = 0.0) -> None:
    """Fail now, naming what is short, when `workers` workers of `per_worker` resources can never be
    placed on the cluster's `nodes` (default: the alive ones, as `ray.nodes()` lists them): Ray
    would wait for them forever. A sweep passes `trials`, the trainings it runs at once, each beside
    a trial driver of `trial_driver_cpus` (0 where the trial trains itself): they must fit together.
    (An autoscaling cluster is judged by the nodes it has now.)"""
    nodes = [n["Resources"] | {"address": _node_name(n)} for n in (nodes if nodes is not None else _alive_nodes())]
    listing = "; ".join(f"{n['address']}: " + ", ".join(f"{n.get(r, 0):g} {r}" for r in per_worker) for n in nodes)
    fits = [min(int(n.get(r, 0) / need + 1e-9) for r, need in per_worker.items()) for n in nodes]
    # STRICT_SPREAD puts each training's workers on distinct nodes: a node holds one per training.
    placeable = sum(min(f, trials) for f in fits) if placement == "STRICT_SPREAD" else sum(fits)
    wanted = ", ".join(f"{need:g} {r}" for r, need in per_worker.items())
    who = f"{workers} training worker(s) of {wanted} each"
    if trials > 1:
        driver = f" and a {trial_driver_cpus:g}-CPU trial driver" if trial_driver_cpus else ""
        who = f"--max-concurrent {trials} trials, each of {who}{driver},"
    if placeable < workers * trials:
        raise ClusterResourceError(
            f"{who} cannot be placed: this cluster has room for {placeable} worker(s)"
            f"{' on distinct nodes' if placement == 'STRICT_SPREAD' else ''} ({listing}). Lower "
            + ("--max-concurrent, " if trials > 1 else "")
            + "train.workers (or train.min_workers) or train.cpus_per_worker, or add nodes")
    cpus = sum(n.get("CPU", 0) for n in nodes)
    per_trial = workers * per_worker.get("CPU", 0) + trial_driver_cpus
    if trials > 1 and trials * per_trial > cpus + 1e-9:
        most = int(cpus / per_trial + 1e-9) if per_trial else trials
        smaller = int((cpus / trials - trial_driver_cpus) / workers * 100 + 1e-9) / 100
        raise ClusterResourceError(
            f"{who} need {trials * per_trial:g} CPU, more than the cluster's {cpus:g} ({listing}): the last "
            f"trials would wait forever. Lower --max-concurrent to {most}"
            + (f" or train.cpus_per_worker to {smaller:g} or less" if smaller > 0 else "") + ", or add a node with CPUs")


def check_shared_storage(paths: dict[str, str], tracking_uri: str) -> None:
    """On a multi-node cluster, every node must see the prepared data and the checkpoint storage,
    and the MLflow store must be a server, not a local file. Say so instead of hanging."""
    nodes = _alive_nodes()
    if len(nodes) <= 1:
        return
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise ClusterStorageError(
            f"MLflow tracking URI {tracking_uri!r} is a local file, but this cluster has {len(nodes)} nodes "
            "and rank 0 may run on any of them: start an MLflow server and set MLFLOW_TRACKING_URI"
        )
    local = {name: path for name, path in paths.items() if "://" not in path}
    if not local:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def visible(to_check: dict[str, str]) -> list[str]:
        return [name for name, path in to_check.items() if not os.path.exists(path)]

    for node in nodes:
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        missing = ray.get(visible.options(scheduling_strategy=strategy).remote(local))
        if missing:
            raise ClusterStorageError(
                f"node {_node_name(node)} cannot see {', '.join(f'{m} {local[m]}' for m in missing)}: "
                "on a multi-node cluster use a shared filesystem or an object-store URI"
            )


Result = TypeVar("Result")


def on_own_thread(work: Callable[[], Result]) -> Result:
    """`work()` (a Ray Train or Tune fit) on a thread of its own while this one waits. On the main
    thread both install a SIGINT handler of their own: Ctrl-C then ends the run FAILED instead of
    reaching `exit_on_signals`, and Ray Train's handler keeps the finished run's controller actor
    alive for as long as the process lives. Off the main thread they install none."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # raised again on the waiting thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="cxr-fit", daemon=True)
    thread.start()
    thread.join()  # a signal's handler still runs here, on the main thread
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def exit_on_signals(on_signal, enabled: bool = True):
    """On SIGTERM / SIGINT: call `on_signal(name)` (which ends MLflow runs KILLED), then exit with
    128 + the signal number.

    Exiting from the handler is deliberate: an exception raised there surfaces inside Ray's
    blocking calls as a SystemError. The driver's exit takes its Ray workers down with it; the
    last checkpoint stays, and the same command resumes. Enter after ray.init(): Ray's core
    installs its own SIGTERM handler, which would abort."""
    if not enabled:
        yield
        return

    def handler(signum, frame):
        on_signal(signal.Signals(signum).name)
        os._exit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
