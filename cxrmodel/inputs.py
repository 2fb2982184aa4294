"""uint8 images -> normalised float model input, on whatever device they already are.

Images travel as uint8 (4x less to move than float) and become float on the device. Training
augmentation is the paper's only one: a random horizontal flip per image.
"""

from __future__ import annotations

import torch

# Gray-level ImageNet statistics (mean of the RGB channel means / stds).
GRAY_MEAN = 0.449
GRAY_STD = 0.226


def to_model_input(
    images: torch.Tensor,
    *,
    flip: bool = False,
    channels_last: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) uint8 -> (B, 1, H, W) float32, normalised, optionally flipped."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    x = images.float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
    if flip:
        chosen = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
        x = torch.where(chosen.view(-1, 1, 1, 1), x.flip(-1), x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
