"""No single file stops a job: header bombs, huge-but-small files, FIFOs, devices, DICOM header
garbage, files truncated at random offsets and files with bytes flipped at random, in every format
the decoder takes, go through a real `cxr prepare`: it finishes, and every file it cannot use is
listed with a reason. A decode's peak memory per pixel is bounded. Every file is made here."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from conftest import ROOT
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import RLELossless
from typer.testing import CliRunner

from data_prep.images import ImageError, declared_size, load_grayscale
from data_prep.synth import dicom_variant, write_dicom
from orchestration.cli import app

runner = CliRunner()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """An 8-bit grayscale PNG written by hand: `rows` (filtered scanlines) or all-zero rows,
    compressed as a stream (a 8000² image needs no 64 MB array)."""
    squeeze = zlib.compressobj(9)
    if rows is None:
        line = bytes(width + 1)
        body = b"".join(squeeze.compress(line) for _ in range(height))
    else:
        body = squeeze.compress(rows)
    body += squeeze.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _jpeg_claiming(height: int, width: int) -> bytes:
    """A baseline JPEG whose frame header claims height x width, around a real tiny scan."""
    ok, real = cv2.imencode(".jpg", np.full((8, 8), 100, np.uint8))
    data = bytearray(real.tobytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _dicom(path: Path, side: int = 48, i: int = 0, raw: dict[int, tuple[str, bytes]] | None = None, **changes) -> None:
    """A real DICOM file, then header values changed: `changes` by keyword, `raw` as bytes written
    as they are (values pydicom itself would refuse to write)."""
    image = (np.add.outer(np.arange(side), np.arange(side)) / (2 * side)).astype(np.float32)
    write_dicom(path, image, dicom_variant(i), "P", pixels=True)
    if changes or raw:
        ds = pydicom.dcmread(path)
        for key, value in changes.items():
            setattr(ds, key, value)
        for tag, (vr, value) in (raw or {}).items():
            ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
        ds.save_as(path)


def _good_files(folder: Path) -> dict[str, bytes]:
    """Real files of every format the decoder takes (the sources of the damaged copies)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    files = {"png8.png": cv2.imencode(".png", image)[1].tobytes(),
             "png16.png": cv2.imencode(".png", image.astype(np.uint16) * 16)[1].tobytes(),
             "jpeg.jpg": cv2.imencode(".jpg", image)[1].tobytes()}
    for name, i in (("plain.dcm", 1), ("rle.dcm", 4), ("j2k.dcm", 5), ("windowed.dcm", 7)):
        _dicom(folder / name, i=i)
        files[name] = (folder / name).read_bytes()
        (folder / name).unlink()
    return files


def _rle_overflow(path: Path) -> None:
    """An RLE DICOM whose segment's runs decode to more bytes than its 48 x 48 frame holds: the
    Rust RLE decoder panics (pyo3's PanicException, a BaseException) instead of raising an error."""
    from pydicom.encaps import encapsulate, generate_frames

    image = np.zeros((48, 48), np.float32)
    write_dicom(path, image, {**dicom_variant(4), "syntax": RLELossless}, "P", pixels=True)
    ds = pydicom.dcmread(path)
    header = next(generate_frames(ds.PixelData, number_of_frames=1))[:64]  # segment count and offsets
    ds.PixelData = encapsulate([header + bytes([0x81, 0x00]) * 3000])  # "repeat 0x00 128 times", 3000 times
    ds.save_as(path)


def test_a_decoder_that_panics_makes_an_unusable_image_not_a_dead_task(tmp_path):
    _rle_overflow(tmp_path / "overflow.dcm")
    with pytest.raises(ImageError, match="pixel data cannot be decoded"):
        load_grayscale(str(tmp_path / "overflow.dcm"), 32, [])


def _hostile(folder: Path) -> dict[str, str | None]:
    """Write the hostile files into `folder`; file name -> the reason it must be skipped for (a
    phrase of it), or None where a damaged file may still decode."""
    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    (folder / "png_bomb.png").write_bytes(_png(100_000, 100_000, rows=b"\0" * 10))
    (folder / "jpeg_bomb.jpg").write_bytes(_jpeg_claiming(65_000, 65_000))
    (folder / "huge_but_small.png").write_bytes(_png(8000, 8000))
    expected.update({"png_bomb.png": "100,000 x 100,000 = 10,000,000,000 pixels, more than prepare.max_pixels",
                     "jpeg_bomb.jpg": "65,000 x 65,000", "huge_but_small.png": "8,000 x 8,000 = 64,000,000 pixels"})
    _dicom(folder / "dicom_bomb.dcm", Rows=65535, Columns=65535)
    _dicom(folder / "frames_garbage.dcm", raw={0x00280008: ("IS", b"1A")})  # NumberOfFrames
    big = folder / "huge_rle.dcm"
    write_dicom(big, np.zeros((8000, 8000), np.float32), {**dicom_variant(4), "syntax": RLELossless}, "P")
    _rle_overflow(folder / "rle_overflow.dcm")
    expected.update({"dicom_bomb.dcm": "65,535 x 65,535", "frames_garbage.dcm": "NumberOfFrames '1A' is not a whole number",
                     "huge_rle.dcm": "8,000 x 8,000", "rle_overflow.dcm": "pixel data cannot be decoded"})
    os.mkfifo(folder / "fifo.png")
    (folder / "folder.png").mkdir()
    expected.update({"fifo.png": "not a regular file (a FIFO)", "folder.png": "not a regular file (a folder)"})
    rng = np.random.default_rng(7)
    for name, data in _good_files(folder).items():
        stem, suffix = name.split(".")
        for k in range(3):  # cut at random offsets: never a usable image
            cut = folder / f"{stem}_cut{k}.{suffix}"
            cut.write_bytes(data[:int(rng.integers(1, len(data) - 1))])
            expected[cut.name] = ""
        for k in range(3):  # bytes flipped at random: skipped with a reason, or still an image
            flipped = bytearray(data)
            for at in rng.integers(0, len(data), 8):
                flipped[at] ^= 0xFF
            (folder / f"{stem}_flip{k}.{suffix}").write_bytes(bytes(flipped))
            expected[f"{stem}_flip{k}.{suffix}"] = None
    return expected


def test_headers_are_read_without_decoding():
    assert declared_size(_png(300, 200, rows=b"")) == (200, 300)
    assert declared_size(_jpeg_claiming(1234, 567)) == (1234, 567)
    with pytest.raises(ImageError, match="damaged JPEG"):
        declared_size(b"\xff\xd8\x00\x00")


def test_devices_and_fifos_are_not_opened_for_reading(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ImageError, match="not a regular file \\(a FIFO\\)"):  # and it does not block
        load_grayscale(str(tmp_path / "pipe"), 8)
    with pytest.raises(ImageError, match="not a regular file \\(a character device\\)"):
        load_grayscale("/dev/zero", 8)
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + bytes(2000))
    with pytest.raises(ImageError, match="2,004 bytes, more than prepare.max_file_bytes 1,000"):
        load_grayscale(str(tmp_path / "big.png"), 8, max_file_bytes=1000)


def test_prepare_finishes_over_hostile_files_and_lists_each_with_its_reason(ray_session, tmp_path):
    root = tmp_path / "inhouse"
    expected = _hostile(root / "images")
    good = root / "images" / "good"
    good.mkdir()
    rng = np.random.default_rng(1)
    rows = ["path,patient_id,Effusion"]
    for i in range(30):  # enough usable images for the patient-level splits
        cv2.imwrite(str(good / f"g{i}.png"), rng.integers(0, 256, (24, 24), dtype=np.uint8))
        rows.append(f"images/good/g{i}.png,P{i},{i % 2}")
    rows += [f"images/{name},H{i},1" for i, name in enumerate(sorted(expected))]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "prepared"
    result = runner.invoke(app, ["prepare", "--csv", f"inhouse={root / 'labels.csv'}", "--internal", "inhouse",
                                 "--out", str(out), "--image-size", "16", "--max-bad-fraction", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in manifest["skipped"]}
    for name, reason in expected.items():
        if reason is None:
            continue
        assert name in skipped, f"{name} was not skipped"
        assert reason in skipped[name], (name, skipped[name])
    assert all(reason.strip() for reason in skipped.values())
    assert manifest["num_samples"] + len(skipped) == len(rows) - 1  # every row: kept or listed
    assert manifest["num_samples"] >= 30


_PEAK = """
import sys, tracemalloc
from data_prep.images import load_grayscale
tracemalloc.start()  # numpy's and Python's allocations (OpenCV's images are numpy arrays too)
load_grayscale(sys.argv[1], 64)
print(tracemalloc.get_traced_memory()[1] / int(sys.argv[2]))
"""


@pytest.mark.parametrize("kind, bound", [("dicom", 16.0), ("png16", 6.0)])
def test_a_decode_needs_a_bounded_number_of_bytes_per_pixel(tmp_path, kind, bound):
    """The peak of what a decode allocates (tracemalloc: numpy's and Python's heap), in a fresh
    interpreter on a 4000² 16-bit image. The old float64 path: 39 B/px for a windowed, rescaled
    DICOM and 12 for a 16-bit PNG (and a read of the file reserved the whole 512 MiB byte bound,
    33 B/px more here); now ~13 and ~3."""
    side = 4000
    image = (np.add.outer(np.arange(side), np.arange(side)) / (2 * side)).astype(np.float32)
    if kind == "dicom":
        path = tmp_path / "big.dcm"
        write_dicom(path, image, dicom_variant(7), "P")  # 16 bits, rescale, window, MONOCHROME1
    else:
        path = tmp_path / "big.png"
        cv2.imwrite(str(path), (image * 4095).astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    del image
    out = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(side * side)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    per_pixel = float(out.stdout.strip())
    print(f"{kind}: {per_pixel:.1f} bytes per pixel")
    assert per_pixel <= bound, f"{kind}: {per_pixel:.1f} bytes per pixel"
