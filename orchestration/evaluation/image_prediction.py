"""`cxr predict --images`: a trained model's probabilities for raw image files (PNG, JPEG, DICOM).

Files are decoded by `cxr prepare`'s own code in Ray Data tasks, then scored in `map_batches`
by a pool of actors that each load the model once (one GPU each when the cluster has them).
Files that cannot be decoded are listed with the reason, never dropped silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data_prep.images import ImageError, load_grayscale
from orchestration.settings.config import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
BATCH = 32


def list_images(source: Path) -> pd.DataFrame:
    """(image_id, path) for a folder (every image file under it) or a CSV with a `path` column
    (relative to the CSV's folder unless absolute; `image_id` optional)."""
    if source.is_dir():
        paths = sorted(str(p) for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ConfigError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) under it")
        return pd.DataFrame({"image_id": [os.path.relpath(p, source) for p in paths], "path": paths})
    if not source.exists():
        raise ConfigError(f"--images {source} does not exist (a folder of images or a CSV with a path column)")
    table = pd.read_csv(source, dtype=str, keep_default_na=False)
    if "path" not in table.columns:
        raise ConfigError(f"{source}: no 'path' column; found {list(table.columns)}")
    paths = [p if os.path.isabs(p) else str(source.parent / p) for p in table["path"].str.strip()]
    ids = table["image_id"] if "image_id" in table.columns else table["path"]
    return pd.DataFrame({"image_id": ids.to_numpy(), "path": paths})


def decode_batch(batch: pd.DataFrame, *, size: int) -> pd.DataFrame:
    """Ray Data task: each file -> raw uint8 bytes, or the reason it cannot be used."""
    images, reasons = [], []
    for path in batch["path"]:
        try:
            images.append(load_grayscale(path, size).tobytes())
            reasons.append("")
        except ImageError as err:
            images.append(b"")
            reasons.append(str(err))
    return batch.assign(image=images, reason=reasons)


class Scorer:
    """Ray Data actor: loads the model once, then scores batches of decoded images."""

    def __init__(self, checkpoint: str, size: int, tencrop: bool):
        import torch

        from cxrmodel.inference import predict_probs
        from orchestration.training.checkpoint import load_trained

        self.torch, self.predict_probs = torch, predict_probs
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        net, _, plan = load_trained(checkpoint)
        self.net, self.label_space, self.size, self.tencrop = net.to(self.device), plan.label_space, size, tencrop

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        good = (batch["reason"] == "").to_numpy()
        probs = np.full((len(batch), len(self.label_space)), np.nan, np.float32)
        if good.any():
            images = np.stack([np.frombuffer(b, np.uint8).reshape(self.size, self.size)
                               for b in batch["image"][good]])
            with self.torch.no_grad():
                probs[good] = self.predict_probs(self.net, self.torch.from_numpy(images).to(self.device),
                                                 tencrop=self.tencrop).cpu().numpy()
        return pd.concat([batch.drop(columns=["image"]).reset_index(drop=True),
                          pd.DataFrame(probs, columns=self.label_space)], axis=1)


@dataclass
class ImagePredictions:
    table: pd.DataFrame  # image_id, domain, one column per finding, path
    skipped: list[dict]  # image_id, path, reason


def predict_images(images: pd.DataFrame, checkpoint: Path, *, size: int, tencrop: bool, domain: str,
                   actors: int, gpus_per_actor: float, progress=None) -> ImagePredictions:
    import ray.data

    from orchestration.evaluation.decisions import read_decisions
    from orchestration.training.checkpoint import read_run_description

    ray.data.DataContext.get_current().enable_progress_bars = False
    scored = (
        ray.data.from_pandas([images.iloc[i:i + BATCH] for i in range(0, len(images), BATCH)])
        .map_batches(decode_batch, batch_format="pandas", batch_size=BATCH, fn_kwargs={"size": size})
        .map_batches(Scorer, batch_format="pandas", batch_size=BATCH, num_gpus=gpus_per_actor,
                     fn_constructor_kwargs={"checkpoint": str(checkpoint), "size": size, "tencrop": tencrop},
                     compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
    )
    parts, done = [], 0
    for part in scored.iter_batches(batch_format="pandas", batch_size=None):
        parts.append(part)
        done += len(part)
        if progress:
            progress(done, len(images))
    rows = pd.concat(parts, ignore_index=True)
    bad = rows["reason"] != ""
    skipped = rows.loc[bad, ["image_id", "path", "reason"]].to_dict("records")
    table = rows[~bad].drop(columns=["reason"]).sort_values("image_id").reset_index(drop=True)
    table.insert(1, "domain", domain)
    label_space = read_run_description(checkpoint)[1].label_space
    table = read_decisions(checkpoint, label_space).decided(table, label_space)
    return ImagePredictions(table[[c for c in table.columns if c != "path"] + ["path"]], skipped)


def predict_image_files(source: Path, checkpoint: Path, out: Path, *, tencrop: bool, image_size: int | None,
                        actors: int, address: str | None, say: Callable[[str], None]) -> tuple[ImagePredictions, Path]:
    """Score the images of a folder or CSV on Ray (a GPU per actor when the cluster has them) into
    `out`; the files that could not be used go, with the reason, into `<out>.skipped.json` (returned)."""
    # Here, not at the top: Ray Data's decode tasks import this module and need neither torch nor Ray Train.
    from orchestration.evaluation.prediction import trained_image_size, write_table
    from orchestration.settings.runtime import init_ray
    from orchestration.training.checkpoint import trained_weights

    listed = list_images(source)
    size = image_size or trained_image_size(checkpoint)
    trained_weights(checkpoint)  # refuse an unusable checkpoint here, not in every scoring actor
    init_ray(address)
    import ray

    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    say(f"scoring {len(listed):,} images at {size}² with up to {actors} model copies" + (" on GPUs" if gpus else ""))
    step = max(len(listed) // 10, 1)

    def progress(done: int, total: int) -> None:
        if done // step != (done - 1) // step or done == total:
            say(f"  {done:,} / {total:,}")

    result = predict_images(listed, checkpoint, size=size, tencrop=tencrop, domain=source.stem, actors=actors,
                            gpus_per_actor=gpus, progress=progress)
    write_table(result.table, out)
    skipped = out.with_name(out.stem + ".skipped.json")
    skipped.write_text(json.dumps(result.skipped, indent=1))
    return result, skipped
