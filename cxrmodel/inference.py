"""Probabilities from a trained network: single view, or TenCrop (4 corners + centre, and their
horizontal flips, averaged) as in the paper's Table IV."""

from __future__ import annotations

import contextlib

import torch
from torchvision.transforms.v2.functional import ten_crop

from cxrmodel.inputs import to_model_input


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
        views = list(ten_crop(x, [size, size]))
    probs = torch.zeros((), device=x.device)
    with autocast_context(x.device, autocast_dtype):
        for view in views:
            probs = probs + torch.sigmoid(model(view).logits.float())
    return probs / len(views)


class ProbabilityModel(torch.nn.Module):
    """A servable wrapper: uint8 images (B, H, W) -> probabilities (B, C). Logged to MLflow."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_probs(self.net, images)
