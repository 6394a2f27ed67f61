"""Partitions of a batch and what a Dask worker reads: plain functions, no cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pynomaly.errors import InputError
from tasks.scaleout import check_dask, in_order, partitions, read_rows


def test_partitions_cover_every_row_once() -> None:
    assert partitions(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert partitions(8, 4) == [(0, 4), (4, 8)]
    assert partitions(0, 4) == []
    with pytest.raises(InputError, match="partition_rows must be at least 1, got 0"):
        partitions(10, 0)


@pytest.mark.parametrize("value", ["local", "tcp://127.0.0.1:8786", "sched.example:8786"])
def test_dask_values_accepted(value: str) -> None:
    assert check_dask(value) == value


@pytest.mark.parametrize("value", ["", "locals", "tcp://host", "http//x:1", "a b:1"])
def test_dask_values_refused_in_one_line(value: str) -> None:
    with pytest.raises(InputError, match=r"^--dask .*: not a scheduler address"):
        check_dask(value)


def test_read_rows_reads_a_range_across_row_groups_with_global_index(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100.0) * 2})
    path = tmp_path / "s.parquet"
    with pq.ParquetWriter(path, pa.Schema.from_pandas(frame, preserve_index=False)) as writer:
        for start in range(0, 100, 30):  # row groups of 30, 30, 30, 10
            writer.write_table(
                pa.Table.from_pandas(frame[start : start + 30], preserve_index=False)
            )
    chunks = list(read_rows(str(path), None, 25, 75, chunk_rows=20))
    got = pd.concat(chunks)
    assert all(len(c) <= 20 for c in chunks)
    assert list(got.index) == list(range(25, 75))
    pd.testing.assert_frame_equal(got, frame.iloc[25:75], check_index_type=False)
    assert list(read_rows(str(path), None, 100, 120, 20)) == []


class Done:
    def __init__(self, value: int, log: list[str]) -> None:
        self.value, self.log = value, log

    def result(self) -> int:
        self.log.append(f"result {self.value}")
        return self.value


def test_in_order_keeps_order_and_at_most_window_in_flight() -> None:
    log: list[str] = []

    def submit(i: int) -> Done:
        log.append(f"submit {i}")
        return Done(i, log)

    assert list(in_order(submit, range(5), window=2)) == [0, 1, 2, 3, 4]
    assert log[:4] == ["submit 0", "submit 1", "result 0", "submit 2"]
    in_flight = 0
    for entry in log:
        in_flight += 1 if entry.startswith("submit") else -1
        assert in_flight <= 2


def test_automl_on_dask_refuses_a_storage_workers_cannot_share() -> None:
    from tasks.automl import fit_best_detector, is_journal

    x = np.random.default_rng(0).normal(size=(40, 3))
    y = np.r_[np.zeros(30, dtype=int), np.ones(10, dtype=int)]
    for storage in (None, "sqlite:///optuna.db"):
        with pytest.raises(InputError, match=r"^--dask needs a shared PostgreSQL or MySQL"):
            fit_best_detector(x, y, storage=storage, dask="local")
    assert is_journal("/tmp/trials.journal") and not is_journal("postgresql://u@h/db")
