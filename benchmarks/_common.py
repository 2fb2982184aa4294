"""The frame every benchmark shares: its scratch folder, `cxr` commands run as a user types them,
and the one JSON line of figures it ends with (`ratio` and `target` included). Imports only the
standard library: the GPU benchmark runs where nothing else of the project's stack is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def work_folder(name: str, keep: Path | None = None, *, enter: bool = False) -> Iterator[Path]:
    """`keep` (left in place) or a fresh temporary folder (removed at the end); with `enter`, the
    benchmark runs inside it, since the MLflow store keeps artifact paths relative to where `cxr` ran."""
    folder = keep or Path(tempfile.mkdtemp(prefix=f"bench_{name}_"))
    folder.mkdir(parents=True, exist_ok=True)
    if enter:
        os.chdir(folder)
    try:
        yield folder.resolve()
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def cxr(*args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
    """One `cxr` command, as a user types it (in `env`, default this process's); its output goes to
    commands.log in `cwd`. On failure the log's last lines are shown: a temporary work folder goes
    with the exit."""
    command = [str(Path(sys.executable).with_name("cxr")), *args]
    with open(cwd / "commands.log", "a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        done = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join((cwd / "commands.log").read_text().splitlines()[-15:])
        sys.exit(f"{tail}\n`cxr {args[0]}` failed ({done.returncode}); see {cwd / 'commands.log'}")


def report(benchmark: str, *, ratio: float | None, target: float | None, **figures) -> None:
    """The benchmark's last line: one JSON object with its figures, `ratio` and `target`."""
    print(json.dumps({"benchmark": benchmark, **figures, "ratio": ratio, "target": target}), flush=True)
