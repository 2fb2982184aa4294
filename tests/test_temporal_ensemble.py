"""Temporal ensemble (eq. 4): Z, z and per-sample bias correction over 3 epochs, by hand (γ = 0.5)."""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cxrmodel.temporal_ensemble import TemporalEnsemble


def _z(ensemble, ids):
    z, has = ensemble.targets(torch.tensor(ids))
    return z[:, 0].tolist(), has.tolist()


def test_three_epochs_samples_seen_at_different_rates():
    e = TemporalEnsemble(num_samples=3, num_findings=1, gamma=0.5)
    assert _z(e, [0, 1, 2])[1] == [False, False, False]  # no target before the first update

    # Epoch 1: sample 0 predicts 0.8, sample 1 predicts 0.4, sample 2 unseen.
    e.record(torch.tensor([0, 1]), torch.tensor([[0.8], [0.4]]))
    assert e.end_epoch() == 2
    # Z0 = 0.5*0 + 0.5*0.8 = 0.4, t=1: z0 = 0.4 / (1 - 0.5) = 0.8; Z1 = 0.2: z1 = 0.4
    z, has = _z(e, [0, 1, 2])
    assert z[:2] == pytest.approx([0.8, 0.4]) and has == [True, True, False]

    # Epoch 2: sample 0 seen twice (0.5 and 0.7, mean 0.6); sample 1 not seen.
    e.record(torch.tensor([0]), torch.tensor([[0.5]]))
    e.record(torch.tensor([0]), torch.tensor([[0.7]]))
    e.end_epoch()
    # Z0 = 0.5*0.4 + 0.5*0.6 = 0.5, t=2: z0 = 0.5 / 0.75 = 0.6667; sample 1 unchanged, t=1: z1 = 0.4
    z, _ = _z(e, [0, 1])
    assert z == pytest.approx([0.5 / 0.75, 0.4])

    # Epoch 3: sample 0 predicts 0.2, sample 1 predicts 1.0.
    e.record(torch.tensor([0, 1]), torch.tensor([[0.2], [1.0]]))
    e.end_epoch()
    # Z0 = 0.25 + 0.1 = 0.35, t=3: z0 = 0.35 / 0.875 = 0.4; Z1 = 0.1 + 0.5 = 0.6, t=2: z1 = 0.6 / 0.75 = 0.8
    z, _ = _z(e, [0, 1])
    assert z == pytest.approx([0.4, 0.8])
    assert e.updates.tolist() == [3, 2, 0]
    assert e.Z[:, 0].tolist() == pytest.approx([0.35, 0.6, 0.0])


def test_state_round_trip_mid_epoch():
    e = TemporalEnsemble(4, 2, gamma=0.9)
    e.record(torch.tensor([1, 3]), torch.tensor([[0.2, 0.3], [0.9, 0.1]]))
    e.end_epoch()
    e.record(torch.tensor([2]), torch.tensor([[0.6, 0.6]]))  # a checkpoint taken mid-epoch
    restored = TemporalEnsemble(4, 2, gamma=0.5)
    restored.load_state_dict(e.state_dict())
    assert restored.gamma == 0.9
    for name in ("Z", "updates", "epoch_sum", "epoch_count"):
        assert torch.equal(getattr(restored, name), getattr(e, name))
    e.end_epoch()
    restored.end_epoch()
    assert torch.equal(restored.Z, e.Z)
    with pytest.raises(ValueError, match="does not match"):
        TemporalEnsemble(5, 2).load_state_dict(e.state_dict())


def test_gamma_is_validated():
    with pytest.raises(ValueError, match="gamma"):
        TemporalEnsemble(2, 2, gamma=1.0)


def _rank_main(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    e = TemporalEnsemble(3, 1, gamma=0.5)
    # Rank 0 saw samples 0 and 1 (0.8, 0.2); rank 1 saw sample 1 again (0.6) and sample 2 (0.4).
    if rank == 0:
        e.record(torch.tensor([0, 1]), torch.tensor([[0.8], [0.2]]))
    else:
        e.record(torch.tensor([1, 2]), torch.tensor([[0.6], [0.4]]))
    e.end_epoch()
    torch.save(e.Z, f"{out}.{rank}")
    dist.destroy_process_group()


def test_end_epoch_gathers_predictions_from_all_ranks(tmp_path):
    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path / "z")), nprocs=2, join=True)
    z0, z1 = torch.load(f"{tmp_path / 'z'}.0"), torch.load(f"{tmp_path / 'z'}.1")
    # Sample 1's epoch mean over both ranks: (0.2 + 0.6) / 2 = 0.4 -> Z = 0.5 * 0.4 = 0.2
    assert torch.equal(z0, z1)
    assert z0[:, 0].tolist() == pytest.approx([0.4, 0.2, 0.2])
