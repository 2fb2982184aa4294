"""How a one-worker `cxr train` keeps its checkpoints (`run_checkpoints.RunCheckpoints`), on a local disk
(an object store: tests/test_object_store.py): the newest complete one is resumed from, the latest
two are kept, and a folder cut short is never resumed from."""

from __future__ import annotations

import json
from pathlib import Path

import ray.train

from orchestration.training.run_checkpoints import RunCheckpoints


def _checkpoint(folder: Path, epoch: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "state.pt").write_bytes(bytes([epoch]) * 10)
    (folder / "progress.json").write_text(json.dumps({"epoch": epoch}))
    return folder


def _epoch(checkpoint: ray.train.Checkpoint) -> int:
    return json.loads((Path(checkpoint.path) / "progress.json").read_text())["epoch"]


def test_the_newest_two_are_kept_and_the_newest_is_resumed_from(tmp_path):
    keeper = RunCheckpoints(str(tmp_path / "runs"), "a-run")
    assert keeper.latest() is None  # a new run: no folder yet
    for epoch in (1, 2, 3):
        keeper.report({"epoch": epoch}, str(_checkpoint(tmp_path / f"e{epoch}", epoch)))
    kept = sorted((tmp_path / "runs" / "a-run").iterdir())
    assert [json.loads((k / "progress.json").read_text())["epoch"] for k in kept] == [2, 3]
    assert all(k.name.startswith("checkpoint_") for k in kept)
    assert (kept[1] / "state.pt").read_bytes() == bytes([3]) * 10
    assert sorted(f.name for f in kept[1].iterdir()) == ["progress.json", "state.pt"]  # the marker's staging name is gone
    assert _epoch(keeper.latest()) == 3 and Path(keeper.latest().path) == kept[1]
    keeper.report({"epoch": 4})  # metrics without a checkpoint keep nothing
    assert sorted((tmp_path / "runs" / "a-run").iterdir()) == kept


def test_a_checkpoint_cut_short_is_not_resumed_from_and_goes_when_older_than_the_kept_ones(tmp_path):
    keeper = RunCheckpoints(str(tmp_path), "a-run")
    old_cut = tmp_path / "a-run" / "checkpoint_2000-01-01_00-00-00.000000"  # a killed write, long ago
    new_cut = tmp_path / "a-run" / "checkpoint_9999-12-31_23-59-59.999999"  # the newest name, no progress.json
    for cut in (old_cut, new_cut):
        cut.mkdir(parents=True)
        (cut / "state.pt").write_bytes(b"half")
    assert keeper.latest() is None
    keeper.save(_checkpoint(tmp_path / "e1", 1))
    assert _epoch(keeper.latest()) == 1 and old_cut.exists()  # one complete checkpoint: nothing goes yet
    keeper.save(_checkpoint(tmp_path / "e2", 2))
    assert _epoch(keeper.latest()) == 2
    assert not old_cut.exists()  # older than both kept ones
    assert new_cut.exists()  # newer than every complete one: not ours to judge
