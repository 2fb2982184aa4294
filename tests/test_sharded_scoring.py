"""Validation and test are sharded across ranks: with 2 gloo ranks each scores only its share of
the batches, and the gathered probabilities (hence every metric) equal one rank's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrmodel.metrics import auc_report
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.scoring import score_split

pytestmark = pytest.mark.ray  # the session's prepared dataset is written with Ray Data


class Counting(torch.nn.Module):
    """A small deterministic scorer that counts the images it scores."""

    def __init__(self, findings: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(16, findings)
        self.images = 0

    def forward(self, x: torch.Tensor, domain: torch.Tensor | None = None):
        self.images += len(x)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return type("Out", (), {"logits": self.linear(pooled)})()


def _rank_main(rank: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    prepared = PreparedDataset.load(data)
    model = Counting(len(prepared.label_space))
    scored = score_split(model, prepared, "nih", "val", batch_size=2)
    np.savez(f"{out}.{rank}", sample_id=scored.sample_id, probs=scored.probs, labels=scored.labels,
             images=model.images)
    dist.destroy_process_group()


def test_two_ranks_score_disjoint_shares_and_gather_what_one_rank_scores(prepared_dir, tmp_path):
    prepared = PreparedDataset.load(prepared_dir)
    alone_model = Counting(len(prepared.label_space))
    alone = score_split(alone_model, prepared, "nih", "val", batch_size=2)
    total = prepared.num_samples("nih", "val")
    assert alone_model.images == total == len(alone.sample_id) and total >= 4

    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(prepared_dir), str(tmp_path / "scored")),
             nprocs=2, join=True)
    ranks = [np.load(f"{tmp_path / 'scored'}.{r}.npz") for r in range(2)]
    assert ranks[0]["images"] + ranks[1]["images"] == total  # each image scored once
    assert 0 < ranks[0]["images"] < total and 0 < ranks[1]["images"] < total
    for scored in ranks:  # both ranks hold the gathered whole, in sample order
        assert np.array_equal(scored["sample_id"], alone.sample_id)
        assert np.array_equal(scored["labels"], alone.labels)
        assert np.allclose(scored["probs"], alone.probs, atol=1e-6)
    names = prepared.label_space
    one = auc_report(alone.probs, alone.labels, names, evaluated=names, common=[], internal_only=names)
    two = auc_report(ranks[0]["probs"], ranks[0]["labels"], names, evaluated=names, common=[], internal_only=names)
    assert one.as_metrics("val_") == pytest.approx(two.as_metrics("val_"))
