"""Where the model looks: Grad-CAM heat maps of the images it scores highest, per finding (`cxr explain`,
and the explanations every training run logs).

Grad-CAM (Selvaraju et al., 2017) weighs the channels of the last dense block's output (DenseIBN-121's
`features.denseblock4`, 1/32 of the input side) by the gradient of one finding's logit, so each
finding gets its own map. Written out here rather than taken from the `grad-cam` package, which
backpropagates into every weight of the backbone (the gradient needed stops at the block: 8 maps at
160² 0.64 -> 0.21 s on 2 cores) and loads torchvision, scikit-learn and torch._dynamo (~2 s) in each
process that explains. Written per finding: the overlays of its top K images, one contact sheet,
and a row per image in `explain.csv` (with the heat map's peak, in pixels of the model's input).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from cxrmodel.inputs import to_model_input
from data_prep.prepared import IMAGE_COLUMN, PreparedDataset, images_from_arrow
from orchestration.settings.config import ConfigError

if TYPE_CHECKING:
    from orchestration.evaluation.scoring import Predictions

TARGET_LAYER = "backbone.features.denseblock4"
INDEX_FILE = "explain.csv"
DISPLAY_SIDE = 224  # overlays are enlarged to at least this side: a 32² picture shows nothing
SHEET_COLUMNS = 4
LABEL_WORDS = {1: "positive", 0: "negative"}  # a caption's word for the image's label (-1: not labelled)


def heat_maps(net: torch.nn.Module, images: np.ndarray, findings: int | Sequence[int], batch: int = 16) -> np.ndarray:
    """uint8 images (B, S, S) -> Grad-CAM maps (B, S, S) in [0, 1], image i's for output column
    `findings[i]` (or `findings` for all): the block's channels weighed by the spatial mean of the
    finding logit's gradient, the ReLU of their sum scaled to [0, 1], resized (bilinear) to the image
    and scaled again, as the method's authors and the `grad-cam` package draw it. `batch` images go
    through the network at a time, each with its own finding: in eval mode an image's logits depend
    on that image alone, so one backward pass gives each image its own finding's gradient."""
    columns = np.broadcast_to(np.asarray(findings), (len(images),)).astype(np.int64)  # a writable copy
    return np.concatenate([_heat_maps(net, images[start:start + batch], columns[start:start + batch])
                           for start in range(0, len(images), batch)])


def _heat_maps(net: torch.nn.Module, images: np.ndarray, columns: np.ndarray) -> np.ndarray:
    device = next(net.parameters()).device
    captured = {}
    hook = net.get_submodule(TARGET_LAYER).register_forward_hook(
        lambda module, inputs, output: captured.update(activations=output))
    try:
        with torch.enable_grad():
            logits = net.eval()(to_model_input(torch.from_numpy(images).to(device))).logits
    finally:
        hook.remove()
    activations = captured["activations"]
    chosen = logits.gather(1, torch.from_numpy(columns).to(device)[:, None])
    gradients, = torch.autograd.grad(chosen.sum(), activations)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    coarse = torch.relu((weights * activations).sum(dim=1)).detach().float().cpu().numpy()
    side = images.shape[-1]
    return np.stack([_unit(np.maximum(cv2.resize(_unit(m), (side, side)), 0)) for m in coarse])


def _unit(values: np.ndarray) -> np.ndarray:
    """Shifted and scaled to [0, 1] (all zeros when constant)."""
    values = values - values.min()
    return (values / (values.max() + 1e-7)).astype(np.float32)


@dataclass
class Explained:
    index: pd.DataFrame  # finding, rank, image_id, sample_id, probability, label, peak_row, peak_col, overlay
    sheets: list[Path]  # one contact sheet per finding


def explain_top_images(
    net: torch.nn.Module, label_space: list[str], prepared: PreparedDataset, domain: str, split: str,
    predictions: Predictions, findings: list[str], top: int, out: Path, *, overlays: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Explained:
    """For each finding, Grad-CAM of the `top` images of `predictions` (a split's scores) with the
    highest probability, written under `out`: sheets `<finding>.png`, overlays
    `overlays/<finding>/<rank>_<image>.png` (with `overlays`), and the index `explain.csv`."""
    unknown = [f for f in findings if f not in label_space]
    if unknown:
        raise ConfigError(f"--findings {', '.join(unknown)}: not in the model's label space {label_space}")
    if top < 1:
        raise ConfigError(f"--top must be at least 1 (got {top})")
    if len(predictions.sample_id) == 0:
        raise ConfigError(f"the {split} split of {domain} has no images to explain")
    # Row numbers in `predictions` of each finding's top images; only those images are read.
    top_rows = {f: np.argsort(-predictions.probs[:, label_space.index(f)], kind="stable")[:top] for f in findings}
    wanted = np.unique(np.concatenate([predictions.sample_id[i] for i in top_rows.values()]))
    table = prepared.read_columns(domain, split, ["sample_id", "image_id", IMAGE_COLUMN], sample_ids=wanted)
    row_of = {int(s): i for i, s in enumerate(table.column("sample_id").to_numpy())}
    image_ids = table.column("image_id").to_pylist()
    in_table = {f: [row_of[int(predictions.sample_id[i])] for i in chosen] for f, chosen in top_rows.items()}
    # Every finding's top images in one list, each with its finding: the heat maps go a batch at a time.
    all_images = images_from_arrow(table.column(IMAGE_COLUMN).take(np.concatenate(list(in_table.values()))),
                                   prepared.image_size)
    counts = [len(chosen) for chosen in top_rows.values()]
    all_maps = heat_maps(net, all_images, np.repeat([label_space.index(f) for f in top_rows], counts))
    bounds = np.cumsum(counts)[:-1]
    out.mkdir(parents=True, exist_ok=True)
    rows, sheets = [], []
    for (finding, chosen), images, maps in zip(top_rows.items(), np.split(all_images, bounds),
                                               np.split(all_maps, bounds)):
        c = label_space.index(finding)
        pictures = [_overlay(image, heat) for image, heat in zip(images, maps)]
        found = []
        for rank, (i, row, heat, picture) in enumerate(zip(chosen, in_table[finding], maps, pictures), start=1):
            peak_row, peak_col = np.unravel_index(int(heat.argmax()), heat.shape)
            found.append({
                "finding": finding, "rank": rank, "image_id": image_ids[row],
                "sample_id": int(predictions.sample_id[i]), "probability": float(predictions.probs[i, c]),
                "label": int(predictions.labels[i, c]), "peak_row": int(peak_row), "peak_col": int(peak_col),
                "overlay": _write_overlay(out, finding, rank, image_ids[row], picture) if overlays else "",
            })
        sheet = out / f"{_file_name(finding)}.png"
        _contact_sheet(finding, pictures, found, f"{domain} {split}").save(sheet)
        rows.extend(found)
        sheets.append(sheet)
        if progress:
            shown = predictions.probs[chosen, c]
            progress(f"{finding}: p {shown.max():.3f} to {shown.min():.3f}, "
                     f"{int((predictions.labels[chosen, c] == 1).sum())} of {len(chosen)} labelled positive")
    index = pd.DataFrame(rows)
    index.to_csv(out / INDEX_FILE, index=False)
    return Explained(index, sheets)


def _overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 gray image and heat map in [0, 1] -> RGB uint8: the map in JET colours and the image,
    half and half, brightened so that the brightest pixel is white."""
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * heat), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    mixed = 0.5 * colours.astype(np.float32) / 255 + 0.5 * image[..., None].astype(np.float32) / 255
    return np.uint8(255 * mixed / mixed.max())


def _write_overlay(out: Path, finding: str, rank: int, image_id: str, picture: np.ndarray) -> str:
    path = out / "overlays" / _file_name(finding) / f"{rank:02d}_{_file_name(str(Path(image_id).with_suffix('')))}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(_enlarged(picture), cv2.COLOR_RGB2BGR))
    return str(path.relative_to(out))


def _contact_sheet(finding: str, pictures: list[np.ndarray], rows: list[dict], where: str) -> Image.Image:
    """The pictures, enlarged, in rows of up to `SHEET_COLUMNS`, each under its caption (rank, image,
    probability, label), under a title. Drawn with Pillow: matplotlib took ~0.2 s a sheet here, 14
    sheets after every run's test, against ~0.01 s."""
    tiles = [_enlarged(picture) for picture in pictures]
    captions = [f"#{row['rank']} {row['image_id']}\np = {row['probability']:.3f}, "
                f"{LABEL_WORDS.get(row['label'], 'not labelled')}" for row in rows]
    title = f"Grad-CAM for {finding}: the {len(pictures)} highest-scoring images of {where}"
    caption_font, title_font = _font(11), _font(14)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    side = tiles[0].shape[0]
    cell = max([side] + [measure.multiline_textbbox((0, 0), c, font=caption_font)[2] for c in captions])
    columns = min(len(tiles), SHEET_COLUMNS)
    lines = -(-len(tiles) // columns)
    margin, title_height, caption_height = 16, 32, 36
    grid = margin + columns * (cell + margin)
    width = max(grid, measure.textbbox((0, 0), title, font=title_font)[2] + 2 * margin)
    sheet = Image.new("RGB", (width, title_height + lines * (caption_height + side + margin)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((width // 2, title_height // 2), title, fill="black", font=title_font, anchor="mm")
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = (width - grid) // 2 + margin + (i % columns) * (cell + margin)
        y = title_height + (i // columns) * (caption_height + side + margin)
        draw.multiline_text((x + cell // 2, y + caption_height - 4), caption, fill="black", font=caption_font,
                            anchor="md", align="center")
        sheet.paste(Image.fromarray(tile), (x + (cell - side) // 2, y + caption_height))
    return sheet


def _font(size: int) -> ImageFont.FreeTypeFont:
    # matplotlib's DejaVu Sans, the report's figures' font: Pillow's built-in one spaced these captions badly.
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def _enlarged(picture: np.ndarray) -> np.ndarray:
    factor = -(-DISPLAY_SIDE // picture.shape[0])
    if factor <= 1:
        return picture
    return cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def _file_name(text: str) -> str:
    """A finding or image id as one safe file-name part."""
    return re.sub(r"[^A-Za-z0-9 ._-]+", "_", text).strip("_ ") or "_"
