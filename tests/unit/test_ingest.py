"""Ingest: every kind of bad input is one clear InputError and leaves the store untouched."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sql_sources import TABLES, WRITES, build_source, source_state

from pynomaly.errors import InputError
from tasks.ingest import check_source, load_snapshot, redact, snapshot_source
from tasks.store import ArtifactStore

BAD_FILES = {
    "empty.csv": ("", "file is empty"),
    "header.csv": ("a,b\n", "header but no data rows"),
    "semicolon.csv": ("a;b;c\n1;2;3\n", "looks ';'-delimited"),
    "duplicate.csv": ("a,b,a\n1,2,3\n", "duplicate column name 'a'"),
    "text.csv": (
        "a,b\n" + "".join(f"{i},{i}\n" for i in range(20)) + "20,abc\n",
        "'b' is numeric but row 21 holds 'abc'",
    ),
    "allnan.csv": ("a,b\n1,\n2,\n3,\n", "column 'b' has no values"),
    "infinite.csv": ("a,b\n1,2\n2,inf\n", "'b' holds an infinite value at row 2"),
    "huge.csv": ("a,b\n1,2\n2,1e200\n", "'b' holds 1e+200 at row 2, too large"),
    "huge-negative.csv": ("a,b\n-1.5e150,2\n2,1\n", "'a' holds -1.5e+150 at row 1, too large"),
}


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_one_clear_error_and_writes_nothing(
    name: str, tmp_path: Path, store: ArtifactStore
) -> None:
    content, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        snapshot_source(str(path), "d", store)
    message = str(caught.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message
    assert store.list() == []


def test_missing_file(tmp_path: Path, store: ArtifactStore) -> None:
    with pytest.raises(InputError, match="missing.csv: file not found"):
        snapshot_source(str(tmp_path / "missing.csv"), "d", store)


def test_text_in_later_chunk_names_the_row(tmp_path: Path, store: ArtifactStore) -> None:
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(10)) + "10,oops\n")
    with pytest.raises(InputError, match="'b' is numeric but row 11 holds 'oops'"):
        snapshot_source(str(path), "d", store, chunk_rows=4)


def test_same_content_is_same_version_whatever_the_file(
    tmp_path: Path, store: ArtifactStore
) -> None:
    frame = pd.DataFrame({"x": np.arange(30, dtype=float), "c": ["a", "b", "c"] * 10})
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet", index=False)
    first = snapshot_source(str(tmp_path / "a.csv"), "d", store)
    chunked = snapshot_source(str(tmp_path / "a.csv"), "d", store, chunk_rows=7)
    parquet = snapshot_source(str(tmp_path / "a.parquet"), "d", store)
    assert first.sha256 == chunked.sha256 == parquet.sha256
    assert first.rows == 30 and first.columns == {"x": "float64", "c": "string"}
    assert len(store.list("datasets/d")) == 2  # one Parquet file + its manifest
    pd.testing.assert_frame_equal(load_snapshot(store, first), frame)


def test_changed_content_is_a_new_version(tmp_path: Path, store: ArtifactStore) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    (tmp_path / "b.csv").write_text("x\n1\n3\n")
    a = snapshot_source(str(tmp_path / "a.csv"), "d", store)
    b = snapshot_source(str(tmp_path / "b.csv"), "d", store)
    assert a.sha256 != b.sha256


def test_sql_table_query_and_syntax_error(tmp_path: Path, store: ArtifactStore) -> None:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE readings (x REAL, kind TEXT)")
        conn.executemany("INSERT INTO readings VALUES (?, ?)", [(i, "ab"[i % 2]) for i in range(9)])
    url = f"sqlite:///{db}"
    by_table = snapshot_source(url, "d", store, query="readings", chunk_rows=4)
    by_query = snapshot_source(url, "d", store, query="SELECT x, kind FROM readings")
    assert by_table.rows == 9 and by_table.sha256 == by_query.sha256
    with pytest.raises(InputError, match=r"SQL error in 'SELEC x FROM readings'.*syntax error"):
        snapshot_source(url, "e", store, query="SELEC x FROM readings")
    assert store.list("datasets/e") == []


def test_unreachable_s3_endpoint(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    unreachable = ArtifactStore(store.root, endpoint_url="http://127.0.0.1:9")
    with pytest.raises(InputError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        snapshot_source("s3://bucket/data.csv", "d", unreachable)


def test_invalid_dataset_name(tmp_path: Path, store: ArtifactStore) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(InputError, match="invalid name '../x'"):
        snapshot_source(str(tmp_path / "a.csv"), "../x", store)


# SQL sources are read, never written ----------------------------------------------------------


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    build_source(url)
    return url


@pytest.mark.parametrize("query", WRITES)
def test_write_through_query_is_refused_and_the_source_intact(
    sqlite_source: str, store: ArtifactStore, query: str
) -> None:
    before = source_state(sqlite_source)
    assert before["victim"]
    with pytest.raises(InputError, match=re.escape(f"SQL error in {query!r}")):
        snapshot_source(sqlite_source, "d", store, query=query)
    assert source_state(sqlite_source) == before
    assert store.list("datasets/d") == []


def test_drop_table_is_refused_as_read_only(sqlite_source: str, store: ArtifactStore) -> None:
    with pytest.raises(InputError, match=r"readonly database \(SQL sources are read-only:"):
        snapshot_source(sqlite_source, "d", store, query="DROP TABLE victim")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_names_are_quoted(sqlite_source: str, store: ArtifactStore, name: str) -> None:
    manifest = snapshot_source(sqlite_source, "d", store, query=name)
    assert manifest.rows == TABLES[name]
    assert load_snapshot(store, manifest)["x"].tolist() == list(range(TABLES[name]))


def test_missing_sqlite_source_is_an_error_not_a_new_file(
    tmp_path: Path, store: ArtifactStore
) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(InputError, match=f"SQLite database {re.escape(str(missing))} not found"):
        snapshot_source(f"sqlite:///{missing}", "d", store, query="t")
    assert not missing.exists()


def test_env_reference_reads_the_url_at_run_time_and_records_only_the_reference(
    sqlite_source: str, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYNOMALY_UNIT_SOURCE", sqlite_source)
    manifest = snapshot_source("env:PYNOMALY_UNIT_SOURCE", "d", store, query="victim")
    assert manifest.rows == TABLES["victim"]
    assert manifest.source == "env:PYNOMALY_UNIT_SOURCE"
    with pytest.raises(InputError, match=r"^env:PYNOMALY_UNIT_SOURCE \(sqlite:///.*SQL error in"):
        snapshot_source("env:PYNOMALY_UNIT_SOURCE", "d", store, query="SELECT nope FROM victim")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "environment variable PYNOMALY_UNIT_REF is not set (it holds the SQL URL)"),
        ("", "environment variable PYNOMALY_UNIT_REF is not set (it holds the SQL URL)"),
        ("data/file.csv", "environment variable PYNOMALY_UNIT_REF does not hold a SQL URL"),
    ],
)
def test_env_reference_that_does_not_resolve_names_the_variable(
    value: str | None, message: str, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("PYNOMALY_UNIT_REF", raising=False)
    else:
        monkeypatch.setenv("PYNOMALY_UNIT_REF", value)
    with pytest.raises(InputError, match=f"^env:PYNOMALY_UNIT_REF: {re.escape(message)}$"):
        check_source("env:PYNOMALY_UNIT_REF")
    with pytest.raises(InputError, match=f"^env:PYNOMALY_UNIT_REF: {re.escape(message)}$"):
        snapshot_source("env:PYNOMALY_UNIT_REF", "d", store, query="t")
    assert store.list("datasets/d") == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cr3t@db:5432/x", "postgresql://u:***@db:5432/x"),
        ("postgresql+psycopg2://u:s3@cr3t@db/x", "postgresql+psycopg2://u:***@db/x"),
        ("postgresql://:s3cr3t@db/x", "postgresql://:***@db/x"),
    ],
)
def test_literal_url_with_a_password_is_refused_without_echoing_it(url: str, shown: str) -> None:
    assert redact(url) == shown
    with pytest.raises(InputError) as refused:
        check_source(url)
    assert str(refused.value).startswith(f"{shown}: a SQL URL with a password is not accepted")
    assert "env:VARNAME" in str(refused.value) and "cr3t" not in str(refused.value)


@pytest.mark.parametrize("url", ["postgresql://u@db/x", "sqlite:///data/src.db", "data/a.csv"])
def test_sources_without_a_password_pass_the_check(url: str) -> None:
    assert check_source(url) is None


@pytest.mark.parametrize("name", ["Sensors", "sensors_db", "", "a/b"])
def test_secret_reference_names_a_valid_block(name: str) -> None:
    """Checked without Prefect (the CLI does it before Prefect starts): Prefect block names
    hold lowercase letters, digits and '-' only."""
    with pytest.raises(InputError, match=f"^secret:{re.escape(name)}: .* Prefect block name"):
        check_source(f"secret:{name}")


def test_utf8_error_names_the_byte_across_read_blocks(tmp_path: Path, store: ArtifactStore) -> None:
    """A multi-byte character split by the 1 MiB read blocks is valid; the first bad byte after
    them is named by its offset in the whole file and its line."""
    # Rows up to 3 bytes before the first 1 MiB block boundary, then a row whose two-byte 'é'
    # straddles it, then more rows (the checker reads in several blocks), then a bad byte.
    head = "a,b\n" + "1,xx\n" + "1,x\n" * 262_141
    assert len(head) == (1 << 20) - 3
    text = head + "1,\u00e9\n" + "1,x\n" * 20_000
    data = text.encode("utf-8") + b"3,\xff\n"
    path = tmp_path / "big.csv"
    path.write_bytes(data)
    lines = text.count("\n") + 1
    with pytest.raises(
        InputError, match=rf"byte 0xff at byte offset {len(data) - 2} \(line {lines}\)"
    ):
        snapshot_source(str(path), "d", store)
    assert not (tmp_path / "store").exists()


def test_a_truncated_character_at_the_end_is_named(tmp_path: Path, store: ArtifactStore) -> None:
    data = b"a,b\n1,2\n3," + "\u00e9".encode()[:1]
    path = tmp_path / "cut.csv"
    path.write_bytes(data)
    with pytest.raises(InputError, match=rf"byte 0xc3 at byte offset {len(data) - 1} \(line 3\)"):
        snapshot_source(str(path), "d", store)


@pytest.mark.parametrize("delimiter", ["", ";;", "\n", '"'])
def test_delimiter_is_one_field_separating_character(
    delimiter: str, tmp_path: Path, store: ArtifactStore
) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=re.escape(f"--delimiter {delimiter!r}")):
        snapshot_source(str(path), "d", store, delimiter=delimiter)


def test_parquet_is_read_in_bounded_chunks_whatever_its_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.ingest import parquet_frames

    path = tmp_path / "groups.parquet"
    sizes = [7, 5, 30, 3, 3, 3, 11, 2]  # small groups are read together, large ones sliced
    with pq.ParquetWriter(path, pa.schema({"x": pa.float64()})) as writer:
        start = 0
        for n in sizes:
            writer.write_table(pa.table({"x": np.arange(start, start + n, dtype=float)}))
            start += n
    frames = list(parquet_frames(pq.ParquetFile(path), 10))
    assert pd.concat(frames)["x"].tolist() == list(range(sum(sizes)))
    assert [len(f) for f in frames] == [12, 10, 10, 10, 9, 10, 1, 2]
    assert max(len(f) for f in frames) < 2 * 10


def numbered_snapshot(tmp_path: Path, store: ArtifactStore, rows: int, step: float) -> Any:
    """A snapshot whose column `row` holds each row's number and `x` the number times `step`."""
    path = tmp_path / "rows.csv"
    pd.DataFrame({"row": np.arange(rows), "x": np.arange(rows) * step}).to_csv(path, index=False)
    return snapshot_source(str(path), "d", store)


def test_a_sample_is_uniform_without_repeats_the_same_every_time_and_read_in_chunks(
    tmp_path: Path, store: ArtifactStore
) -> None:
    from tasks.ingest import sample_snapshot

    manifest = numbered_snapshot(tmp_path, store, 10_000, step=0.5)
    sample = sample_snapshot(store, manifest, 1_000, chunk_rows=700)
    assert len(sample) == 1_000 and sample.index.is_unique and sample.index.is_monotonic_increasing
    # Each sampled row is the snapshot's row of that index, whole.
    assert (sample["row"] == sample.index).all() and (sample["x"] == sample.index * 0.5).all()
    # Spread over the whole snapshot, not its first chunks: ~100 rows in each tenth.
    per_tenth = np.bincount(sample.index // 1_000, minlength=10)
    assert per_tenth.min() >= 60 and per_tenth.max() <= 140, per_tenth
    # Seeded by the snapshot's hash: the same data gives the same rows, whatever the chunks.
    again = sample_snapshot(store, manifest, 1_000, chunk_rows=3_000)
    assert again.index.equals(sample.index)
    whole = sample_snapshot(store, manifest, 10_000, chunk_rows=700)
    assert whole.equals(load_snapshot(store, manifest))


def test_a_stratified_pick_holds_the_classes_in_the_data_s_proportions_and_the_kept_rows():
    from tasks.ingest import pick_rows

    classes = np.array([1] * 130 + [0] * 9_870)  # 1.3% positives
    np.random.default_rng(1).shuffle(classes)
    picked = pick_rows(10_000, 1_000, seed=7, classes=classes)
    assert len(picked) == len(np.unique(picked)) == 1_000
    assert (classes[picked] == 1).sum() == 13  # exactly 1.3%, not only on average
    keep = np.array([5, 17, 9_999, 20_000])  # an index beyond the data is ignored
    kept = pick_rows(10_000, 1_000, seed=7, classes=classes, keep=keep)
    assert len(kept) == 1_000 and {5, 17, 9_999} <= set(kept.tolist())
    # Missing labels are a class of their own, not dropped.
    with_nan = np.where(np.arange(10_000) < 500, np.nan, classes.astype(float))
    assert np.isnan(with_nan[pick_rows(10_000, 1_000, seed=7, classes=with_nan)]).sum() == 50
    assert np.array_equal(pick_rows(10_000, 1_000, 7, classes), picked)  # seeded


def test_take_rows_reads_the_rows_asked_for_by_row_number(
    tmp_path: Path, store: ArtifactStore
) -> None:
    from tasks.ingest import take_rows

    manifest = numbered_snapshot(tmp_path, store, 1_000, step=2.0)
    rows = take_rows(store, manifest, np.array([0, 299, 300, 999]), chunk_rows=300)
    assert rows.index.tolist() == rows["row"].tolist() == [0, 299, 300, 999]
    assert rows["x"].tolist() == [0.0, 598.0, 600.0, 1998.0]
    none = take_rows(store, manifest, np.array([], int), chunk_rows=300)
    assert none.empty and list(none.columns) == ["row", "x"]
