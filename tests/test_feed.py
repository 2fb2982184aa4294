"""Prefetched builds batches ahead on its own thread: in order, a bounded number ahead, errors
surfacing on the training thread."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from orchestration.training.feed import Prefetched


class Counter:
    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at, self.threads = 0, fail_at, set()

    def __call__(self):
        self.threads.add(threading.get_ident())
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("bad shard row")
        return (torch.full((2,), self.calls),)


def test_batches_arrive_in_order_built_off_the_training_thread_and_at_most_depth_ahead():
    make = Counter()
    feed = Prefetched(make, depth=3)
    try:
        assert [feed.next()[0][0].item() for _ in range(5)] == [1, 2, 3, 4, 5]
        time.sleep(0.3)  # let the thread run as far ahead as it may
        # 5 taken, 3 waiting in the queue, one more built and blocked on the full queue.
        assert make.calls == 5 + 3 + 1
        assert threading.get_ident() not in make.threads
    finally:
        feed.close()


def test_depth_zero_builds_on_the_callers_thread():
    make = Counter()
    feed = Prefetched(make, depth=0)
    assert feed.next()[0][0].item() == 1 and make.calls == 1
    assert make.threads == {threading.get_ident()}


def test_an_error_while_building_reaches_the_training_thread_with_its_cause():
    feed = Prefetched(Counter(fail_at=2), depth=2)
    try:
        assert feed.next()[0][0].item() == 1
        with pytest.raises(RuntimeError, match="building a training batch failed") as raised:
            feed.next()
        assert isinstance(raised.value.__cause__, ValueError)
    finally:
        feed.close()


def test_close_stops_the_thread_even_with_a_full_queue():
    feed = Prefetched(Counter(), depth=1)
    time.sleep(0.1)
    feed.close()
    assert not feed._thread.is_alive()
