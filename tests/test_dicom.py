"""DICOM decoding against what `cxr synth` drew: modality rescale, windows, MONOCHROME1 inversion,
12/16 bits, RLE and JPEG 2000, then the files a PACS export also holds that cannot be used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import ROOT
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from data_prep.images import ImageError, decode_grayscale, load_grayscale
from data_prep.synth import dicom_variant, write_dicom

SIZE = 48


def _drawn() -> np.ndarray:
    """What synth 'drew': a diagonal ramp over the whole [0, 1] range plus a bright square."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / (2 * SIZE - 2)
    image = yy + xx
    image[10:20, 30:40] = 0.95
    return image.astype(np.float32)


def _expected(image: np.ndarray, i: int) -> np.ndarray:
    """By hand from the variant: the window (the middle 80% of the stored range, in modality units)
    maps its bounds to 0..255 by the standard's linear function; without one, min..max -> 0..255;
    MONOCHROME1 was stored dark-for-dense and is inverted back, so it reads like MONOCHROME2."""
    variant = dicom_variant(i)
    top = 2 ** variant["bits"] - 1
    mono1 = variant["photometric"] == "MONOCHROME1"
    stored = ((1 - image if mono1 else image) * top).round()
    slope, intercept = variant["rescale"] or (1.0, 0.0)
    value = stored * slope + intercept
    if variant["window"]:
        low, high = 0.1 * top * slope + intercept, 0.9 * top * slope + intercept
        center, width = (low + high) / 2, high - low
        out = np.clip(((value - (center - 0.5)) / (width - 1) + 0.5) * 255, 0, 255)
    else:
        out = (value - value.min()) * 255 / (value.max() - value.min())
    out = out.round()
    return (255 - out if mono1 else out).astype(np.uint8)


@pytest.mark.parametrize("i", range(12))
def test_decoded_pixels_are_what_synth_drew(tmp_path, i):
    image = _drawn()
    path = tmp_path / f"IH{i}.dcm"
    variant = dicom_variant(i)
    write_dicom(path, image, variant, "P1")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == variant["syntax"]
    assert ds.PhotometricInterpretation == variant["photometric"] and ds.BitsStored == variant["bits"]
    decoded = load_grayscale(str(path), SIZE)
    assert np.abs(decoded.astype(int) - _expected(image, i).astype(int)).max() <= 1
    # Whatever the encoding, dense (bright in the drawing) stays bright.
    assert decoded[15, 35] > decoded[2, 2] + 100


def test_the_variants_cover_what_a_pacs_sends():
    variants = [dicom_variant(i) for i in range(60)]
    assert {v["photometric"] for v in variants} == {"MONOCHROME1", "MONOCHROME2"}
    assert {v["bits"] for v in variants} == {12, 16}
    assert {v["syntax"] for v in variants} == {ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless}
    assert any(v["window"] and v["rescale"] for v in variants)


def _dataset(pixels: np.ndarray | None, **tags) -> Dataset:
    """A minimal DX dataset, uncompressed 16-bit unless tags say otherwise."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tags.pop("syntax", ExplicitVRLittleEndian)
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        if ds.file_meta.TransferSyntaxUID.is_compressed:  # one fragment, as encoders write it
            ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _bytes(ds: Dataset, tmp_path: Path, name: str = "x.dcm") -> bytes:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


def test_a_voi_lut_sequence_is_the_window(tmp_path):
    """LUT of 4 entries from stored value 100, 8-bit output: 100 -> 0, 101 -> 85, 102 -> 170,
    103 -> 255; values below 100 take the first entry, above 103 the last."""
    pixels = np.array([[90, 100, 101], [102, 103, 500], [100, 100, 100]])
    item = Dataset()
    item.LUTDescriptor = [4, 100, 8]
    item.add_new(0x00283006, "US", [0, 85, 170, 255])  # LUTData
    ds = _dataset(pixels, VOILUTSequence=[item], WindowCenter=0, WindowWidth=1000)  # the LUT comes first
    assert decode_grayscale(_bytes(ds, tmp_path), 3).tolist() == [[0, 0, 85], [170, 255, 255], [0, 0, 0]]


def test_first_of_several_windows_and_rescale(tmp_path):
    """Stored 0..1000, slope 2, intercept -1000 -> -1000..1000; the first window (center 0, width
    1001) spans -500..500: -1000 clips to 0, 0 -> 127.5 -> 128, 1000 clips to 255."""
    pixels = np.array([[0, 500, 1000]] * 3)
    ds = _dataset(pixels, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=[0, 40], WindowWidth=[1001, 400])
    assert decode_grayscale(_bytes(ds, tmp_path), 3)[0].tolist() == [0, 128, 255]


def test_multi_frame_uses_the_first_frame_with_a_note(tmp_path):
    frames = np.stack([np.arange(16).reshape(4, 4) * 10, np.zeros((4, 4))])
    ds = _dataset(frames, NumberOfFrames=2)
    notes: list[str] = []
    out = decode_grayscale(_bytes(ds, tmp_path), 4, notes=notes)
    assert out[0, 0] == 0 and out[3, 3] == 255 and out[0, 1] == 17  # 10/150*255
    assert notes == ["multi-frame DICOM (2 frames): the first frame is used"]


def test_found_by_magic_without_extension_and_by_extension_without_preamble(tmp_path):
    ds = _dataset(np.arange(16).reshape(4, 4))
    with_magic = _bytes(ds, tmp_path)
    assert with_magic[128:132] == b"DICM"
    assert decode_grayscale(with_magic, 4).max() == 255  # no path: found by the magic
    bare = tmp_path / "bare.dcm"
    pydicom.dcmwrite(bare, ds, enforce_file_format=False)  # no preamble, no DICM
    assert bare.read_bytes()[128:132] != b"DICM"
    assert load_grayscale(str(bare), 4).max() == 255


@pytest.mark.parametrize("case, reason", [
    ("no_pixels", "no PixelData"),
    ("zero_rows", "0 rows"),
    ("palette", "'PALETTE COLOR' is not converted to grayscale"),
    ("truncated", "pixel data cannot be decoded"),
    ("multi_component_j2k", "(1.2.840.10008.1.2.4.92): no pydicom plugin decodes it"),
])
def test_unusable_dicom_is_refused_with_the_reason(tmp_path, case, reason):
    pixels = np.arange(64).reshape(8, 8)
    ds = {
        "no_pixels": lambda: _dataset(None),
        "zero_rows": lambda: _dataset(np.zeros((0, 8))),
        "palette": lambda: _dataset(pixels, PhotometricInterpretation="PALETTE COLOR"),
        "truncated": lambda: _dataset(pixels),
        "multi_component_j2k": lambda: _dataset(pixels, syntax=pydicom.uid.JPEG2000MCLossless),
    }[case]()
    data = _bytes(ds, tmp_path)
    if case == "truncated":
        data = data[:-40]
    with pytest.raises(ImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        decode_grayscale(data, 8, path="x.dcm")


def test_a_missing_plugin_is_named(tmp_path):
    """JPEG-LS has decoders only in plugins: with pylibjpeg hidden, the reason says what to install
    (in a fresh interpreter, so the real plugins stay loaded here)."""
    ds = _dataset(np.arange(64).reshape(8, 8))
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)  # any compressed file; its syntax UID is then switched to JPEG-LS
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLSLossless
    ds.save_as(path, enforce_file_format=True)
    script = ("import sys; sys.modules['pylibjpeg'] = sys.modules['libjpeg'] = None\n"
              "from data_prep.images import load_grayscale, ImageError\n"
              f"try:\n    load_grayscale({str(path)!r}, 8)\nexcept ImageError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "JPEG-LS Lossless" in out.stdout and "no installed plugin decodes it" in out.stdout, out.stdout + out.stderr
    assert "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg" in out.stdout, out.stdout
