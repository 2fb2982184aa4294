import cv2
import numpy as np
import pytest
from PIL import Image

from data_prep.images import ImageError, decode_grayscale, load_grayscale


def _encode(image, suffix, params=()):
    ok, data = cv2.imencode(suffix, image, list(params))
    assert ok
    return data.tobytes()


def _ramp(h=40, w=30):
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def test_8bit_png_round_trips_at_its_own_size():
    image = _ramp(32, 32)
    assert np.array_equal(decode_grayscale(_encode(image, ".png"), 32), image)


def test_resize_to_square():
    out = decode_grayscale(_encode(_ramp(40, 30), ".png"), 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8


def test_rgba_png_becomes_gray():
    gray = np.full((8, 8), 77, np.uint8)
    rgba = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    assert (decode_grayscale(_encode(rgba, ".png"), 8) == 77).all()


def test_16bit_png_is_stretched_to_8_bits():
    image = np.zeros((8, 8), np.uint16)
    image[:, 4:] = 4095  # 12-bit data in a 16-bit file
    out = decode_grayscale(_encode(image, ".png"), 8)
    assert out[:, :4].max() == 0 and out[:, 4:].min() == 255


def test_palette_png(tmp_path):
    Image.fromarray(_ramp(8, 8)).convert("P").save(tmp_path / "p.png")
    out = decode_grayscale((tmp_path / "p.png").read_bytes(), 8)
    assert out.shape == (8, 8) and abs(int(out[0, 5]) - 5) <= 2


def test_jpeg():
    image = np.full((16, 16), 120, np.uint8)
    out = decode_grayscale(_encode(image, ".jpg"), 16)
    assert abs(int(out.mean()) - 120) <= 2


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "zero-byte"),
        (_encode(_ramp(), ".png")[:-30], "truncated PNG"),
        (_encode(_ramp(), ".jpg")[:-40], "truncated JPEG"),
        (b"this is not an image at all", "undecodable"),
    ],
)
def test_bad_files_say_why(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_grayscale(data, 8)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_grayscale(str(tmp_path / "nope.png"), 8)
    with pytest.raises(ImageError, match="not found"):
        load_grayscale(None, 8)
