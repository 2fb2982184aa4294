"""One reader per raw dataset format, found here by name: every module of this package but `common`
declares `READER` (a `common.Reader`), and the kinds prepare.sources accepts, their own settings and
cxr prepare's dataset options all come from that. A new dataset is one module here, its label-map
preset in data_prep/label_maps/ when it has labels of its own, and its test."""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING

from cxrcommon.errors import DataPrepError
from data_prep.readers.common import Reader, SourceTable

if TYPE_CHECKING:
    from data_prep.config import SourceConfig


def _registered() -> dict[str, Reader]:
    found = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "common"):
        reader = importlib.import_module(f"{__name__}.{module}").READER
        if reader.kind in found:
            raise RuntimeError(f"data_prep/readers/{module}.py: kind {reader.kind!r} is registered twice")
        found[reader.kind] = reader
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


READERS: dict[str, Reader] = _registered()
# Settings only one kind reads: given for another kind they are a mistake, not a no-op.
KIND_SETTINGS: dict[str, str] = {setting: r.kind for r in READERS.values() for setting in r.settings}


def read_source(source: SourceConfig, *, find_images: bool = True, allow_outside_root: bool = False) -> SourceTable:
    """Read one dataset's label table (and, with `find_images`, locate its image files, which must
    lie inside the dataset's folder unless `allow_outside_root`)."""
    if not source.path.exists():
        raise DataPrepError(f"dataset {source.name!r}: {source.path} does not exist")
    table = READERS[source.kind].read(source, find_images)
    if table.rows.empty:
        raise DataPrepError(f"dataset {source.name!r} ({source.path}) has no images after filtering")
    duplicated = table.rows["image_id"][table.rows["image_id"].duplicated()]
    if not duplicated.empty:
        raise DataPrepError(
            f"dataset {source.name!r}: duplicate image ids, e.g. {duplicated.iloc[0]!r} "
            f"({len(duplicated)} duplicates)"
        )
    if find_images and not allow_outside_root:
        _refuse_paths_outside(table, dataset_root(source))
    return table


def dataset_root(source: SourceConfig) -> Path:
    """The folder a dataset's image paths must stay in."""
    return READERS[source.kind].root(source.path)


def _refuse_paths_outside(table: SourceTable, root: Path) -> None:
    """Paths from a label table (`../../x`, an absolute path, a symlink) that resolve outside `root`
    would read files the dataset does not hold: refused, naming one."""
    prefix = os.path.join(os.path.realpath(root), "")
    real_dirs: dict[str, str] = {}  # each folder resolved once: a dataset has few folders, many files

    def resolved(path: str) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dirs[folder], name)
        return os.path.realpath(real) if os.path.islink(real) else real

    paths = table.rows["path"].dropna()
    outside = [(i, p, real) for i, p in paths.items() if not (real := resolved(p)).startswith(prefix)]
    if outside:
        index, path, real = outside[0]
        image_id = table.rows["image_id"][index]
        raise DataPrepError(
            f"dataset {table.name!r}: {len(outside)} image path(s) lead outside its folder {root}, e.g. image "
            f"{image_id!r}: {path}" + (f" (-> {real})" if real != os.path.abspath(path) else "")
            + "; refused (a label table may only name files inside its dataset). Move the images in, or set "
            "prepare.allow_outside_root=true if the table is yours"
        )
