"""Training batches for one worker: an equal share from every training domain at each step,
built ahead of the step on a background thread.

Each domain is a Ray Data stream (this worker's shard of its training split, rows already in a
seeded random order); rows are drawn at random from a buffer of `shuffle_buffer` rows on top of
that (seeded: with its stream's blocks in order, the same seed gives the same batches), and a
stream that runs out starts a new pass, so small domains cycle. `Prefetched` keeps a
bounded number of finished batches ready (pinned for GPU copies), so decoding Arrow into tensors
overlaps the step instead of preceding it. Images stay uint8 until the device.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np
import torch

from data_prep.prepared import IMAGE_COLUMN, images_from_arrow

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DomainBatches:
    """`next()` -> (images uint8, labels int8, domain index, sample_id): `per_domain` rows of each
    stream, in the order of `domains` (the internal one first)."""

    def __init__(self, domains: list[str], label_space: list[str], shards: list, *, per_domain: int,
                 image_size: int, shuffle_buffer: int, seed: int | None = None):
        self.domains, self.label_space, self.shards = domains, label_space, shards
        self.per_domain, self.image_size = per_domain, image_size
        self.shuffle_buffer = max(shuffle_buffer, per_domain)
        self.seed = seed
        self.iterators = [None] * len(self.shards)
        self.passes = [0] * len(self.shards)

    def _pass(self, d: int):
        # Seeded per (domain, pass): a stream read in the same order gives the same batches.
        shuffle_seed = None if self.seed is None else hash((self.seed, d, self.passes[d])) % 2**31
        self.passes[d] += 1
        return iter(self.shards[d].iter_batches(
            batch_size=self.per_domain, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=self.shuffle_buffer, local_shuffle_seed=shuffle_seed, prefetch_batches=4,
        ))

    def _next_table(self, d: int):
        for _ in range(2):
            if self.iterators[d] is None:
                self.iterators[d] = self._pass(d)
            try:
                return next(self.iterators[d])
            except StopIteration:
                self.iterators[d] = None
        raise RuntimeError(f"domain {self.domains[d]!r} yields no full batch of {self.per_domain}")

    def next(self) -> Batch:
        images, labels, domains, ids = [], [], [], []
        for d in range(len(self.shards)):
            table = self._next_table(d)
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
