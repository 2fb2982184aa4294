"""Probabilities from a trained network: single view, or TenCrop (4 corners + centre, and their
horizontal flips, averaged) as in the paper's Table IV."""

from __future__ import annotations

import contextlib

import torch

from cxrmodel.calibration import PROBABILITY_EPS
from cxrmodel.inputs import to_model_input


def ten_crop(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The four corners and the centre of `x` (..., H, W) as `size`-square views, then the same of
    its horizontal flip: torchvision's TenCrop, in its order and with its centre (written here:
    importing torchvision costs every process that predicts ~1.5 s)."""
    height, width = x.shape[-2:]
    if size > min(height, width):
        raise ValueError(f"a {size}x{size} crop does not fit in {height}x{width} images")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (top, left)]
    return [image[..., r:r + size, c:c + size] for image in (x, x.flip(-1)) for r, c in corners]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast to `dtype` on `device`'s type, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    tencrop: bool = False,
    crop_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 images (B, [1,] H, W) on the model's device -> probabilities (B, C) float32.

    TenCrop crops `crop_size` (default 7/8 of the side) and averages the 10 views' probabilities."""
    x = to_model_input(images, channels_last=channels_last)
    views = [x]
    if tencrop:
        size = crop_size or round(x.shape[-1] * 7 / 8)
        views = ten_crop(x, size)
    probs = torch.zeros((), device=x.device)
    with autocast_context(x.device, autocast_dtype):
        for view in views:
            probs = probs + torch.sigmoid(model(view).logits.float())
    return probs / len(views)


class ProbabilityModel(torch.nn.Module):
    """A servable wrapper: uint8 images (B, H, W) -> probabilities (B, C), logged to MLflow; with
    `temperatures` (C,), calibrated probabilities sigmoid(logit(p) / T) as cxrmodel.calibration
    computes them (what `cxr export` writes)."""

    def __init__(self, net: torch.nn.Module, temperatures: torch.Tensor | None = None):
        super().__init__()
        self.net = net.eval()
        self.calibrated = temperatures is not None
        self.register_buffer("temperatures", temperatures if self.calibrated else torch.ones(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = predict_probs(self.net, images)
        if not self.calibrated:
            return probs
        p = probs.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        return torch.sigmoid((torch.log(p) - torch.log1p(-p)) / self.temperatures)
