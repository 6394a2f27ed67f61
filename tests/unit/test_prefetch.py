"""tasks.score.prefetch: items computed ahead in a thread, in order, errors raised to the
consumer, and the thread stopped (and the source closed) when the consumer stops early."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tasks.score import prefetch


def test_prefetch_yields_every_item_in_order_from_another_thread() -> None:
    threads: set[str] = set()

    def items() -> Iterator[int]:
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(prefetch(items(), depth=2)) == list(range(50))
    assert threads == {"pynomaly-prefetch"}


def test_prefetch_keeps_at_most_depth_items_ahead() -> None:
    made: list[int] = []
    ready = threading.Event()

    def items() -> Iterator[int]:
        for i in range(10):
            made.append(i)
            if len(made) == 4:
                ready.set()
            yield i

    it = prefetch(items(), depth=2)
    assert next(it) == 0
    ready.wait(timeout=5)
    # 0 consumed, 1 and 2 queued, 3 made and waiting to be queued: never more.
    threading.Event().wait(0.3)
    assert len(made) == 4
    it.close()


def test_prefetch_raises_the_producers_error_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("row 3 is bad")

    got: list[int] = []
    with pytest.raises(ValueError, match="row 3 is bad"):
        for item in prefetch(items()):
            got.append(item)
    assert got == [1, 2]


def test_prefetch_stops_the_thread_and_closes_the_source_when_the_consumer_stops() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="writer failed"):
        for item in prefetch(items()):
            if item == 3:
                raise RuntimeError("writer failed")
    assert closed.is_set()
    assert not [t for t in threading.enumerate() if t.name == "pynomaly-prefetch"]
