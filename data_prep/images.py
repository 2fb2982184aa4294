"""Decode one radiograph file to a square uint8 grayscale array, or say exactly why not.

OpenCV decodes PNG/JPEG (8/16-bit, RGBA, palette) straight to grayscale and its area resize is
the fastest measured here (decoding is most of what `cxr prepare` costs). DICOM files go
through `data_prep.dicom` (pydicom) to 8 bits first, then the same resize.

Files come from label tables and folders that others wrote, so every failure of one file is a
reason, never an exception that stops the job: only regular files are opened (a FIFO would block,
a device never end), their size is bounded, and the pixel count their header declares (PNG IHDR,
JPEG SOF, DICOM Rows x Columns x frames) is checked before anything is decoded.
"""

from __future__ import annotations

import os
import stat
import struct

import cv2
import numpy as np

from cxrcommon.errors import first_line
from data_prep.config import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS
from data_prep.dicom import DicomError, dicom_to_uint8, looks_like_dicom

cv2.setNumThreads(1)  # Ray runs one decode task per core; OpenCV's own threads would oversubscribe.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8"
# JPEG start-of-frame markers (they carry the image size): C0-CF except DHT, JPG and DAC.
_JPEG_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageError(Exception):
    """The file cannot become a training image; str(err) is the reason recorded in the manifest."""


class ImageTooLarge(ImageError):
    """The header declares more pixels than allowed: refused before decoding."""


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


def declared_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR or a JPEG's start-of-frame header, read without decoding."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageError("damaged PNG (no IHDR header)")
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    at = 2
    while at + 4 <= len(data):  # JPEG: walk the marker segments up to the frame header
        if data[at] != 0xFF:
            raise ImageError("damaged JPEG (no marker where one should be)")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers carry no length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return height, width
        if marker == 0xDA or length < 2:  # image data before any frame header
            break
        at += 2 + length
    raise ImageError("damaged JPEG (no frame header with the image size)")


def check_pixels(height: int, width: int, frames: int, max_pixels: int) -> None:
    if height <= 0 or width <= 0:
        raise ImageError(f"the header declares an empty image ({height} x {width})")
    if height * width * frames > max_pixels:
        what = f"{height:,} x {width:,}" + (f" x {frames:,} frames" if frames > 1 else "")
        raise ImageTooLarge(f"the header declares {what} = {height * width * frames:,} pixels, more than "
                         f"prepare.max_pixels {max_pixels:,}")


def decode_grayscale(data: bytes, size: int, *, path: str | None = None, notes: list[str] | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG or DICOM) -> (size, size) uint8 grayscale. Raises ImageError
    with the reason, whatever goes wrong; remarks on an image that is still used (a DICOM's extra
    frames) go to `notes`."""
    try:
        return _decode(data, size, path, notes, max_pixels)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("not enough memory to decode it") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file can make any decoder raise anything
        raise ImageError(f"cannot be decoded ({type(exc).__name__}: {first_line(exc, 200)})") from None


def _decode(data: bytes, size: int, path: str | None, notes: list[str] | None, max_pixels: int) -> np.ndarray:
    if looks_like_dicom(path, data):
        try:
            decoded = dicom_to_uint8(data, lambda h, w, frames: check_pixels(h, w, frames, max_pixels))
        except DicomError as exc:
            raise ImageError(str(exc)) from None
        if notes is not None:
            notes.extend(decoded.notes)
        return _resized(decoded.image, size)
    _check_complete(data)
    if not data.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE)):
        raise ImageError("undecodable image data: not a PNG, JPEG or DICOM file")
    check_pixels(*declared_size(data), 1, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
    if image is None or image.size == 0:
        raise ImageError("undecodable image data")
    if image.dtype != np.uint8:
        # 16-bit radiographs usually hold 10-14 significant bits: stretch the used range to 8 bits,
        # straight to uint8 (no float copy of the image: 1 byte per pixel, not 4).
        low, high = cv2.minMaxLoc(image)[:2]
        scale = 255.0 / max(high - low, 1.0)
        image = cv2.convertScaleAbs(image, alpha=scale, beta=-low * scale)
    return _resized(image, size)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape != (size, size):
        shrinking = image.shape[0] > size or image.shape[1] > size
        image = cv2.resize(
            image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return image


def read_image_file(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. FIFOs, devices, sockets and folders are
    refused before they are read (opened non-blocking: a FIFO's open would wait for a writer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError("image file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ImageError(f"unusable path ({exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise ImageError(f"{info.st_size:,} bytes, more than prepare.max_file_bytes {max_bytes:,}")
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            data = f.read(info.st_size + 1)  # read(n) reserves n bytes: the file's size, not the bound
        if len(data) > max_bytes:  # it grew while being read
            raise ImageError(f"more than prepare.max_file_bytes {max_bytes:,} bytes")
        return data
    except OSError as exc:
        raise ImageError(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
    return next((name for test, name in kinds.items() if test(mode)), "not a plain file")


def load_grayscale(path: str | None, size: int, notes: list[str] | None = None, *,
                   max_pixels: int = DEFAULT_MAX_PIXELS, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> np.ndarray:
    """Read and decode one file. Raises ImageError for missing or unreadable files too."""
    if path is None:
        raise ImageError("image file not found")
    data = read_image_file(path, max_file_bytes)
    return decode_grayscale(data, size, path=path, notes=notes, max_pixels=max_pixels)
