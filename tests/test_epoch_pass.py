"""An epoch is one pass over the internal training split: every internal train image trained on
exactly once per epoch, across all workers, in a new order each epoch; external domains are dealt
out to the workers pass after pass and cycle.

The share arithmetic is checked on small Parquet files written here; the feed itself on a prepared
dataset through `worker_batches`, the function `cxr train`'s workers call (it reads the shards
with pyarrow: no Ray in it), for one worker and for each of two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_training

from orchestration.settings.plan import pass_steps
from orchestration.training.feed import DomainBatches, ExternalPasses, InternalPasses, InternalShare


@pytest.mark.parametrize("rows,world,per_domain", [(33, 2, 16), (80, 1, 32), (57, 3, 4), (8, 2, 4)])
def test_ranks_share_each_pass_exactly_and_finish_together(rows, world, per_domain):
    ids = np.arange(100, 100 + rows)
    steps = pass_steps(rows, world, per_domain)
    # Worked by hand: 33 rows on 2 ranks -> shares of 17 and 16 -> 2 steps of at most 16.
    assert pass_steps(33, 2, 16) == 2 and pass_steps(80, 1, 32) == 3 and pass_steps(57, 3, 4) == 5
    shares = [InternalShare(ids, rank=r, world=world, seed=7) for r in range(world)]
    for pass_index in (0, 1):
        taken = np.concatenate([ids[s.rows_of(pass_index)[ids]] for s in shares])
        assert sorted(taken.tolist()) == ids.tolist()  # every row once, none twice
    for share in shares:
        sizes = share.step_sizes(steps)
        assert len(sizes) == steps and sizes.sum() == share.size and sizes.max() <= per_domain
        assert sizes.max() - sizes.min() <= 1
    assert sum(s.size for s in shares) == rows
    # A new deal each pass: rank 0's rows differ between passes (1 in C(rows, share) to match).
    if world > 1:
        assert not np.array_equal(shares[0].rows_of(0), shares[0].rows_of(1))


class _Shards:
    """The two calls InternalPasses and ExternalPasses make of a prepared dataset, over Parquet
    files written here."""

    def __init__(self, folder: Path, ids: np.ndarray, files: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder.mkdir(parents=True, exist_ok=True)
        self.paths = []
        for i, part in enumerate(np.array_split(ids, files)):
            self.paths.append(folder / f"part{i}.parquet")
            pq.write_table(pa.table({"sample_id": part, "image": [b"x"] * len(part)}), self.paths[-1])

    def shard_files(self, domain, split):
        return self.paths

    def read_shard(self, path, columns):
        import pyarrow.parquet as pq

        return pq.read_table(path, columns=columns)


def test_internal_passes_give_each_rank_its_share_in_a_new_order_each_pass(tmp_path):
    ids = np.arange(500, 590)
    shards = _Shards(tmp_path, ids, files=6)
    passes = [InternalPasses(shards, "nih", ["sample_id", "image"], InternalShare(ids, rank=r, world=2, seed=3),
                             shuffle_buffer=20, seed=r) for r in range(2)]
    seen = {(r, p): [t.column("sample_id").to_pylist() for t in passes[r].rows(p)] for r in range(2) for p in range(2)}
    for p in range(2):
        rank0, rank1 = (sum(seen[r, p], []) for r in range(2))
        assert sorted(rank0 + rank1) == ids.tolist() and len(rank0) == len(rank1) == 45  # each row once a pass
        assert set(rank0) == set(ids[passes[0].share.rows_of(p)[ids]].tolist())
    # Tables of at least the buffer's 20 rows (the last of a pass may be smaller), shuffled within:
    # six files of 15 rows, 7 or 8 of them a rank's, so a table spans three files' shares.
    assert all(len(t) >= 20 for t in seen[0, 0][:-1]) and len(seen[0, 0]) <= 3
    assert sum(seen[0, 0], []) != sorted(sum(seen[0, 0], []))
    assert sum(seen[0, 0], []) != sum(seen[0, 1], [])  # a new order (and deal) each pass
    again = InternalPasses(shards, "nih", ["sample_id", "image"], InternalShare(ids, rank=0, world=2, seed=3),
                           shuffle_buffer=20, seed=0)
    assert [t.column("sample_id").to_pylist() for t in again.rows(1)] == seen[0, 1]  # seeded: the same again


def _ids(tables) -> list[int]:
    return [i for t in tables for i in t.column("sample_id").to_pylist()]


@pytest.mark.parametrize("files", [7, 1])
def test_external_passes_deal_the_ranks_disjoint_parts_that_make_the_split(tmp_path, files):
    """7 files: whole files dealt to 3 ranks in a seeded order; 1 file: cut into 3 row slices."""
    ids = np.arange(1000, 1070)
    shards = _Shards(tmp_path, ids, files=files)

    def passes(rank):
        return ExternalPasses(shards, "chexpert", ["sample_id", "image"], rank=rank, world=3, seed=11,
                              shuffle_seed=rank, shuffle_buffer=16)

    ranks = [passes(r) for r in range(3)]
    seen = {(r, p): _ids(ranks[r].rows(p)) for r in range(3) for p in range(3)}
    for p in range(3):
        together = sum((seen[r, p] for r in range(3)), [])
        assert sorted(together) == ids.tolist()  # disjoint, and the whole split
        assert [ranks[r].pass_rows(p) for r in range(3)] == [len(seen[r, p]) for r in range(3)]
    if files == 7:  # a rank's rows are whole files of 10, a different set of files each pass
        assert all(len(seen[r, p]) % 10 == 0 for r in range(3) for p in range(3))
        assert set(seen[0, 0]) != set(seen[0, 1]) or set(seen[0, 1]) != set(seen[0, 2])
    else:  # 70 rows cut in 3: 24, 23, 23
        assert sorted(len(seen[r, 0]) for r in range(3)) == [23, 23, 24]
    assert seen[0, 0] != sorted(seen[0, 0])  # shuffled within the buffer
    assert _ids(passes(1).rows(2)) == seen[1, 2]  # seeded: the same again
    # Endless: pass after pass; from row 30, as a resumed run continues.
    endless = ranks[2].endless()
    first = [i for _, t in zip(range(40), endless) for i in t.column("sample_id").to_pylist()]
    assert first[: len(seen[2, 0]) + len(seen[2, 1])] == seen[2, 0] + seen[2, 1]
    resumed = passes(2).endless(skip=30)
    assert [i for _, t in zip(range(40), resumed) for i in t.column("sample_id").to_pylist()][:20] == first[30:50]


def test_a_rank_whose_part_of_a_tiny_split_is_empty_in_a_pass_goes_on_and_an_empty_split_is_named(tmp_path):
    """Two rows in one file, three ranks: rank 2's row slice is empty in some passes (skipped);
    a split without rows fails, naming the domain, instead of reading empty passes forever."""
    some = ExternalPasses(_Shards(tmp_path, np.arange(2), files=1), "vindr", ["sample_id"], rank=2, world=3, seed=0,
                          shuffle_seed=0, shuffle_buffer=4)
    assert {some.pass_rows(p) for p in range(8)} == {0, 1}
    assert [len(t) for _, t in zip(range(5), some.endless())] == [1] * 5
    none = ExternalPasses(_Shards(tmp_path / "empty", np.arange(0), files=1), "vindr", ["sample_id"], rank=0,
                          world=1, seed=0, shuffle_seed=0, shuffle_buffer=4)
    with pytest.raises(RuntimeError, match="domain 'vindr' has no training rows to read"):
        next(none.endless())


def test_a_run_resumed_at_an_epoch_end_gets_the_batches_of_one_never_stopped(tmp_path):
    ids, external_ids = np.arange(40), np.arange(100, 131)
    shards, external = _Shards(tmp_path, ids, files=3), _Shards(tmp_path / "ext", external_ids, files=4)

    def batches(first_epoch, steps_done):
        internal = InternalPasses(shards, "nih", ["sample_id", "image"], InternalShare(ids, rank=1, world=2, seed=0),
                                  shuffle_buffer=8, seed=5)
        chexpert = ExternalPasses(external, "chexpert", ["sample_id", "image"], rank=1, world=2, seed=3,
                                  shuffle_seed=4, shuffle_buffer=8)
        return DomainBatches(["nih", "chexpert"], [], internal, [chexpert], per_domain=4, image_size=1,
                             first_epoch=first_epoch, steps_done=steps_done)

    def steps(b, n):
        return [(b._internal_table().column("sample_id").to_pylist(), b.externals[0].take(4).column("sample_id")
                 .to_pylist()) for _ in range(n)]

    uninterrupted, resumed = batches(0, 0), batches(1, 5)
    assert uninterrupted.steps_per_epoch == 5  # 20 rows of rank 1 in batches of 4
    first_epoch = steps(uninterrupted, 5)
    # Rank 1's part of the external split is 15 or 16 rows a pass: the epochs cross pass ends.
    assert {i for _, e in first_epoch for i in e} <= set(external_ids.tolist())
    assert steps(resumed, 5) == steps(uninterrupted, 5)


def _epoch_ids(batches: DomainBatches, epochs: int, per_domain: int) -> list[dict[str, list[int]]]:
    seen = []
    for _ in range(epochs):
        internal, external = [], []
        for _ in range(batches.steps_per_epoch):
            _, _, domain, ids = batches.next()
            internal += ids[domain == 0].tolist()
            external += ids[domain == 1].tolist()
            assert int((domain == 1).sum()) == per_domain  # external streams: full batches, cycling
        seen.append({"internal": internal, "external": external})
    return seen


def _internal_train_ids(prepared_dir, domain):
    from data_prep.prepared import PreparedDataset

    table = PreparedDataset.load(prepared_dir).read_columns(domain, "train", ["sample_id"])
    return sorted(table.column("sample_id").to_pylist())


def _worker_epochs(prepared_dir, tmp_path, workers: int) -> list[list[dict[str, list[int]]]]:
    """Two epochs of each rank's ids, from the batches each worker of `cxr train` would build."""
    from data_prep.prepared import PreparedDataset
    from orchestration.settings.config import load_config
    from orchestration.settings.plan import plan_training
    from orchestration.training.worker import worker_batches

    config = load_config([], tiny_training(tmp_path, **{"train.workers": workers}))
    plan = plan_training(config, prepared_dir)
    prepared = PreparedDataset.load(prepared_dir)
    ranks = []
    for rank in range(workers):
        batches = worker_batches(config, plan, prepared, rank=rank, world=workers, first_epoch=0)
        assert batches.steps_per_epoch == plan.steps_per_epoch
        ranks.append(_epoch_ids(batches, 2, plan.per_domain_batch))
    return ranks


def test_one_worker_scores_every_internal_image_once_per_epoch(prepared_dir, tmp_path):
    [seen] = _worker_epochs(prepared_dir, tmp_path, 1)
    ids = _internal_train_ids(prepared_dir, "nih")
    for epoch in seen:
        assert sorted(epoch["internal"]) == ids
    assert seen[0]["internal"] != seen[1]["internal"]  # a fresh order each epoch
    external = set(_internal_train_ids(prepared_dir, "chexpert"))
    assert set(seen[0]["external"] + seen[1]["external"]) <= external


def test_two_workers_together_score_every_internal_image_once_per_epoch(prepared_dir, tmp_path):
    ranks = _worker_epochs(prepared_dir, tmp_path, 2)
    ids = _internal_train_ids(prepared_dir, "nih")
    for epoch in range(2):
        both = ranks[0][epoch]["internal"] + ranks[1][epoch]["internal"]
        assert sorted(both) == ids, epoch  # each internal image once, by one of the two workers
        assert abs(len(ranks[0][epoch]["internal"]) - len(ranks[1][epoch]["internal"])) <= 1
    assert set(ranks[0][0]["internal"]) != set(ranks[0][1]["internal"])  # dealt afresh each epoch
    # The external split is dealt between the workers: no image on both in one pass (each rank's
    # part of a pass is at least a third of the split here: one file cut in two, or whole files).
    external = set(_internal_train_ids(prepared_dir, "chexpert"))
    first = [set(r[0]["external"][: len(external) // 3]) for r in ranks]
    assert first[0] <= external and first[1] <= external and not first[0] & first[1]
