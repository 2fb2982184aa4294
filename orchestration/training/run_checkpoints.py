"""Where a one-worker `cxr train` keeps its checkpoints. It runs its loop in one Ray task instead of
a TorchTrainer (`train.trains_alone`), so what Ray Train does with a run's checkpoints is done here:
they lie where Ray Train puts them, `train.storage_path/<run name>/checkpoint_<time>` (on a local
disk or an object store), the latest two are kept, and the run resumes from the newest complete one
(`progress.json` is written last: a folder cut short by a lost process is never resumed from).

A run's worker count is one of its settings, and resuming with another is refused (`open_run`): a
run's folder holds these checkpoints or Ray Train's, never both.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cxrcommon.storage import Folder

if TYPE_CHECKING:
    from ray.train import Checkpoint

CHECKPOINT_PREFIX = "checkpoint_"
# Written last: a checkpoint folder without it was cut short and is never resumed from.
COMPLETE_MARKER = "progress.json"
KEEP = 2


class RunCheckpoints:
    """The checkpoints of one run, in `storage/<run name>`."""

    def __init__(self, storage: str, run_name: str) -> None:
        self.folder = Folder.at(storage).child(run_name)

    def latest(self) -> Checkpoint | None:
        complete = self._complete(self.folder.folders(CHECKPOINT_PREFIX))
        return self._checkpoint(complete[-1]) if complete else None

    def report(self, metrics: dict, directory: str | None = None) -> None:
        """Keep the checkpoint in local folder `directory`, if any; the metrics are the task's to return."""
        if directory is not None:
            self.save(Path(directory))

    def save(self, directory: Path) -> None:
        """Copy a local checkpoint folder in as the newest, then drop all but the newest `KEEP`."""
        name = f"{CHECKPOINT_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S.%f}"
        target = self.folder.child(name)
        target.create()
        for file in directory.iterdir():
            if file.name != COMPLETE_MARKER:
                target.upload(file, file.name)
        # The marker last, under another name first: it appears whole or not at all.
        target.upload(directory / COMPLETE_MARKER, f".{COMPLETE_MARKER}")
        target.rename(f".{COMPLETE_MARKER}", COMPLETE_MARKER)
        names = self.folder.folders(CHECKPOINT_PREFIX)
        complete = self._complete(names)
        if len(complete) >= KEEP:  # the names sort by time: older ones, complete or cut short, go
            for old in names:
                if old < complete[-KEEP]:
                    self.folder.child(old).delete()

    def _complete(self, names: list[str]) -> list[str]:
        return [n for n in names if self.folder.child(n).exists(COMPLETE_MARKER)]

    def _checkpoint(self, name: str) -> Checkpoint:
        from ray.train import Checkpoint  # ~0.5 s of imports the task's first attempt does without

        folder = self.folder.child(name)
        return Checkpoint(folder.path, filesystem=folder.fs)
