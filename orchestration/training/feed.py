"""Training batches for one worker: a batch from every training domain at each step, built ahead
of the step on a background thread.

An epoch is one pass over the internal domain's training split, by construction: every rank reads
the whole split straight from its shard files (`InternalPasses`: files in an order seeded by
(seed, pass), rows mixed in a seeded buffer of `shuffle_buffer` rows) and keeps its `InternalShare`
of it, a permutation of the split's sample ids seeded by (seed, epoch) dealt to the ranks in turn.
The ranks together train on every internal image exactly once per epoch, in a new order each
epoch, over the same number of steps (`pass_steps`); a rank's rows are spread evenly over those
steps, so a step's internal part is `per_domain` rows or one fewer. Reading the split on every rank
costs W reads of it per epoch; decoding only touches the rank's own rows. The internal split is
read with pyarrow, not Ray Data: a Ray Data stream takes seconds to start, and it would start at
every pass (docs/performance.md).

With `train.steps_per_epoch` set (short runs), an epoch is that many steps of full batches and the
internal passes follow one another across epoch ends. External domains are Ray Train's shards of
Ray Data streams that last the whole run (`training_datasets`) and restart should one run out.
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
        held: list[pa.Table] = []
        held_rows = 0
        for i in rng.permutation(len(self.files)):
            table = self.prepared.read_shard(self.files[i], self.columns)
            held.append(table.filter(pa.array(keep[table.column("sample_id").to_numpy()])))
            held_rows += held[-1].num_rows
            if held_rows >= self.shuffle_buffer:
                yield _shuffled(pa.concat_tables(held), rng)
                held, held_rows = [], 0
        if held:
            yield _shuffled(pa.concat_tables(held), rng)


def _shuffled(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    return table.take(pa.array(rng.permutation(table.num_rows)))


class DomainBatches:
    """`next()` -> (images uint8, labels int8, domain index, sample_id): the internal domain's
    rows of the step (from `internal`), then `per_domain` rows of every external stream, in the
    order of `domains`. Counts steps itself, so a prefetching thread crosses epoch ends on its own;
    `first_epoch` is where a resumed run starts. `steps_per_epoch` None: one exact pass per epoch
    (see the module docstring)."""

    def __init__(self, domains: list[str], label_space: list[str], internal: InternalPasses, externals: list, *,
                 per_domain: int, image_size: int, shuffle_buffer: int, seed: int | None = None,
                 steps_per_epoch: int | None = None, first_epoch: int = 0):
        self.domains, self.label_space, self.externals = domains, label_space, externals
        self.internal_passes, self.share = internal, internal.share
        self.per_domain, self.image_size = per_domain, image_size
        self.shuffle_buffer = max(shuffle_buffer, per_domain)
        self.seed = seed
        self.exact = steps_per_epoch is None
        self.steps_per_epoch = pass_steps(len(self.share.sample_ids), self.share.world, per_domain) if self.exact \
            else steps_per_epoch
        self.sizes = self.share.step_sizes(self.steps_per_epoch) if self.exact \
            else np.full(self.steps_per_epoch, per_domain)
        self.epoch, self.step = first_epoch, 0
        self.iterators = [None] * len(externals)
        self.passes = [0] * len(externals)
        self.internal: Iterator[pa.Table] | None = None
        self.pending: list[pa.Table] = []
        self.empty: pa.Table | None = None  # a rank whose share ran out early still sends its other domains
        self.taken = 0  # internal rows served in the current pass

    def _shuffle_seed(self, e: int, pass_index: int) -> int | None:
        # Seeded per (stream, pass): a stream read in the same order gives the same batches.
        return None if self.seed is None else hash((self.seed, e, pass_index)) % 2**31

    def _share_passes(self, first: int) -> Iterator[pa.Table]:
        pass_index = first
        while True:
            yield from self.internal_passes.rows(pass_index)
            pass_index += 1

    def _internal_rows(self, n: int) -> pa.Table:
        have = sum(t.num_rows for t in self.pending)
        while have < n or self.empty is None:
            try:
                table = next(self.internal)
            except StopIteration:
                raise RuntimeError(
                    f"the pass over domain {self.domains[0]!r} ended after {self.taken + have} of this rank's "
                    f"{self.share.size} rows: its training split changed while training?") from None
            self.pending.append(table)
            self.empty = table.slice(0, 0)
            have += table.num_rows
        if not self.pending:
            return self.empty
        rows = pa.concat_tables(self.pending) if len(self.pending) != 1 else self.pending[0]
        self.pending = [rows.slice(n)] if rows.num_rows > n else []
        self.taken += n
        return rows.slice(0, n)

    def _check_pass_done(self) -> None:
        leftover = sum(t.num_rows for t in self.pending) + sum(t.num_rows for t in self.internal)
        if leftover or self.taken != self.share.size:
            raise RuntimeError(f"the pass over domain {self.domains[0]!r} gave this rank {self.taken + leftover} "
                               f"rows, not its share of {self.share.size}")

    def _external_table(self, e: int) -> pa.Table:
        for _ in range(2):
            if self.iterators[e] is None:
                self.iterators[e] = iter(self.externals[e].iter_batches(
                    batch_size=self.per_domain, batch_format="pyarrow", drop_last=True,
                    local_shuffle_buffer_size=self.shuffle_buffer,
                    local_shuffle_seed=self._shuffle_seed(e, self.passes[e]), prefetch_batches=4,
                ))
                self.passes[e] += 1
            try:
                return next(self.iterators[e])
            except StopIteration:
                self.iterators[e] = None
        raise RuntimeError(f"domain {self.domains[e + 1]!r} yields no full batch of {self.per_domain}")

    def _internal_table(self) -> pa.Table:
        if self.internal is None:  # the run's first step, or the first of an exact epoch
            self.internal = self.internal_passes.rows(self.epoch) if self.exact else self._share_passes(self.epoch)
            self.taken = 0
        table = self._internal_rows(int(self.sizes[self.step]))
        self.step += 1
        if self.step == self.steps_per_epoch:
            if self.exact:
                self._check_pass_done()
                self.internal = None
            self.epoch, self.step = self.epoch + 1, 0
        return table

    def next(self) -> Batch:
        images, labels, domains, ids = [], [], [], []
        for d in range(len(self.domains)):
            table = self._internal_table() if d == 0 else self._external_table(d - 1)
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
