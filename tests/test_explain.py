"""Grad-CAM heat maps: the map is Grad-CAM of the chosen finding's output on the last dense block
(checked against the computation written out), and on a model trained for the test the map of a
finding points at the grid cell where `cxr synth` draws that finding."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_training
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from cxrmodel.inputs import to_model_input
from cxrmodel.method import native_bf16
from cxrmodel.network import CXRNet
from data_prep.config import PrepareConfig, SourceConfig
from data_prep.findings import CANONICAL_FINDINGS
from data_prep.join import load_sources
from data_prep.pipeline import run_prepare
from data_prep.synth import finding_cell, synthesize
from orchestration.cli import app
from orchestration.evaluation.grad_cam import INDEX_FILE, _contact_sheet, _overlay, explain_top_images, heat_maps
from orchestration.settings.config import load_config
from orchestration.settings.plan import plan_training
from orchestration.settings.schema import EXPLAIN_ARTIFACT_DIR
from orchestration.training.train import run_training

SIDE = 160  # 5x5 cells of denseblock4, one per synth grid cell
TOP = 4
# Measured (2 cores, 2026-11-28): peaks in the right cell for 20 of 48, 21 of 44 and 32 of 54
# positive top images in three runs (0.42 to 0.59). Chance: 1 in 25. Longer training localises better.
MIN_INSIDE = 0.3


def _grad_cam_by_hand(net: CXRNet, images: np.ndarray, finding: int) -> np.ndarray:
    """Selvaraju et al.'s Grad-CAM: channel weights = spatial mean of d logit / d activation of the
    last dense block; map = ReLU(sum of weighted activations), scaled to [0, 1], resized bilinearly to
    the image, scaled again."""
    captured = {}
    hook = net.backbone.features.denseblock4.register_forward_hook(lambda m, i, out: captured.update(a=out))
    logits = net(to_model_input(torch.from_numpy(images))).logits
    hook.remove()
    activations = captured["a"]
    gradients, = torch.autograd.grad(logits[:, finding].sum(), activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    coarse = torch.relu((weights * activations).sum(1)).detach().numpy()
    side = images.shape[-1]
    maps = []
    for m in coarse:
        m = (m - m.min()) / (m.max() - m.min() + 1e-7)
        m = cv2.resize(m.astype(np.float32), (side, side))
        m = np.maximum(m, 0)
        maps.append((m - m.min()) / (m.max() - m.min() + 1e-7))
    return np.stack(maps)


def test_heat_map_is_grad_cam_of_the_findings_output_on_the_last_dense_block():
    torch.manual_seed(0)
    net = CXRNet(5, [0, 1], 2, adversarial=False, branch_features=8).eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 128, 128), dtype=np.uint8)  # 4x4 cells
    maps = {c: heat_maps(net, images, c) for c in (1, 3)}
    for c, got in maps.items():
        assert got.shape == (3, 128, 128) and got.min() >= 0 and got.max() <= 1
        np.testing.assert_allclose(got, _grad_cam_by_hand(net, images, c), atol=1e-4)
    assert not np.allclose(maps[1], maps[3], atol=1e-2)  # each finding its own map
    # Each image its own finding, two images through the network at a time: the same maps.
    mixed = heat_maps(net, images, [3, 1, 3], batch=2)
    for i, c in enumerate([3, 1, 3]):
        np.testing.assert_allclose(mixed[i], maps[c][i], atol=1e-5)


def test_an_overlay_shows_the_map_in_jet_colours_over_the_image():
    """Half JET colour (0 dark blue, 1 dark red), half image, scaled so that the brightest value is 255."""
    image = np.array([[100, 100], [100, 200]], np.uint8)
    heat = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    jet = {0.0: np.array([0, 0, 128]), 1.0: np.array([128, 0, 0])}  # OpenCV's JET at 0 and 255, as RGB
    mixed = np.array([[0.5 * jet[h] / 255 + 0.5 * g / 255 for g, h in zip(*row)] for row in zip(image, heat)])
    np.testing.assert_allclose(_overlay(image, heat), np.floor(255 * mixed / mixed.max()), atol=1)


def test_a_contact_sheet_shows_each_overlay_whole_in_reading_order_each_under_its_own_caption():
    rng = np.random.default_rng(0)
    pictures = [_overlay(rng.integers(0, 256, (32, 32), dtype=np.uint8), rng.random((32, 32), dtype=np.float32))
                for _ in range(6)]
    # Captions wider than a 224-pixel tile: MIMIC-CXR's image ids are paths.
    rows = [{"rank": r, "image_id": f"p10/p1000003{r}/s5041426{r}/02aa804e-bde0afdd-112c0b34-7bc16630-4e38401{r}.jpg",
             "probability": 1 - r / 10, "label": r % 2} for r in range(1, 7)]
    sheet = np.asarray(_contact_sheet("Edema", pictures, rows, "mimic test"))
    corners = []
    for picture in pictures:
        tile = cv2.resize(picture, None, fx=7, fy=7, interpolation=cv2.INTER_NEAREST)  # 32² enlarged to 224²
        distances = cv2.matchTemplate(sheet, tile, cv2.TM_SQDIFF)
        y, x = np.unravel_index(int(distances.argmin()), distances.shape)
        assert np.array_equal(sheet[y:y + 224, x:x + 224], tile)  # the whole overlay, pixel for pixel
        corners.append((y, x))
    ys, xs = zip(*corners)
    # Rows of four, left to right: the first row's four tiles side by side, then two under the first two.
    assert len(set(ys[:4])) == 1 and len(set(ys[4:])) == 1 and ys[4] >= ys[0] + 224
    assert all(later - earlier >= 224 for earlier, later in zip(xs[:4], xs[1:4])) and xs[4:] == xs[:2]
    # In the band above the first row, four captions apart from one another (8+ blank pixels between).
    ink = (sheet[ys[0] - 36:ys[0], :] < 128).any(axis=(0, 2))
    columns = np.flatnonzero(ink)
    assert len(columns) and 1 + int((np.diff(columns) > 8).sum()) == 4


@pytest.mark.slow
def test_heat_maps_point_at_the_cell_where_synth_draws_each_finding(ray_session, tmp_path):
    """A model trained for the test at 160² (denseblock4 then has 5x5 cells, one per synth grid cell):
    `cxr train` logs a contact sheet per finding, and the maps `cxr explain` writes peak inside the
    finding's own cell far more often than chance (1 in 25)."""
    synthesize(tmp_path / "raw", images_per_source=400, image_size=SIDE, seed=0, sources=("nih",))
    prepare = PrepareConfig(sources=[SourceConfig(name="nih", kind="nih", path=tmp_path / "raw" / "nih")],
                            image_size=SIDE)
    run_prepare(load_sources(prepare), prepare, tmp_path / "prepared")
    # 80 steps of 16 images: ~1.5 minutes on 2 cores with native bf16 (1.7x faster than fp32 there; on
    # an AVX2-only CPU bf16 is emulated, 7x slower than fp32). Peaks inside the cell, seeds 0-2: 0.49,
    # 0.52, 0.55 (0.42-0.59 after 160 steps); chance is 0.04.
    overrides = tiny_training(tmp_path, **{
        "train.domains": "[nih]", "method.adversarial": "none", "train.epochs": 1, "train.steps_per_epoch": 80,
        "train.batch_size": 16, "train.lr": 1e-3, "train.bf16": str(native_bf16("cpu")).lower(),
        "train.channels_last": "true",
        "train.log_every_steps": 20, "model.branch_features": 128, "train.explain_top": 2,
    })
    config = load_config([], overrides)
    plan = plan_training(config, tmp_path / "prepared")
    run_id = run_training(config, plan, run_name="explained").run_id
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(run_id, EXPLAIN_ARTIFACT_DIR)}
    # A contact sheet per finding and the index; no overlays.
    assert logged == {f"{EXPLAIN_ARTIFACT_DIR}/{name}" for name in [f"{f}.png" for f in plan.evaluated] + [INDEX_FILE]}

    out = tmp_path / "explained"
    result = CliRunner().invoke(app, ["explain", "--run", "explained", "--top", str(TOP), "--out", str(out),
                                      *overrides])
    assert result.exit_code == 0, result.output
    index = pd.read_csv(out / INDEX_FILE)
    assert sorted(index.finding.unique()) == sorted(plan.evaluated) and len(index) == TOP * len(plan.evaluated)
    # Judged on the top images that show the finding (labelled positive): only those have its shape drawn.
    shown = index[index.label == 1]
    cell = SIDE // 5
    inside = [finding_cell(CANONICAL_FINDINGS.index(row.finding)) == (row.peak_row // cell, row.peak_col // cell)
              for row in shown.itertuples()]
    fraction = float(np.mean(inside))
    print(f"heat-map peaks inside the finding's cell: {sum(inside)} of {len(inside)} positive top images")
    assert len(inside) >= len(index) // 2 and fraction >= MIN_INSIDE, index.to_string()
    logged = {a.path for a in client.list_artifacts(run_id, f"{EXPLAIN_ARTIFACT_DIR}/overlays/Atelectasis")}
    assert len(logged) == TOP and all(Path(out / p).exists() for p in index.overlay)


def test_bad_requests_are_refused_naming_what_is_wrong(tmp_path):
    from orchestration.evaluation.scoring import Predictions
    from orchestration.settings.config import ConfigError

    scores = Predictions(np.arange(3), np.full((3, 2), 0.5, np.float32), np.zeros((3, 2), np.int8))
    ask = dict(net=None, label_space=["Edema", "Mass"], prepared=None, domain="nih", split="test",
               predictions=scores, findings=["Edema"], top=4, out=tmp_path)
    with pytest.raises(ConfigError, match=r"--findings Nodule: not in the model's label space \['Edema', 'Mass'\]"):
        explain_top_images(**{**ask, "findings": ["Edema", "Nodule"]})
    with pytest.raises(ConfigError, match="--top must be at least 1"):
        explain_top_images(**{**ask, "top": 0})
    empty = Predictions(np.arange(0), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.int8))
    with pytest.raises(ConfigError, match="the test split of nih has no images"):
        explain_top_images(**{**ask, "predictions": empty})
    result = CliRunner().invoke(app, ["explain", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--checkpoint" in result.output and "nowhere" in result.output
    result = CliRunner().invoke(app, ["explain", "--run", "r", "--model", "m", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "give the model once" in result.output
