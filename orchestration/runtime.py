"""Starting or joining Ray: a local Ray when no address is given, the cluster otherwise."""

from __future__ import annotations

import logging
import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import ray


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join `address` / $RAY_ADDRESS, else start a local Ray. Idempotent."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    _tighten_token_file()


def _tighten_token_file() -> None:
    # A local ray.init() writes its auth token world-readable (RAY_NOTES "Security").
    token = Path.home() / ".ray" / "auth_token"
    if token.exists() and token.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        token.chmod(0o600)


class ClusterStorageError(RuntimeError):
    """A path or store that the nodes of a multi-node cluster cannot all reach."""


def _alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


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
                f"node {node['NodeManagerAddress']} cannot see {', '.join(f'{m} {local[m]}' for m in missing)}: "
                "on a multi-node cluster use a shared filesystem or an object-store URI"
            )


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
