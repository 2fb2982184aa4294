"""Training batches for one worker: an equal share from every training domain at each step.

Each domain is a Ray Data stream (this worker's shard of its training split, rows already in a
seeded random order); rows are drawn at random from a buffer of `shuffle_buffer` rows on top of
that, and a stream that runs out starts a new pass, so small domains cycle.
"""

from __future__ import annotations

import numpy as np
import torch

from data_prep.prepared import IMAGE_COLUMN, images_from_arrow


class DomainBatches:
    """`next()` -> (images uint8, labels int8, domain index, sample_id): `per_domain` rows of each
    stream, in the order of `domains` (the internal one first)."""

    def __init__(self, domains: list[str], label_space: list[str], shards: list, *, per_domain: int,
                 image_size: int, shuffle_buffer: int):
        self.domains, self.label_space, self.shards = domains, label_space, shards
        self.per_domain, self.image_size = per_domain, image_size
        self.shuffle_buffer = max(shuffle_buffer, per_domain)
        self.iterators = [None] * len(self.shards)

    def _pass(self, d: int):
        return iter(self.shards[d].iter_batches(
            batch_size=self.per_domain, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=self.shuffle_buffer,
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

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
