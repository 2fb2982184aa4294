"""Decode one radiograph file to a square uint8 grayscale array, or say exactly why not.

OpenCV decodes PNG/JPEG (8/16-bit, RGBA, palette) straight to grayscale and its area resize is
the fastest measured here (RAY_NOTES: decoding is the cost of `cxr prepare`). DICOM files go
through `data_prep.dicom` (pydicom) to 8 bits first, then the same resize.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_prep.dicom import DicomError, dicom_to_uint8, looks_like_dicom

cv2.setNumThreads(1)  # Ray runs one decode task per core; OpenCV's own threads would oversubscribe.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"


class ImageError(Exception):
    """The file cannot become a training image; str(err) is the reason recorded in the manifest."""


def _check_complete(data: bytes) -> None:
    """Catch truncated files, which decoders may otherwise return half-grey without an error."""
    if not data:
        raise ImageError("zero-byte file")
    if data.startswith(_PNG_SIGNATURE):
        if b"IEND" not in data[-16:]:
            raise ImageError("truncated PNG (no IEND chunk at the end)")
    elif data.startswith(_JPEG_SIGNATURE):
        if b"\xff\xd9" not in data.rstrip(b"\x00")[-4:]:
            raise ImageError("truncated JPEG (no end-of-image marker)")


def decode_grayscale(data: bytes, size: int, *, path: str | None = None, notes: list[str] | None = None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG or DICOM) -> (size, size) uint8 grayscale. Raises ImageError
    with the reason; remarks on an image that is still used (a DICOM's extra frames) go to `notes`."""
    if looks_like_dicom(path, data):
        try:
            decoded = dicom_to_uint8(data)
        except DicomError as exc:
            raise ImageError(str(exc)) from None
        if notes is not None:
            notes.extend(decoded.notes)
        return _resized(decoded.image, size)
    _check_complete(data)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None or image.size == 0:
        raise ImageError("undecodable image data")
    if image.dtype != np.uint8:
        # 16-bit radiographs usually hold 10-14 significant bits: stretch the used range to 8 bits.
        image = image.astype(np.float32)
        low, high = float(image.min()), float(image.max())
        image = ((image - low) * (255.0 / max(high - low, 1.0))).round().astype(np.uint8)
    return _resized(image, size)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape != (size, size):
        shrinking = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(
            image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return image


def load_grayscale(path: str | None, size: int, notes: list[str] | None = None) -> np.ndarray:
    """Read and decode one file. Raises ImageError for missing or unreadable files too."""
    if path is None:
        raise ImageError("image file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise ImageError("image file not found") from exc
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from exc
    return decode_grayscale(data, size, path=path, notes=notes)
