"""The prepared-directory format: Parquet shards per domain and split plus `manifest.json`.

Layout:
    PREPARED/manifest.json                          written last: its presence means complete
    PREPARED/shards/domain=<d>/split=<s>/*.parquet  columns: sample_id, image_id, patient_id,
                                                    sex, age, view (nullable), image (raw uint8
                                                    size*size bytes), one int8 column per finding
                                                    of the label space; rows in a seeded random order
`Manifest` is the typed contract: `Manifest.write` is its one writer (`cxr prepare`, last), and every
reader goes through `PreparedDataset.load`, which checks `format_version` and the shards it lists.
PREPARED is a folder or an object-store URI (cxrcommon.storage).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError

from cxrcommon.errors import DataPrepError, first_line
from cxrcommon.storage import Folder
from data_prep.findings import FindingGroups

FORMAT_VERSION = 3  # 2: per-domain training P_c / N_c; rows in a seeded random order. 3: sex, age, view
MANIFEST_NAME = "manifest.json"
INCOMPLETE_MARKER = ".cxr-prepare-incomplete"  # present while `cxr prepare` writes (or after it failed)
SHARDS_DIR = "shards"
IMAGE_COLUMN = "image"


def shard_dir(root: Folder, domain: str, split: str) -> Folder:
    return root.child(SHARDS_DIR, f"domain={domain}", f"split={split}")


def images_from_arrow(column: pa.Array | pa.ChunkedArray, size: int) -> np.ndarray:
    """A binary column of raw size*size images -> (n, size, size) uint8, without copying per row."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    arrays = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32, len(chunk) + 1, chunk.offset * 4)
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        arrays.append(data.reshape(len(chunk), size, size))
    if not arrays:
        return np.empty((0, size, size), np.uint8)
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


class Counts(BaseModel):
    positive: int
    negative: int


class LabelCounts(Counts):
    unknown: int


class DomainSummary(BaseModel):
    """One domain as `cxr prepare --dry-run` prints it (Table I) and the manifest keeps it."""

    role: str  # internal | external
    findings: list[str]  # the findings this domain labels
    num_images: int
    num_patients: int
    splits: dict[str, int]  # images per split
    counts: dict[str, LabelCounts]  # per finding of the label space


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int
    image_size: int
    label_space: list[str]
    common: list[str]
    internal: str
    internal_only: list[str]
    domains: dict[str, DomainSummary]
    num_samples: int
    max_sample_id: int  # sample ids index the temporal ensemble's rows
    train_class_balance: dict[str, dict[str, Counts]]  # domain -> finding -> P_c / N_c of its train split
    patient_disjoint: dict[str, bool]
    shards: dict[str, dict[str, list[str]]]  # domain -> split -> files, relative to the folder
    skipped: list[dict]  # images that could not be used, with the reason
    warnings: list[str]
    config: dict  # the resolved config of the `cxr prepare` run

    def write(self, root: Folder) -> None:
        root.write_text(self.model_dump_json(indent=1), MANIFEST_NAME)


@dataclass(frozen=True)
class PreparedDataset:
    folder: Folder
    manifest: Manifest

    @property
    def root(self) -> str:
        """The folder or URI as it was given: what messages and the training plan name."""
        return self.folder.location

    @classmethod
    def load(cls, root: str | Path) -> PreparedDataset:
        folder = Folder.at(root)
        root = folder.location
        how = "run `cxr prepare ... --out {}` to (re)create it".format(root)
        folder.check_reachable()
        if not folder.is_dir():
            raise DataPrepError(f"prepared dataset {root} does not exist; {how}")
        manifest_path = folder.name(MANIFEST_NAME)
        if folder.exists(INCOMPLETE_MARKER):
            raise DataPrepError(f"{root} was left by a `cxr prepare` that did not finish (it failed or was "
                                f"stopped: {INCOMPLETE_MARKER}); run it again with --overwrite")
        if not folder.exists(MANIFEST_NAME):
            raise DataPrepError(
                f"{root} has no {MANIFEST_NAME}: not a prepared dataset, or its `cxr prepare` did "
                f"not finish; {how}"
            )
        try:
            manifest = json.loads(folder.read_text(MANIFEST_NAME))
        except json.JSONDecodeError as exc:
            raise DataPrepError(f"{manifest_path} is not valid JSON ({exc}); {how}") from exc
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != FORMAT_VERSION:
            raise DataPrepError(
                f"{manifest_path}: format_version {version!r}, this version of cxr-orchestra reads "
                f"format_version {FORMAT_VERSION}; {how}"
            )
        try:
            manifest = Manifest.model_validate(manifest)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(str(k) for k in first["loc"])
            raise DataPrepError(
                f"{manifest_path}: {key}: {first['msg']} ({exc.error_count()} problem(s)); {how}"
            ) from None
        dataset = cls(folder, manifest)
        for domain in dataset.domains:
            for split, files in manifest.shards[domain].items():
                for name in files:
                    problem = _shard_problem(folder, name)
                    if problem:
                        raise DataPrepError(
                            f"{root}: shard {name} of {domain}/{split} listed in {MANIFEST_NAME} "
                            f"{problem}; {how}"
                        )
        return dataset

    def _read_error(self, path: str, exc: Exception) -> DataPrepError:
        reason = " ".join(str(exc).split())[:200]
        return DataPrepError(f"shard {path} cannot be read ({type(exc).__name__}: {reason}); the prepared "
                             f"dataset is damaged: run `cxr prepare ... --out {self.root} --overwrite` to re-create it")

    @property
    def label_space(self) -> list[str]:
        return self.manifest.label_space

    @property
    def common(self) -> list[str]:
        return self.manifest.common

    @property
    def internal(self) -> str:
        return self.manifest.internal

    @property
    def internal_only(self) -> list[str]:
        return self.manifest.internal_only

    def finding_groups(self, domain: str) -> FindingGroups:
        """`domain`'s findings grouped against every other prepared domain."""
        others = [self.domain_findings(d) for d in self.domains if d != domain]
        return FindingGroups.of(self.domain_findings(domain), others, self.label_space)

    @property
    def domains(self) -> list[str]:
        """Domain names, internal first (domain index 0 is the internal one)."""
        names = list(self.manifest.domains)
        return [self.internal] + [n for n in names if n != self.internal]

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    def domain_findings(self, domain: str) -> list[str]:
        return self.manifest.domains[domain].findings

    def num_samples(self, domain: str, split: str) -> int:
        return self.manifest.domains[domain].splits[split]

    def shard_files(self, domain: str, split: str) -> list[str]:
        """The split's shard files as paths of `folder.fs` (on a local disk: absolute paths)."""
        return [self.folder.file(name) for name in self.manifest.shards[domain].get(split, [])]

    def class_balance(self, domains: list[str]) -> dict[str, dict[str, int]]:
        """P_c and N_c per finding, summed over the training splits of `domains`."""
        per_domain = self.manifest.train_class_balance
        return {
            f: {"positive": sum(per_domain[d][f].positive for d in domains),
                "negative": sum(per_domain[d][f].negative for d in domains)}
            for f in self.label_space
        }

    def read_columns(self, domain: str, split: str, columns: list[str],
                     sample_ids: Iterable[int] | None = None) -> pa.Table:
        """Some columns of one domain's split (e.g. sample_id, image_id and the labels); with
        `sample_ids`, only those rows (filtered while reading: a few images of a large split cost
        the memory of a few images)."""
        filters = None if sample_ids is None else [("sample_id", "in", [int(i) for i in sample_ids])]
        tables = [self.read_shard(path, columns, filters) for path in self.shard_files(domain, split)]
        if not tables:
            return pa.table({c: pa.array([], pa.int64()) for c in columns})
        return pa.concat_tables(tables)

    def read_shard(self, path: str, columns: list[str], filters: list | None = None) -> pa.Table:
        """Some columns of one shard file (of `shard_files`); a damaged file is named."""
        try:
            return pq.read_table(path, columns=columns, filters=filters, filesystem=self.folder.fs)
        except (pa.ArrowException, OSError) as exc:
            raise self._read_error(path, exc) from None

    def iter_uint8_batches(
        self, domain: str, split: str, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(sample_id, images uint8 (n, s, s), labels int8 (n, C)) straight from the shards."""
        columns = ["sample_id", IMAGE_COLUMN, *self.label_space]
        for path in self.shard_files(domain, split):
            for batch in self._batches(path, batch_size, columns):
                labels = np.stack(
                    [batch.column(f).to_numpy() for f in self.label_space], axis=1
                ).astype(np.int8)
                yield (
                    batch.column("sample_id").to_numpy(),
                    images_from_arrow(batch.column(IMAGE_COLUMN), self.image_size),
                    labels,
                )

    def _batches(self, path: str, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
        try:
            yield from pq.ParquetFile(path, filesystem=self.folder.fs).iter_batches(batch_size=batch_size,
                                                                                    columns=columns)
        except (pa.ArrowException, OSError) as exc:
            raise self._read_error(path, exc) from None


_PARQUET_MAGIC = b"PAR1"


def _shard_problem(folder: Folder, name: str) -> str | None:
    """Why a listed shard is unusable at a glance (missing, or cut short: a Parquet file ends with
    its footer and magic bytes), else None. Damage inside a file is found when it is read."""
    try:
        size, tail = folder.size_and_tail(4, name)
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or first_line(exc, 200)})"
    if size < 12:
        return f"is truncated ({size} bytes)"
    if tail != _PARQUET_MAGIC:
        return "is truncated or damaged (no Parquet footer at its end)"
    return None
