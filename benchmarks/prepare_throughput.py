"""`cxr prepare`'s Ray Data path against a plain single-process Pillow loop, in one run.

Both decode the same N NIH-like 1024x1024 8-bit PNGs, convert to grayscale, resize to 320x320 and
write uncompressed Parquet. Also measures reading the prepared shards back into torch uint8
batches from one process, and the DICOM case: M in-house-like 512x512 12-bit DICOMs (half
JPEG 2000, half uncompressed) against the same pictures as 16-bit PNGs, both through `cxr
prepare`, with how busy the cores were (no target). Last line: one JSON object with the figures.

    python benchmarks/prepare_throughput.py --images 5000 --dicom-images 1000
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from _common import report, work_folder  # benchmarks/ is on the path as a script
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from data_prep.config import PrepareConfig, SourceConfig
from data_prep.join import load_sources
from data_prep.pipeline import run_prepare
from data_prep.synth import LOOKS, NIH_HEADER, DefaultImages, write_dicom
from orchestration.settings.runtime import init_ray

DISTINCT = 48  # distinct pictures; files repeat them so writing N inputs stays quick


def make_nih_folder(root: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    maker = DefaultImages(size, LOOKS["nih"], rng)
    encoded = []
    for _ in range(DISTINCT):
        image = (maker.make(rng.random(21) < 0.2) * 255).astype(np.uint8)
        encoded.append(cv2.imencode(".png", image)[1].tobytes())
    images = root / "images_001" / "images"
    images.mkdir(parents=True)
    paths, lines = [], [NIH_HEADER]
    for i in range(n):
        name = f"{i // 3 + 1:08d}_{i % 3:03d}.png"
        (images / name).write_bytes(encoded[i % DISTINCT])
        paths.append(images / name)
        lines.append(f"{name},No Finding,{i % 3},{i // 3 + 1},50,M,PA,{size},{size},0.143,0.143")
    # One finding is needed for a label space at all.
    lines[1] = lines[1].replace("No Finding", "Mass")
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return paths


def make_dicom_and_png_sets(root: Path, n: int, size: int) -> dict[str, Path]:
    """The same pictures twice, as generic-CSV sets: 12-bit DICOMs (even files JPEG 2000 lossless,
    odd ones uncompressed) and 16-bit PNGs."""
    rng = np.random.default_rng(1)
    maker = DefaultImages(size, LOOKS["inhouse"], rng)
    pictures = [maker.make(rng.random(21) < 0.2) for _ in range(DISTINCT)]
    tables = {}
    for kind in ("dicom", "png16"):
        folder = root / kind
        folder.mkdir(parents=True)
        lines = ["path,patient_id,Mass"]
        for i in range(n):
            if kind == "dicom":
                name = f"im{i:06d}.dcm"
                variant = {"photometric": "MONOCHROME2", "bits": 12, "rescale": None, "window": False,
                           "syntax": ExplicitVRLittleEndian if i % 2 else JPEG2000Lossless}
                write_dicom(folder / name, pictures[i % DISTINCT], variant, f"P{i}")
            else:
                name = f"im{i:06d}.png"
                cv2.imwrite(str(folder / name), (pictures[i % DISTINCT] * 4095).round().astype(np.uint16))
            lines.append(f"{name},P{i // 3},{i % 2}")
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")
        tables[kind] = folder / "labels.csv"
    return tables


def prepare_rate(table: Path, out: Path, image_size: int) -> tuple[float, float]:
    """(images/s, mean % busy of all cores) for `cxr prepare` of one generic-CSV set."""
    config = PrepareConfig(sources=[SourceConfig(name="inhouse", kind="csv", path=table)], internal="inhouse",
                           image_size=image_size)
    joined = load_sources(config)
    psutil.cpu_percent()
    start = time.perf_counter()
    run_prepare(joined, config, out)
    seconds = time.perf_counter() - start
    return len(joined.rows) / seconds, psutil.cpu_percent()


def pillow_loop(paths: list[Path], out: Path, size: int) -> None:
    """The script a lab would write: one process, Pillow decode + resize, Parquet shards."""
    out.mkdir()
    batch, part = [], 0
    for path in paths:
        with Image.open(path) as image:
            batch.append(image.convert("L").resize((size, size), Image.BILINEAR).tobytes())
        if len(batch) == 2048 or path is paths[-1]:
            pq.write_table(pa.table({"image": batch}), out / f"part-{part}.parquet", compression="none")
            batch, part = [], part + 1


def read_rate(prepared, seconds: float = 3.0) -> float:
    """Images/s from prepared shards into torch uint8 tensors, one process."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for split in ("train", "val", "test"):
            for _, images, labels in prepared.iter_uint8_batches("nih", split, 256):
                batch = torch.from_numpy(images)
                torch.from_numpy(labels)
                n += batch.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--dicom-images", type=int, default=1000)
    args = parser.parse_args()

    with work_folder("prepare") as work:
        paths = make_nih_folder(work / "nih", args.images, args.source_size)
        started = time.perf_counter()
        init_ray()
        ray_init_s = time.perf_counter() - started

        config = PrepareConfig(
            sources=[SourceConfig(name="nih", kind="nih", path=work / "nih")], image_size=args.image_size
        )
        # Warm the page cache for both contenders alike.
        for p in paths:
            p.read_bytes()
        start = time.perf_counter()
        prepared = run_prepare(load_sources(config), config, work / "prepared")
        ray_s = time.perf_counter() - start

        start = time.perf_counter()
        pillow_loop(paths, work / "pillow", args.image_size)
        pillow_s = time.perf_counter() - start

        read = read_rate(prepared)
        tables = make_dicom_and_png_sets(work / "dicom_case", args.dicom_images, 512)
        dicom_rate, dicom_busy = prepare_rate(tables["dicom"], work / "prepared_dicom", args.image_size)
        png16_rate, png16_busy = prepare_rate(tables["png16"], work / "prepared_png16", args.image_size)
        figures = {
            "benchmark": "prepare_throughput",
            "images": args.images,
            "cores": os.cpu_count(),
            "ray_images_per_s": round(args.images / ray_s, 1),
            "pillow_images_per_s": round(args.images / pillow_s, 1),
            "ray_init_s": round(ray_init_s, 1),
            "ratio": round(pillow_s / ray_s, 3),
            "target": 1.5,
            "read_images_per_s": round(read),
            "read_target": 20000,
            "dicom_images": args.dicom_images,
            "dicom_images_per_s": round(dicom_rate, 1),
            "png16_images_per_s": round(png16_rate, 1),
            "dicom_vs_png16": round(dicom_rate / png16_rate, 3),
            "dicom_cpu_busy_percent": round(dicom_busy),
            "png16_cpu_busy_percent": round(png16_busy),
        }
        print(f"Ray Data prepare: {ray_s:.1f} s, Pillow loop: {pillow_s:.1f} s, read back: {read:,.0f} img/s")
        print(f"512² 12-bit DICOM (half JPEG 2000): {dicom_rate:,.0f} img/s ({dicom_busy:.0f}% of the cores busy); "
              f"the same as 16-bit PNG: {png16_rate:,.0f} img/s ({png16_busy:.0f}%)")
        report(**figures)


if __name__ == "__main__":
    main()
