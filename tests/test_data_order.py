"""Training sees well-shuffled data: `cxr prepare` writes rows in a seeded random order and the
training feed shuffles within a buffer of `train.shuffle_buffer` rows. On NIH-like data whose
source lists images patient by patient (6-10 images each), checked on the stored shards and on the
batches the training loop's `DomainBatches` builds from the same shards."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from data_prep.config import PrepareConfig, SourceConfig
from data_prep.join import load_sources
from data_prep.pipeline import run_prepare
from data_prep.synth import synth_nih
from orchestration.settings.config import load_config
from orchestration.settings.plan import plan_training
from orchestration.training.feed import DomainBatches, InternalPasses, InternalShare, training_columns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nih_only(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("order")
    synth_nih(root / "nih", 1200, 32, np.random.default_rng(0), images_per_patient=(6, 10))
    config = PrepareConfig(sources=[SourceConfig(name="nih", kind="nih", path=root / "nih")], image_size=32)
    return run_prepare(load_sources(config), config, root / "prepared")


def test_shards_hold_rows_in_a_random_order(nih_only):
    stored = nih_only.read_columns("nih", "train", ["sample_id", "patient_id"]).to_pandas()
    # Source order is sample_id order: the NIH table sorted by image name, i.e. by patient.
    rho = spearmanr(np.arange(len(stored)), stored["sample_id"]).statistic
    assert len(stored) > 800 and abs(rho) < 0.1, rho
    # A few rows by sample_id (what cxr explain reads): exactly those, with their own columns.
    wanted = stored.sample(5, random_state=0)
    few = nih_only.read_columns("nih", "train", ["sample_id", "patient_id"], sample_ids=wanted["sample_id"]).to_pandas()
    assert few.sort_values("sample_id").reset_index(drop=True).equals(
        wanted.sort_values("sample_id").reset_index(drop=True))


def test_training_batches_mix_patients(nih_only):
    config = load_config(updates={"train.domains": ["nih"], "train.batch_size": 16, "method.adversarial": "none"})
    plan = plan_training(config, nih_only.root)
    ids = nih_only.read_columns("nih", "train", ["sample_id"]).column("sample_id").to_numpy()
    internal = InternalPasses(nih_only, "nih", training_columns(plan.label_space),
                              InternalShare(ids, rank=0, world=1, seed=0), shuffle_buffer=config.train.shuffle_buffer,
                              seed=0)
    batches = DomainBatches(plan.domains, plan.label_space, internal, [], per_domain=plan.per_domain_batch,
                            image_size=nih_only.image_size)
    patient_of = nih_only.read_columns("nih", "train", ["sample_id", "patient_id"]).to_pandas() \
        .set_index("sample_id")["patient_id"]
    distinct = []
    for _ in range(30):
        images, labels, domains, ids = batches.next()
        # One exact pass of 870 rows in 55 steps: 15 or 16 rows a step.
        assert images.shape[1:] == (32, 32) and len(images) in (15, 16)
        assert labels.shape == (len(images), len(plan.label_space))
        distinct.append(patient_of.loc[ids.numpy()].nunique())
    assert np.mean(distinct) >= 14, distinct
