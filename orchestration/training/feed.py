"""Training batches for one worker: a batch from every training domain at each step, built ahead
of the step on a background thread.

An epoch is one pass over the internal domain's training split, by construction: every rank reads
the whole split straight from its shard files (`InternalPasses`: files in an order seeded by
(seed, pass), rows mixed in a seeded buffer of `shuffle_buffer` rows) and keeps its `InternalShare`
of it, a permutation of the split's sample ids seeded by (seed, epoch) dealt to the ranks in turn.
The ranks together train on every internal image exactly once per epoch, in a new order each
epoch, over the same number of steps (`pass_steps`); a rank's rows are spread evenly over those
steps, so a step's internal part is `per_domain` rows or one fewer. Reading the split on every rank
costs W reads of it per epoch; decoding only touches the rank's own rows.

With `train.steps_per_epoch` set (short runs), an epoch is that many steps of full batches and the
internal passes follow one another across epoch ends. External domains have no epochs: each rank
reads its own part of pass after pass over their shard files (`ExternalPasses`: the files dealt
out in a seeded order, so the ranks read disjoint parts), `per_domain` rows a step, and a resumed
run continues where the stopped one was. Every domain is read with pyarrow by the worker itself,
not through Ray Data: a Ray Data stream takes seconds and several processes to start on every
worker (docs/performance.md), and a worker's reads are then the same for the same seed.
`Prefetched` keeps a bounded number of finished batches ready (pinned for GPU copies), so decoding
Arrow into tensors overlaps the step instead of preceding it. Images stay uint8 until the device.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from data_prep.prepared import IMAGE_COLUMN, PreparedDataset, images_from_arrow
from orchestration.settings.plan import pass_steps

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def training_columns(label_space: list[str]) -> list[str]:
    """The columns a training batch is made of, in every domain."""
    return ["sample_id", IMAGE_COLUMN, *label_space]


class InternalShare:
    """Which internal training rows one rank trains on in each pass: the split's sample ids in a
    permutation seeded by (seed, pass) (the same on every rank), dealt out to the ranks in turn."""

    def __init__(self, sample_ids: np.ndarray, *, rank: int, world: int, seed: int):
        self.sample_ids = np.sort(np.asarray(sample_ids, dtype=np.int64))
        self.rank, self.world, self.seed = rank, world, seed
        self.size = len(range(rank, len(self.sample_ids), world))

    def rows_of(self, pass_index: int) -> np.ndarray:
        """(max sample_id + 1,) bool: True for this rank's rows in that pass."""
        order = np.random.default_rng((self.seed, pass_index)).permutation(self.sample_ids)
        keep = np.zeros(int(self.sample_ids.max(initial=-1)) + 1, dtype=bool)
        keep[order[self.rank::self.world]] = True
        return keep

    def step_sizes(self, steps: int) -> np.ndarray:
        """This rank's rows spread over `steps` steps: sizes differ by at most one."""
        return np.diff(np.arange(steps + 1) * self.size // steps)


class InternalPasses:
    """`rows(pass)`: this rank's share of one pass over the internal training split: the shard files
    read in a (seed, pass) order, the share's rows of each kept, and every run of at least
    `shuffle_buffer` of them (the pass's last may be shorter) yielded as one table in a seeded order."""

    def __init__(self, prepared: PreparedDataset, domain: str, columns: list[str], share: InternalShare, *,
                 shuffle_buffer: int, seed: int):
        self.prepared, self.columns, self.share = prepared, columns, share
        self.files = prepared.shard_files(domain, "train")
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def rows(self, pass_index: int) -> Iterator[pa.Table]:
        keep = self.share.rows_of(pass_index)
        rng = np.random.default_rng((self.seed, pass_index))
        kept = (_filtered(self.prepared.read_shard(self.files[i], self.columns), keep)
                for i in rng.permutation(len(self.files)))
        return _shuffled_runs(kept, rng, self.shuffle_buffer)


class ExternalPasses:
    """`rows(pass)`: this rank's part of one pass over an external domain's training split. The
    split's shard files (each cut into `world` row slices when there are fewer files than ranks)
    are dealt to the ranks in an order seeded by (`seed`, pass), the same on every rank: the ranks
    read disjoint parts that together make the split, each reading only its own. Rows are mixed as
    in `InternalPasses`, by `shuffle_seed`. External domains have no epochs: `endless` runs pass
    after pass."""

    def __init__(self, prepared: PreparedDataset, domain: str, columns: list[str], *, rank: int, world: int,
                 seed: int, shuffle_seed: int, shuffle_buffer: int):
        self.prepared, self.domain, self.columns = prepared, domain, columns
        self.rank, self.world, self.seed = rank, world, seed
        self.shuffle_seed, self.shuffle_buffer = shuffle_seed, shuffle_buffer
        files = prepared.shard_files(domain, "train")
        self.slices = world if len(files) < world else 1
        self.parts = [(path, s) for path in files for s in range(self.slices)]

    def _mine(self, pass_index: int) -> list[tuple[str, int]]:
        order = np.random.default_rng((self.seed, pass_index)).permutation(len(self.parts))
        return [self.parts[i] for i in order[self.rank::self.world]]

    def _read(self, path: str, part: int, columns: list[str]) -> pa.Table:
        table = self.prepared.read_shard(path, columns)
        return table if self.slices == 1 else table.take(pa.array(np.arange(part, table.num_rows, self.slices)))

    def rows(self, pass_index: int) -> Iterator[pa.Table]:
        rng = np.random.default_rng((self.shuffle_seed, pass_index))
        return _shuffled_runs((self._read(path, part, self.columns) for path, part in self._mine(pass_index)),
                              rng, self.shuffle_buffer)

    def pass_rows(self, pass_index: int) -> int:
        """How many rows `rows(pass_index)` yields, from the files' sample ids alone."""
        return self._count(self._mine(pass_index))

    def _count(self, parts: list[tuple[str, int]]) -> int:
        return sum(len(self._read(path, part, ["sample_id"])) for path, part in parts)

    def endless(self, skip: int = 0) -> Iterator[pa.Table]:
        """Passes 0, 1, ... one after another, from row `skip` of their concatenation (where a run
        resumed after `skip` rows of this domain continues)."""
        pass_index = 0
        while skip and skip >= (size := self.pass_rows(pass_index)) > 0:
            skip, pass_index = skip - size, pass_index + 1
        while True:
            served = 0
            for table in self.rows(pass_index):
                served += table.num_rows
                cut = min(skip, table.num_rows)
                skip -= cut
                if cut < table.num_rows:
                    yield table.slice(cut)
            # A rank's part of a tiny split can be empty in a pass (a row slice of a short file),
            # not in every pass, unless the split has no rows at all.
            if not served and not self._count(self.parts):
                raise RuntimeError(f"domain {self.domain!r} has no training rows to read")
            pass_index += 1


def _filtered(table: pa.Table, keep: np.ndarray) -> pa.Table:
    return table.filter(pa.array(keep[table.column("sample_id").to_numpy()]))


def _shuffled_runs(tables: Iterator[pa.Table], rng: np.random.Generator, shuffle_buffer: int) -> Iterator[pa.Table]:
    """The rows of `tables` in runs of at least `shuffle_buffer` (the last may be shorter), each
    run one table in a seeded order."""
    held: list[pa.Table] = []
    held_rows = 0
    for table in tables:
        held.append(table)
        held_rows += table.num_rows
        if held_rows >= shuffle_buffer:
            yield _shuffled(pa.concat_tables(held), rng)
            held, held_rows = [], 0
    if held:
        yield _shuffled(pa.concat_tables(held), rng)


def _shuffled(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    return table.take(pa.array(rng.permutation(table.num_rows)))


class _Rows:
    """Rows taken `n` at a time from an iterator of tables."""

    def __init__(self, tables: Iterator[pa.Table]):
        self.tables = tables
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.empty: pa.Table | None = None  # a rank whose share ran out early still sends its other domains

    def take(self, n: int) -> pa.Table | None:
        """`n` rows, or None if the tables ran out first."""
        while self.pending_rows < n or self.empty is None:
            table = next(self.tables, None)
            if table is None:
                return None
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self.empty = table.slice(0, 0)
        if not self.pending:
            return self.empty
        rows = pa.concat_tables(self.pending) if len(self.pending) != 1 else self.pending[0]
        self.pending = [rows.slice(n)] if rows.num_rows > n else []
        self.pending_rows -= n
        return rows.slice(0, n)

    def left(self) -> int:
        """The rows not taken (reads the rest)."""
        return self.pending_rows + sum(t.num_rows for t in self.tables)


class DomainBatches:
    """`next()` -> (images uint8, labels int8, domain index, sample_id): the internal domain's
    rows of the step (from `internal`), then `per_domain` rows of every external domain (from
    `externals`), in the order of `domains`. Counts steps itself, so a prefetching thread crosses
    epoch ends on its own; `first_epoch` and `steps_done` are where a resumed run starts.
    `steps_per_epoch` None: one exact pass per epoch (see the module docstring)."""

    def __init__(self, domains: list[str], label_space: list[str], internal: InternalPasses,
                 externals: list[ExternalPasses], *, per_domain: int, image_size: int,
                 steps_per_epoch: int | None = None, first_epoch: int = 0, steps_done: int = 0):
        self.domains, self.label_space = domains, label_space
        self.internal_passes, self.share = internal, internal.share
        self.per_domain, self.image_size = per_domain, image_size
        self.exact = steps_per_epoch is None
        self.steps_per_epoch = pass_steps(len(self.share.sample_ids), self.share.world, per_domain) if self.exact \
            else steps_per_epoch
        self.sizes = self.share.step_sizes(self.steps_per_epoch) if self.exact \
            else np.full(self.steps_per_epoch, per_domain)
        self.epoch, self.step = first_epoch, 0
        self.internal: _Rows | None = None
        self.taken = 0  # internal rows served in the current pass
        self.externals = [_Rows(e.endless(skip=steps_done * per_domain)) for e in externals]

    def _share_passes(self, first: int) -> Iterator[pa.Table]:
        pass_index = first
        while True:
            yield from self.internal_passes.rows(pass_index)
            pass_index += 1

    def _internal_table(self) -> pa.Table:
        if self.internal is None:  # the run's first step, or the first of an exact epoch
            self.internal = _Rows(self.internal_passes.rows(self.epoch) if self.exact
                                  else self._share_passes(self.epoch))
            self.taken = 0
        n = int(self.sizes[self.step])
        table = self.internal.take(n)
        if table is None:
            raise RuntimeError(
                f"the pass over domain {self.domains[0]!r} ended after {self.taken + self.internal.pending_rows} of "
                f"this rank's {self.share.size} rows: its training split changed while training?")
        self.taken += n
        self.step += 1
        if self.step == self.steps_per_epoch:
            if self.exact:
                self._check_pass_done()
                self.internal = None
            self.epoch, self.step = self.epoch + 1, 0
        return table

    def _check_pass_done(self) -> None:
        leftover = self.internal.left()
        if leftover or self.taken != self.share.size:
            raise RuntimeError(f"the pass over domain {self.domains[0]!r} gave this rank {self.taken + leftover} "
                               f"rows, not its share of {self.share.size}")

    def next(self) -> Batch:
        images, labels, domains, ids = [], [], [], []
        for d in range(len(self.domains)):
            table = self._internal_table() if d == 0 else self.externals[d - 1].take(self.per_domain)
            images.append(images_from_arrow(table.column(IMAGE_COLUMN), self.image_size))
            labels.append(np.stack([table.column(f).to_numpy() for f in self.label_space], axis=1))
            domains.append(np.full(table.num_rows, d, np.int64))
            ids.append(table.column("sample_id").to_numpy())
        return (
            torch.from_numpy(np.concatenate(images)),
            torch.from_numpy(np.concatenate(labels).astype(np.int8)),
            torch.from_numpy(np.concatenate(domains)),
            torch.from_numpy(np.concatenate(ids)),
        )


class Prefetched:
    """`make()` called on a daemon thread, up to `depth` results kept ready; `next()` returns them
    in order and re-raises the thread's error. `depth=0` calls `make` on the caller's thread."""

    def __init__(self, make: Callable[[], Batch], *, depth: int = 2, pin_memory: bool = False):
        self.make, self.depth, self.pin_memory = make, depth, pin_memory
        self._ready: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = None
        if depth > 0:
            self._thread = threading.Thread(target=self._fill, name="cxr-feed", daemon=True)
            self._thread.start()

    def _build(self) -> Batch:
        batch = self.make()
        return tuple(t.pin_memory() for t in batch) if self.pin_memory else batch

    def _fill(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._build()
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread
                item = exc
            while not self._stop.is_set():
                try:
                    self._ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def next(self) -> Batch:
        if self._thread is None:
            return self._build()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise RuntimeError("building a training batch failed") from item
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
