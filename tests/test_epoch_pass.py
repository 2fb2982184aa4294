"""An epoch is one pass over the internal training split: every internal train image trained on
exactly once per epoch, across all workers, in a new order each epoch; external domains cycle.

The share arithmetic is checked without Ray; the feed itself on real Ray Data streams, with one
worker in this process and with two real Ray Train workers running `worker_batches`, the function
`cxr train`'s workers call."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_training

from orchestration.settings.plan import pass_steps
from orchestration.training.feed import DomainBatches, InternalPasses, InternalShare, training_columns


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
    """The two calls InternalPasses makes of a prepared dataset, over Parquet files written here."""

    def __init__(self, folder: Path, ids: np.ndarray, files: int):
        import pyarrow as pa
        import pyarrow.parquet as pq

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


def test_a_run_resumed_at_an_epoch_end_gets_the_internal_batches_of_one_never_stopped(tmp_path):
    ids = np.arange(40)
    shards = _Shards(tmp_path, ids, files=3)

    def batches(first_epoch):
        internal = InternalPasses(shards, "nih", ["sample_id", "image"], InternalShare(ids, rank=1, world=2, seed=0),
                                  shuffle_buffer=8, seed=5)
        return DomainBatches(["nih"], [], internal, [], per_domain=4, image_size=1, shuffle_buffer=8,
                             first_epoch=first_epoch)

    def steps(b, n):
        return [b._internal_table().column("sample_id").to_pylist() for _ in range(n)]

    uninterrupted, resumed = batches(0), batches(1)
    assert uninterrupted.steps_per_epoch == 5  # 20 rows of rank 1 in batches of 4
    steps(uninterrupted, 5)
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


def _pass_worker(loop_config: dict) -> None:
    import ray.train

    from data_prep.prepared import PreparedDataset
    from orchestration.settings.config import Config
    from orchestration.settings.plan import TrainingPlan
    from orchestration.training.worker import worker_batches

    config, plan = Config.model_validate(loop_config["config"]), TrainingPlan(**loop_config["plan"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    batches = worker_batches(config, plan, PreparedDataset.load(plan.data), rank=rank,
                             world=context.get_world_size(), first_epoch=0)
    seen = _epoch_ids(batches, 2, plan.per_domain_batch)
    Path(loop_config["out"], f"rank{rank}.json").write_text(json.dumps(seen))


def _internal_train_ids(prepared_dir, domain):
    from data_prep.prepared import PreparedDataset

    table = PreparedDataset.load(prepared_dir).read_columns(domain, "train", ["sample_id"])
    return sorted(table.column("sample_id").to_pylist())


@pytest.mark.slow
def test_one_worker_scores_every_internal_image_once_per_epoch(prepared_dir, tmp_path):
    from data_prep.prepared import PreparedDataset
    from orchestration.settings.config import load_config
    from orchestration.settings.plan import plan_training
    from orchestration.training.train import training_datasets

    config = load_config([], tiny_training(tmp_path))
    plan = plan_training(config, prepared_dir)
    streams = training_datasets(config, plan)
    assert list(streams) == ["train_chexpert"]  # the internal split is read by the workers themselves
    ids = _internal_train_ids(prepared_dir, "nih")
    share = InternalShare(np.array(ids), rank=0, world=1, seed=config.train.seed)
    internal = InternalPasses(PreparedDataset.load(prepared_dir), "nih", training_columns(plan.label_space), share,
                              shuffle_buffer=16, seed=1)
    batches = DomainBatches(plan.domains, plan.label_space, internal, [streams["train_chexpert"].iterator()],
                            per_domain=plan.per_domain_batch, image_size=32, shuffle_buffer=16, seed=1)
    assert batches.steps_per_epoch == plan.steps_per_epoch == -(-len(ids) // plan.per_domain_batch)
    seen = _epoch_ids(batches, 2, plan.per_domain_batch)
    for epoch in seen:
        assert sorted(epoch["internal"]) == ids
    assert seen[0]["internal"] != seen[1]["internal"]  # a fresh order each epoch
    external = set(_internal_train_ids(prepared_dir, "chexpert"))
    assert set(seen[0]["external"] + seen[1]["external"]) <= external


@pytest.mark.slow
def test_two_workers_together_score_every_internal_image_once_per_epoch(prepared_dir, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestration.settings.config import load_config
    from orchestration.settings.plan import plan_training
    from orchestration.training.train import data_config, training_datasets

    config = load_config([], tiny_training(tmp_path, **{"train.workers": 2}))
    plan = plan_training(config, prepared_dir)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    TorchTrainer(
        _pass_worker,
        train_loop_config={"config": config.model_dump(mode="json"), "plan": plan.to_dict(), "out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="pass", storage_path=str(tmp_path / "ray_results")),
        datasets=training_datasets(config, plan),
        dataset_config=data_config(config, plan),
    ).fit()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    ids = _internal_train_ids(prepared_dir, "nih")
    for epoch in range(2):
        both = ranks[0][epoch]["internal"] + ranks[1][epoch]["internal"]
        assert sorted(both) == ids, epoch  # each internal image once, by one of the two workers
        assert abs(len(ranks[0][epoch]["internal"]) - len(ranks[1][epoch]["internal"])) <= 1
    assert set(ranks[0][0]["internal"]) != set(ranks[0][1]["internal"])  # dealt afresh each epoch
    # The external stream is split between the workers: no image on both in one pass.
    external = set(_internal_train_ids(prepared_dir, "chexpert"))
    first = [set(r[0]["external"][: len(external) // 2 - 4]) for r in ranks]
    assert first[0] <= external and first[1] <= external and not first[0] & first[1]


def test_the_ingest_options_split_the_external_streams_without_a_deprecation_warning(tmp_path):
    import warnings

    from orchestration.settings.config import load_config
    from orchestration.training.train import data_config

    config = load_config([], ["train.reproducible_order=true"])
    plan = type("Plan", (), {"domains": ["nih", "chexpert", "inhouse"]})()  # data_config reads the domain names
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ingest = data_config(config, plan)
    assert not [w for w in caught if "exclude_resources" in str(w.message)]
    assert ingest._datasets_to_split == ["train_chexpert", "train_inhouse"]
    assert ingest._resolve_execution_options("train_chexpert").preserve_order is True
