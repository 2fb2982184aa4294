"""The training plan: β from the trained domains only, the ensemble's findings, refusals, and
`cxr train --dry-run` / `--plan-json` (no Ray), on a real prepared dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from typer.testing import CliRunner

from data_prep.prepared import MANIFEST_NAME, PreparedDataset
from orchestration.cli import app
from orchestration.settings.config import load_config
from orchestration.settings.plan import PlanError, plan_document, plan_training

runner = CliRunner()


def _counts(prepared: PreparedDataset, domains: list[str]) -> dict[str, tuple[int, int]]:
    """(P_c, N_c) per finding, counted here from the training shards of `domains`."""
    labels = np.concatenate([lab for d in domains for _, _, lab in prepared.iter_uint8_batches(d, "train", 64)])
    return {f: (int((labels[:, c] == 1).sum()), int((labels[:, c] == 0).sum()))
            for c, f in enumerate(prepared.label_space)}


@pytest.mark.parametrize("domains", [["nih"], ["nih", "chexpert"]])
def test_beta_comes_from_the_trained_domains_only(prepared_dir, domains):
    prepared = PreparedDataset.load(prepared_dir)
    plan = plan_training(load_config(updates={"train.domains": domains, "method.adversarial": "none"}), prepared_dir)
    counts = _counts(prepared, domains)
    for c, finding in enumerate(plan.label_space):
        positive, negative = counts[finding]
        assert (plan.positive[c], plan.negative[c]) == (positive, negative), finding
        assert plan.beta[c] == pytest.approx(negative / positive if positive else 1.0), finding
    everything = _counts(prepared, prepared.domains)  # what the old code pooled
    c = plan.label_space.index("Atelectasis")
    assert plan.beta[c] != pytest.approx(everything["Atelectasis"][1] / everything["Atelectasis"][0])
    # eq. 1's C: the findings the trained domains label.
    assert plan.trained == [f for f in plan.label_space if counts[f] != (0, 0)]


def test_ensemble_covers_the_internal_only_findings_by_default(prepared_dir):
    def plan(**updates):
        return plan_training(load_config(updates={"train.domains": ["nih", "chexpert"], **updates}), prepared_dir)

    default = plan()
    assert default.internal_only == ["Emphysema", "Fibrosis", "Hernia", "Infiltration", "Pleural Thickening",
                                     "Mass", "Nodule"]
    assert default.ensemble == default.internal_only
    assert default.ensemble_mask == [f in default.internal_only for f in default.label_space]
    wide = plan(**{"method.ensemble_findings": "all_unknown"})
    assert wide.ensemble == wide.trained and "Support Devices" in wide.ensemble
    assert "Tuberculosis" not in wide.ensemble  # no trained domain labels it
    off = plan(**{"method.temporal_ensemble": False, "method.uncertainty": False})
    assert off.ensemble == []


def test_a_finding_never_positive_in_the_trained_domains_is_refused(prepared_dir, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_dir, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["train_class_balance"]["nih"]["Hernia"] = {"positive": 0, "negative": 50}
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    single = load_config(updates={"train.domains": ["nih"], "method.adversarial": "none"})
    with pytest.raises(PlanError, match="'Hernia' has no positive training image"):
        plan_training(single, copy)
    plan_training(load_config(updates={"train.domains": ["nih", "inhouse"]}), copy)  # the in-house set has some


def test_dry_run_prints_and_writes_the_plan_without_ray_or_torch(prepared_dir, tmp_path):
    out = tmp_path / "plan.json"
    code = (
        "import sys; from orchestration.cli import app\n"
        f"app(['train', '--data', {str(prepared_dir)!r}, '--dry-run', '--plan-json', {str(out)!r}, "
        "'train.domains=[nih, chexpert]', 'train.epochs=4', 'train.batch_size=8'], standalone_mode=False)\n"
        "print('ray imported:', 'ray' in sys.modules, 'torch imported:', 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": "127.0.0.1:9"})  # a Ray that cannot answer
    assert done.returncode == 0, done.stderr
    assert "ray imported: False torch imported: False" in done.stdout  # a plan is numbers: no torch to load
    assert "training domains: nih (internal), chexpert (external)" in done.stdout
    assert "Adam LR" in done.stdout and "1e-05" in done.stdout  # the LR step after epoch 3

    document = json.loads(out.read_text())
    config = load_config(updates={"train.domains": ["nih", "chexpert"], "train.epochs": 4, "train.batch_size": 8})
    plan = plan_training(config, prepared_dir)
    assert document == json.loads(json.dumps(plan_document(config, plan)))
    assert document["domains"] == ["nih", "chexpert"] and document["internal"] == "nih"
    assert document["per_domain_batch"] == 4 and document["steps_per_epoch"] == plan.steps_per_epoch
    emphysema, effusion = document["findings"]["Emphysema"], document["findings"]["Effusion"]
    assert emphysema["group"] == "internal_only" and emphysema["ensemble"] and emphysema["alpha"] == 1.0
    assert effusion["group"] == "common" and not effusion["ensemble"] and effusion["alpha"] == 3.0
    assert effusion["beta"] == pytest.approx(effusion["negative"] / effusion["positive"])
    assert document["findings"]["Support Devices"]["group"] == "other"
    assert [row["lr"] for row in document["schedule"]] == pytest.approx([1e-4, 1e-4, 1e-4, 1e-5, 1e-5])
    assert [row["h"] for row in document["schedule"]] == pytest.approx([0.4, 0.325, 0.25, 0.175, 0.1])


def test_paper_grids_and_train_warn_without_imagenet_weights(tmp_path):
    result = runner.invoke(app, ["ablate", "--grid", "paper_default", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no model.weights" in result.output and "densenet121" in result.output
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    result = runner.invoke(app, ["ablate", "--grid", "paper_default", "--data", str(tmp_path / "none"),
                                 f"model.weights={weights}"])
    assert result.exit_code == 2 and "no model.weights" not in result.output
    result = runner.invoke(app, ["tune", "--space", "optuna_full", "--data", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no model.weights" not in result.output  # not one of the paper's


def test_multi_task_weighs_each_domain_branch_by_its_own_beta(prepared_dir, shared_data, tmp_path):
    """Table III's Multi-Task baseline on the real NIH and CheXpert label tables: each domain's
    branch of a common finding is its own task, weighted by its own domain's β (NIH Edema ~47),
    not the pooled one (~3.5) that a single branch shared by both gets."""
    from data_prep.config import PrepareConfig, SourceConfig
    from data_prep.join import load_sources, train_class_balance

    joined = load_sources(PrepareConfig(sources=[
        SourceConfig(name="nih", kind="nih", path=shared_data / "nih"),
        SourceConfig(name="chexpert", kind="chexpert", path=shared_data / "chexpert")]), find_images=False)
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_dir, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    real = train_class_balance(joined)
    for domain in ("nih", "chexpert"):  # the real tables' P / N in place of the small synthetic set's
        manifest["train_class_balance"][domain] = {
            f: real[domain].get(f, {"positive": 0, "negative": 0}) for f in manifest["label_space"]}
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    multi = plan_training(load_config(updates={"train.domains": ["nih", "chexpert"], "method.multi_task": True,
                                               "method.adversarial": "none"}), copy)
    edema = multi.label_space.index("Edema")
    assert "Edema" in multi.common
    train = joined.rows[joined.rows["split"] == "train"]
    for row, domain in enumerate(multi.domains):  # counted here from the joined rows
        labels = train.loc[train["domain"] == domain, "Edema"]
        assert multi.domain_beta[row][edema] == pytest.approx((labels == 0).sum() / (labels == 1).sum())
    assert 40 < multi.domain_beta[0][edema] < 55 and 3 < multi.beta[edema] < 4.5  # NIH's own vs pooled
    hernia = multi.label_space.index("Hernia")  # NIH only: one branch, the pooled β
    assert multi.domain_beta[0][hernia] == multi.domain_beta[1][hernia] == multi.beta[hernia]
    joint = plan_training(load_config(updates={"train.domains": ["nih", "chexpert"], "method.adversarial": "none"}),
                          copy)
    assert joint.domain_beta is None

    from orchestration.training.configured import configured_method

    step = configured_method(load_config(updates={"method.multi_task": True, "method.adversarial": "none",
                                             "model.branch_features": 4}), multi).step
    assert step.beta.shape == (2, len(multi.label_space)) and step.beta[0, edema].item() == pytest.approx(
        multi.domain_beta[0][edema])
