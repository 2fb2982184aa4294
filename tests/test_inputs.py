"""The model-input transform: normalisation, flip, and the pad-and-crop random shift."""

import torch

from cxrmodel.inputs import GRAY_MEAN, GRAY_STD, random_shift, to_model_input


def _shift_of(original: torch.Tensor, shifted: torch.Tensor, reach: int) -> tuple[int, int] | None:
    """The (dy, dx) with shifted[y, x] = original[y - dy, x - dx] (0 outside), if there is one."""
    h, w = original.shape
    padded = torch.nn.functional.pad(original, (reach, reach, reach, reach))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if torch.equal(padded[reach - dy : reach - dy + h, reach - dx : reach - dx + w], shifted):
                return dy, dx
    return None


def test_random_shift_moves_each_image_within_a_sixteenth_of_its_side():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (16, 1, 64, 48), generator=g, dtype=torch.uint8)  # no zero pixel
    out = random_shift(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifts = [_shift_of(images[i, 0], out[i, 0], reach=4) for i in range(16)]  # 64 // 16 = 4, 48 // 16 = 3
    assert all(s is not None and abs(s[0]) <= 4 and abs(s[1]) <= 3 for s in shifts), shifts
    assert len(set(shifts)) > 4  # each image draws its own shift
    assert any(s != (0, 0) for s in shifts)


def test_to_model_input_normalises_and_crops_only_when_asked():
    images = torch.full((2, 32, 32), 255, dtype=torch.uint8)
    x = to_model_input(images)
    assert x.shape == (2, 1, 32, 32) and torch.allclose(x, torch.full_like(x, (1 - GRAY_MEAN) / GRAY_STD))
    torch.manual_seed(0)
    shifted = to_model_input(images.repeat(8, 1, 1), random_crop=True)
    black = (0 - GRAY_MEAN) / GRAY_STD  # the uncovered border
    assert torch.isclose(shifted, torch.tensor(black)).any()
