"""`cxr prepare` with Ray Data: decode -> grayscale -> resize -> uint8 -> Parquet shards + manifest.

Images that cannot be used are not dropped silently: each decode task appends them, with the
reason, to a JSON-lines file under `_skipped/` (and images used with a remark, such as a DICOM's
first of several frames, to another); the driver gathers those into the manifest.

The output folder is marked incomplete (INCOMPLETE_MARKER) from its creation until its manifest is
written, so a prepare that failed half-way (a full disk, a kill) leaves a folder no reader takes for
a finished one. `--overwrite` deletes only a prepared or half-prepared folder, and never one that
holds or lies above the inputs. The output may be an object-store URI (cxrcommon.storage): the
decode tasks and Ray Data's writer then write there directly.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import ray
from pyarrow.fs import FileType

from cxrcommon.errors import DataPrepError
from cxrcommon.storage import Folder
from data_prep.config import PrepareConfig
from data_prep.images import ImageError, load_grayscale
from data_prep.join import JoinedDataset, dataset_stats, train_class_balance
from data_prep.prepared import (
    FORMAT_VERSION,
    IMAGE_COLUMN,
    INCOMPLETE_MARKER,
    MANIFEST_NAME,
    SHARDS_DIR,
    Manifest,
    PreparedDataset,
    shard_dir,
)
from data_prep.split import SPLITS, patients_crossing_splits

log = logging.getLogger(__name__)

SKIPPED_DIR = "_skipped"  # decode tasks' reports while `cxr prepare` runs
SKIPPED_KIND, NOTE_KIND = "skipped", "note"  # an image left out / one used with a remark
SKIPPED_LIST = "skipped.json"


def _decode_batch(batch: pd.DataFrame, *, size: int, skipped_dir: str, limits: dict) -> pd.DataFrame:
    images, keep, skipped, noted = [], [], [], []
    for row in batch.itertuples(index=False):
        where = {"sample_id": int(row.sample_id), "domain": row.domain, "image_id": row.image_id, "path": row.path}
        notes: list[str] = []
        try:
            images.append(load_grayscale(row.path, size, notes, **limits).tobytes())
            keep.append(True)
        except ImageError as err:
            keep.append(False)
            skipped.append({**where, "reason": str(err)})
        noted += [{**where, "note": note} for note in notes]
    for records, kind in ((skipped, SKIPPED_KIND), (noted, NOTE_KIND)):
        if records:
            Folder.at(skipped_dir).write_text("".join(json.dumps(r) + "\n" for r in records),
                                              f"{kind}-{uuid.uuid4().hex}.jsonl")
    out = batch[keep].drop(columns=["path"])
    out[IMAGE_COLUMN] = images
    return out


def _gather(skipped_dir: Folder, kind: str) -> list[dict]:
    by_sample: dict[tuple, dict] = {}  # keyed by sample: a retried task may report a file twice
    for part in skipped_dir.files(".jsonl"):
        if not part.startswith(f"{kind}-"):
            continue
        for line in skipped_dir.read_text(part).splitlines():
            record = json.loads(line)
            by_sample[(record["sample_id"], record.get("note"))] = record
    return [by_sample[k] for k in sorted(by_sample)]


def _note_warnings(noted: list[dict]) -> list[str]:
    """One manifest warning per domain and note: how many images, and one of them."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in noted:
        groups.setdefault((record["domain"], record["note"]), []).append(record)
    return [f"{domain}: {len(records)} image(s): {note} (e.g. {records[0]['path']})"
            for (domain, note), records in sorted(groups.items())]


def _inputs_inside(out: Folder, joined: JoinedDataset, sources: list[Path]) -> str | None:
    """An input (a dataset's folder or table, or an image) that lies in `out` or is `out`, if any
    (inputs are local files: none lies in an object store)."""
    if not out.is_local:
        return None
    roots = {out.path, str(Path(out.path).resolve())}
    for source in sources:
        for path in {os.path.abspath(source), str(source.resolve())}:
            if any(path == root or path.startswith(root + os.sep) for root in roots):
                return f"dataset {source}"
    prefixes = tuple(root + os.sep for root in roots)
    for path in joined.rows["path"].dropna():
        if os.path.abspath(path).startswith(prefixes):
            return f"image {path}"
    return None


def _prepare_out_dir(out: Folder, overwrite: bool, joined: JoinedDataset, sources: list[Path]) -> None:
    out.check_reachable()
    kind = out.kind()
    if kind == FileType.File:
        raise DataPrepError(f"--out {out.location} is a file, not a folder")
    if kind == FileType.Directory and not out.is_empty():
        if not overwrite:
            raise DataPrepError(f"{out} exists and is not empty; pass --overwrite to replace it")
        inside = _inputs_inside(out, joined, sources)
        if inside is not None:
            raise DataPrepError(f"--overwrite refused: {out} holds the input {inside}; deleting it would "
                                "delete the data being prepared. Choose an --out folder outside the inputs")
        if not (out.exists(MANIFEST_NAME) or out.exists(INCOMPLETE_MARKER)):
            raise DataPrepError(f"--overwrite refused: {out} is not a prepared dataset (no {MANIFEST_NAME}, no "
                                f"{INCOMPLETE_MARKER}); it is left as it is. Choose a new or empty --out folder")
        out.delete()
    out.create()
    out.write_text("cxr prepare is writing this folder, or stopped before it finished; run it again with "
                   "--overwrite\n", INCOMPLETE_MARKER)
    out.child(SKIPPED_DIR).create()


_WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def _write_failure(exc: BaseException) -> str | None:
    """The OS's reason when `exc` (or what it wraps, e.g. from a Ray task) is a failed write."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRORS:
            return os.strerror(exc.errno)
        for code in _WRITE_ERRORS:
            if os.strerror(code) in str(exc):
                return os.strerror(code)
        exc = exc.__cause__ or exc.__context__
    return None


def _list_shards(out: Folder, domains: list[str]) -> dict[str, dict[str, list[str]]]:
    shards = {}
    for domain in domains:
        shards[domain] = {}
        for split in SPLITS:
            folder = shard_dir(out, domain, split)
            prefix = folder.path[len(out.path) + 1:]
            shards[domain][split] = [f"{prefix}/{name}" for name in folder.files(".parquet")]
    return shards


def run_prepare(
    joined: JoinedDataset, config: PrepareConfig, out: str | Path, *, overwrite: bool = False,
    resolved_config: dict | None = None,
) -> PreparedDataset:
    """Decode and write every image of `joined` under `out` (a folder or an object-store URI); return
    the prepared dataset. A write that fails (read-only folder, full disk, a store that refuses us)
    raises a user error; the folder stays marked incomplete."""
    out = Folder.at(out)
    try:
        _prepare_out_dir(out, overwrite, joined, [s.path for s in config.sources])
        return _write_prepared(joined, config, out, resolved_config)
    except DataPrepError:
        raise
    except Exception as exc:  # an OSError, or a Ray error wrapping one from a decode or write task
        reason = _write_failure(exc)
        if reason is None:
            raise
        raise DataPrepError(_cannot_write(out, exc, reason)) from None


def _cannot_write(out: Folder, exc: BaseException, reason: str) -> str:
    where = getattr(exc, "filename", None) or out.location
    marked = (f"; the half-written folder is marked incomplete ({INCOMPLETE_MARKER}): free space or fix the "
              "permissions, then run the same command with --overwrite") if out.exists(INCOMPLETE_MARKER) else ""
    return f"cannot write the prepared dataset at {where}: {reason}{marked}"


def _write_prepared(joined: JoinedDataset, config: PrepareConfig, out: Folder, resolved_config: dict | None,
                    ) -> PreparedDataset:
    skipped_dir = out.child(SKIPPED_DIR)
    # Decode+write is the only real stage. Ray Data's per-operator reservation would keep a CPU
    # for the (trivial) input stage; measured on 2 cores it halves decode concurrency.
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    # Blocks of `batch_size` rows from one domain and split: each decode task then writes exactly
    # one shard file (from_pandas of the whole table would make one block, decoded by one task).
    # Rows go in a seeded random order: sources list images patient by patient, and a training
    # stream that kept that order would fill a batch with a few patients' images.
    rng = np.random.default_rng(config.shuffle_seed)
    blocks = [
        shuffled.iloc[i : i + config.batch_size]
        for _, group in joined.rows.groupby(["domain", "split"], sort=True)
        for shuffled in [group.iloc[rng.permutation(len(group))]]
        for i in range(0, len(shuffled), config.batch_size)
    ]
    ds = ray.data.from_pandas(blocks).map_batches(
        _decode_batch,
        batch_format="pandas",
        batch_size=None,
        fn_kwargs={"size": config.image_size, "skipped_dir": skipped_dir.location,
                   "limits": {"max_pixels": config.max_pixels, "max_file_bytes": config.max_file_bytes}},
    )
    ds.write_parquet(
        out.file(SHARDS_DIR),
        filesystem=out.fs,  # it carries no credentials: each task reads them from its environment
        partition_cols=["domain", "split"],
        compression="none",  # raw uint8 pixels do not compress well and read 4x faster plain
    )

    skipped = _gather(skipped_dir, SKIPPED_KIND)
    noted = _gather(skipped_dir, NOTE_KIND)
    skipped_dir.delete()
    out.write_text(json.dumps(skipped, indent=1), SKIPPED_LIST)
    total = len(joined.rows)
    bad_fraction = len(skipped) / total
    if bad_fraction > config.max_bad_fraction:
        raise DataPrepError(
            f"{len(skipped)} of {total} images ({bad_fraction:.2%}) could not be used, more than "
            f"--max-bad-fraction {config.max_bad_fraction}; they are listed with reasons in "
            f"{out.name(SKIPPED_LIST)} (the prepared directory is left without a manifest)"
        )

    kept = joined.without({s["sample_id"] for s in skipped})
    stats = dataset_stats(kept)
    Manifest(
        format_version=FORMAT_VERSION,
        image_size=config.image_size,
        label_space=kept.label_space,
        common=kept.common,
        internal=kept.internal,
        internal_only=kept.internal_only,
        domains=stats["domains"],
        num_samples=len(kept.rows),
        max_sample_id=int(joined.rows["sample_id"].max()),
        train_class_balance=train_class_balance(kept),
        patient_disjoint={
            d: not patients_crossing_splits(
                kept.rows.loc[kept.rows["domain"] == d, "patient_id"],
                kept.rows.loc[kept.rows["domain"] == d, "split"],
            )
            for d in kept.domain_findings
        },
        shards=_list_shards(out, list(kept.domain_findings)),
        skipped=skipped,
        warnings=kept.warnings + _note_warnings(noted),
        config=resolved_config or config.model_dump(mode="json"),
    ).write(out)
    out.delete_file(INCOMPLETE_MARKER)
    return PreparedDataset.load(out.location)
