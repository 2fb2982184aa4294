"""Starting or joining Ray: a local Ray when no address is given, the cluster otherwise."""

from __future__ import annotations

import logging
import os
import stat
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
