"""DICOM radiographs -> 8-bit grayscale, by the rules a reader of the image on a viewer expects.

In this order: the modality LUT (RescaleSlope / RescaleIntercept, or a Modality LUT Sequence);
then the first VOI window (VOI LUT Sequence, else WindowCenter / WindowWidth by the standard's
linear function) maps its bounds to 0..255, clipping what lies outside; without a window the
image's own minimum and maximum map to 0..255 (as for 16-bit PNGs); MONOCHROME1 is inverted so
that bone is bright as in MONOCHROME2. Multi-frame files give their first frame, with a note.
Compressed pixel data is decoded by pydicom's plugins (pylibjpeg, pylibjpeg-openjpeg,
pylibjpeg-libjpeg, pylibjpeg-rle, Pillow); a file none of them decodes is refused, naming the
plugin that would.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cxrcommon.errors import first_line

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128
GRAY = ("MONOCHROME1", "MONOCHROME2")
# Colour interpretations pydicom hands back as RGB, then converted to luminance.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")


class DicomError(Exception):
    """The file cannot become an image; str(err) is the reason."""


@dataclass
class Decoded:
    image: np.ndarray  # 2-D uint8
    notes: list[str] = field(default_factory=list)  # used, but worth a manifest line


def looks_like_dicom(path: str | None, data: bytes) -> bool:
    """By extension, or by the 'DICM' magic after the 128-byte preamble."""
    return (path or "").lower().endswith(DICOM_SUFFIXES) or data[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == b"DICM"


def dicom_to_uint8(data: bytes, check_size: Callable[[int, int, int], None] = lambda *size: None) -> Decoded:
    """`check_size(rows, columns, frames)` may refuse the image (by raising) before its pixels are decoded.
    Values are computed in float32, in place where possible: ~13 bytes per pixel at the peak, the
    file's own bytes included (float64 temporaries made it ~39)."""
    import pydicom  # only `cxr prepare`'s decode tasks need it
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise DicomError(f"not a readable DICOM file: {exc}") from None
    if "PixelData" not in ds:
        raise DicomError("DICOM file has no PixelData (a report or structured document, not an image)")
    rows, columns, frames = (_count(ds, key) for key in ("Rows", "Columns", "NumberOfFrames"))
    if rows == 0 or columns == 0:
        raise DicomError(f"DICOM image has {rows} rows and {columns} columns")
    frames = max(frames, 1)
    check_size(rows, columns, frames)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAY + COLOUR:
        raise DicomError(f"photometric interpretation {photometric!r} is not converted to grayscale "
                         f"(converted: {', '.join(GRAY + COLOUR)})")
    _check_decoder(ds)
    notes = []
    try:
        pixels = ds.pixel_array if frames == 1 else _first_frame(ds)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - pydicom raises many types for damaged pixel data, and
        # a decoder written in Rust (pylibjpeg-rle) panics with pyo3's PanicException, a BaseException
        raise DicomError(f"DICOM pixel data cannot be decoded: {first_line(exc)}") from None
    if frames > 1:
        notes.append(f"multi-frame DICOM ({frames} frames): the first frame is used")
    if photometric in COLOUR:
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return Decoded(_stretch(pixels, float(pixels.min()), float(pixels.max())), notes)
    return Decoded(_grayscale(ds, pixels, photometric), notes)


def _count(ds, key: str) -> int:
    """A whole-number header value (Rows, Columns, NumberOfFrames), 0 when absent."""
    try:
        value = ds.get(key)
        return int(value or 0)
    except (TypeError, ValueError):
        raise DicomError(f"DICOM {key} {str(ds[key].value)[:40]!r} is not a whole number") from None


def _modality_values(ds, pixels: np.ndarray) -> np.ndarray:
    """The modality LUT applied, as float32: a linear rescale in place (no float64 copy)."""
    from pydicom.pixels import apply_modality_lut

    if "ModalityLUTSequence" in ds:
        return apply_modality_lut(pixels, ds).astype(np.float32)
    values = pixels.astype(np.float32)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1:
        values *= slope
    if intercept:
        values += intercept
    return values


def _grayscale(ds, pixels: np.ndarray, photometric: str) -> np.ndarray:
    values = _modality_values(ds, pixels)
    del pixels
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        image = _voi_lut(ds.VOILUTSequence[0], values)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        image = _window(values, _first(ds.WindowCenter), _first(ds.WindowWidth))
    else:
        image = _stretch(values, float(values.min()), float(values.max()))
    return 255 - image if photometric == "MONOCHROME1" else image


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, the linear VOI function, onto 0..255."""
    if width < 1:
        raise DicomError(f"WindowWidth {width} is below 1")
    # ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, in place on the float32 values
    values -= center - 0.5
    values *= 255.0 / (width - 1) if width > 1 else np.inf
    values += 127.5
    return _to_uint8(values)


def _voi_lut(item, values: np.ndarray) -> np.ndarray:
    """A VOI LUT: entries indexed from its first mapped value, inputs outside clamp to the ends;
    the LUT's output range (its bits) maps to 0..255."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2^16
    data = item.LUTData  # US values, or OW bytes
    lut = (np.frombuffer(data, "<u2") if isinstance(data, bytes) else np.asarray(data)).astype(np.float32)[:entries]
    np.rint(values, out=values)
    values -= first
    np.clip(values, 0, len(lut) - 1, out=values)
    return _stretch(np.take(lut, values.astype(np.int32)), 0.0, float(2**bits - 1))


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """`values` (float32, changed in place): low..high onto 0..255."""
    values -= low
    values *= 255.0 / max(high - low, 1.0)
    return _to_uint8(values)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    np.clip(values, 0, 255, out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def _first(value) -> float:
    """WindowCenter / WindowWidth may hold several windows: the first is the default one."""
    from pydicom.multival import MultiValue

    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def _first_frame(ds) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(ds, index=0)


def _check_decoder(ds) -> None:
    """Refuse compressed pixel data no installed plugin decodes, naming what would."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"transfer syntax {syntax.name} ({syntax}): no pydicom plugin decodes it; "
                         "convert the file to an uncompressed or JPEG 2000 syntax (e.g. gdcmconv --raw)") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)  # e.g. "pylibjpeg - requires pylibjpeg-libjpeg>=2.1"
        raise DicomError(f"transfer syntax {syntax.name} ({syntax}): no installed plugin decodes it; "
                         f"install one of: {needs}")
