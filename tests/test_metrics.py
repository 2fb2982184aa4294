import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrmodel.inference import predict_probs
from cxrmodel.metrics import auc_report
from cxrmodel.network import NetOutput

SPACE = ["Nodule", "Effusion", "Edema", "Hernia"]


def test_auc_equals_sklearn_on_known_labels_and_means_use_the_sets():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 4))
    labels[rng.random(200) < 0.3, 1] = -2  # unknown entries are not evaluated
    probs = np.clip(labels * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    report = auc_report(probs, labels, SPACE, evaluated=SPACE[:3], common=["Effusion", "Edema"],
                        internal_only=["Nodule"])
    known = labels[:, 1] != -2
    assert report.auc["Effusion"] == pytest.approx(roc_auc_score(labels[known, 1], probs[known, 1]))
    assert report.auc["Nodule"] == pytest.approx(roc_auc_score(labels[:, 0], probs[:, 0]))
    assert "Hernia" not in report.auc  # not evaluated
    assert report.mean == pytest.approx(np.mean([report.auc[f] for f in SPACE[:3]]))
    assert report.mean_com == pytest.approx((report.auc["Effusion"] + report.auc["Edema"]) / 2)
    assert report.mean_int == pytest.approx(report.auc["Nodule"])
    metrics = report.as_metrics("val_")
    assert metrics["val_mean_auc"] == report.mean and "val_auc/Edema" in metrics


def test_single_class_finding_is_undefined_with_a_reason_not_half():
    labels = np.array([[1, 0], [1, 1], [-2, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.3]])
    report = auc_report(probs, labels, ["Nodule", "Mass"], evaluated=["Nodule", "Mass"], common=[],
                        internal_only=["Nodule"])
    assert "Nodule" not in report.auc
    assert report.undefined["Nodule"] == "only one class among its 2 labelled samples (2 positive, 0 negative)"
    assert report.mean == report.auc["Mass"] == 1.0
    assert report.mean_int is None and report.mean_com is None


class _MeanPixel(torch.nn.Module):
    """Logit = mean pixel of the view: makes each view's contribution visible."""

    def forward(self, x):
        return NetOutput(x.mean(dim=(1, 2, 3)).unsqueeze(1), None)


def test_tencrop_averages_ten_views():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (2, 16, 16), dtype=torch.uint8)
    probs = predict_probs(_MeanPixel(), images, tencrop=True, crop_size=8)
    from cxrmodel.inputs import to_model_input

    x = to_model_input(images)
    corners = [x[..., :8, :8], x[..., :8, 8:], x[..., 8:, :8], x[..., 8:, 8:], x[..., 4:12, 4:12]]
    views = corners + [v.flip(-1) for v in corners]
    expected = torch.stack([torch.sigmoid(v.mean(dim=(1, 2, 3))) for v in views]).mean(0)
    assert torch.allclose(probs[:, 0], expected, atol=1e-6)
    single = predict_probs(_MeanPixel(), images)
    assert torch.allclose(single[:, 0], torch.sigmoid(x.mean(dim=(1, 2, 3))))
    assert not torch.allclose(single, probs)


@pytest.mark.parametrize("side", [15, 16, 17])
def test_ten_crop_gives_torchvisions_views(side):
    from torchvision.transforms.v2.functional import ten_crop as torchvision_ten_crop

    from cxrmodel.inference import ten_crop

    x = torch.randn(2, 1, side, side)
    ours, theirs = ten_crop(x, 8), torchvision_ten_crop(x, [8, 8])
    assert len(ours) == len(theirs) == 10 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    with pytest.raises(ValueError, match="a 18x18 crop does not fit in"):
        ten_crop(x, 18)


def test_auc_table_of_an_empty_split_has_its_columns():
    from orchestration.evaluation.scoring import Predictions, auc_table, report_for
    from orchestration.settings.plan import TrainingPlan

    space = ["Nodule", "Mass"]
    plan = TrainingPlan(data="", domains=["nih", "chexpert"], label_space=space, common=["Mass"], internal_only=["Nodule"],
                        evaluated=space, trained=space, alpha=[1.0, 3.0], beta=[1.0, 1.0], positive=[1, 1],
                        negative=[1, 1], ensemble=["Nodule"], per_domain_batch=1, steps_per_epoch=1, num_samples=1)
    empty = Predictions(np.empty(0, np.int64), np.empty((0, 2), np.float32), np.empty((0, 2), np.int8))
    table = auc_table(report_for(empty, plan), empty, plan)
    assert list(table.columns) == ["finding", "group", "auc", "positives", "negatives", "note"]
    assert table["finding"].tolist() == ["Nodule", "Mass"]  # both listed, both undefined
    assert table["group"].tolist() == ["internal_only", "common"]
    assert table["auc"].isna().all() and table["note"].str.contains("only one class").all()
