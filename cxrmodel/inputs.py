"""uint8 images -> normalised float model input, on whatever device they already are.

Images travel as uint8 (4x less to move than float) and become float on the device. Training
augmentation is the paper's: a random horizontal flip per image (§III-D); for runs tested with
TenCrop (Table IV), optionally a random crop as pad-and-crop: each image is shifted by up to 1/16 of
its side in each direction, the uncovered border black. It moves the picture by the same range as a
random 7/8 crop would, but keeps its scale, so TenCrop's 7/8 crops (taken without resizing) see
anatomy at the size training saw; a 7/8 crop resized back would enlarge it by 8/7.
"""

from __future__ import annotations

import torch

# Gray-level ImageNet statistics (mean of the RGB channel means / stds).
GRAY_MEAN = 0.449
GRAY_STD = 0.226


def random_shift(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad-and-crop: (B, 1, H, W) images each moved by its own random (dy, dx), |dy| <= H // 16,
    |dx| <= W // 16, zero-filled where the picture left. Same shape, same dtype."""
    b, _, h, w = images.shape
    py, px = h // 16, w // 16
    padded = torch.nn.functional.pad(images, (px, px, py, py))
    top = torch.randint(0, 2 * py + 1, (b, 1), device=images.device, generator=generator)
    left = torch.randint(0, 2 * px + 1, (b, 1), device=images.device, generator=generator)
    rows = (top + torch.arange(h, device=images.device)).view(b, h, 1)
    cols = (left + torch.arange(w, device=images.device)).view(b, 1, w)
    batch = torch.arange(b, device=images.device).view(b, 1, 1)
    return padded[:, 0][batch, rows, cols].unsqueeze(1)


def to_model_input(
    images: torch.Tensor,
    *,
    flip: bool = False,
    random_crop: bool = False,
    channels_last: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) uint8 -> (B, 1, H, W) float32, normalised, optionally flipped
    and shifted (`random_shift`)."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if random_crop:
        images = random_shift(images, generator)
    x = images.float().div_(255.0).sub_(GRAY_MEAN).div_(GRAY_STD)
    if flip:
        chosen = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
        x = torch.where(chosen.view(-1, 1, 1, 1), x.flip(-1), x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
