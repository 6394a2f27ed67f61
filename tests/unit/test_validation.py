"""Expectation suites: generated from the first snapshot, editable, failing batches quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_checks.suite import suite_key
from pynomaly.errors import ValidationFailed
from tasks.ingest import load_snapshot, snapshot_source
from tasks.store import ArtifactStore
from tasks.validate import validate_snapshot


def normal_frame(seed: int, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {"x": rng.normal(size=n), "kind": rng.choice(["a", "b"], n), "label": np.zeros(n)}
    )


def ingest(frame: pd.DataFrame, path: Path, store: ArtifactStore):
    frame.to_csv(path, index=False)
    manifest = snapshot_source(str(path), "d", store)
    return manifest, load_snapshot(store, manifest)


def test_first_snapshot_creates_an_editable_suite_later_ones_are_checked(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    manifest, frame = ingest(normal_frame(0), tmp_path / "a.csv", store)
    report = validate_snapshot(store, manifest, frame, optional_columns=["label"])
    assert report.success and report.suite_created
    suite = json.loads(store.get_bytes(suite_key("d")))
    kinds = {e["type"] for e in suite["expectations"]}
    assert {"expect_column_values_to_be_between", "expect_column_values_to_not_be_null"} <= kinds

    # A fresh sample of the same distribution, without its optional label column, passes.
    manifest, frame = ingest(normal_frame(1).drop(columns="label"), tmp_path / "b.csv", store)
    assert validate_snapshot(store, manifest, frame).success


def test_failing_batch_is_quarantined_with_its_report(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    manifest, frame = ingest(normal_frame(0), tmp_path / "a.csv", store)
    validate_snapshot(store, manifest, frame)
    broken = normal_frame(2).drop(columns="kind").assign(x=lambda f: f["x"] * 1000)
    manifest, frame = ingest(broken, tmp_path / "bad.csv", store)
    with pytest.raises(ValidationFailed) as caught:
        validate_snapshot(store, manifest, frame)
    message = str(caught.value)
    assert "column 'kind'" in message and "quarantine" in message
    quarantined = store.list("quarantine/d")
    assert sorted(Path(k).name for k in quarantined) == [
        "batch.parquet",
        "manifest.json",
        "report.json",
    ]
    report = json.loads(store.get_bytes(next(k for k in quarantined if k.endswith("report.json"))))
    failed = {(f["expectation"], f["column"]) for f in report["failures"]}
    assert ("expect_column_to_exist", "kind") in failed
    assert ("expect_column_values_to_be_between", "x") in failed
    # The bad batch is no longer a dataset version.
    assert not store.exists(f"datasets/d/{manifest.sha256}.parquet")


def test_an_edited_suite_is_used(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    manifest, frame = ingest(normal_frame(0), tmp_path / "a.csv", store)
    validate_snapshot(store, manifest, frame)
    suite = json.loads(store.get_bytes(suite_key("d")))
    suite["expectations"].append(
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x", "min_value": 100}}
    )
    store.put_bytes(suite_key("d"), json.dumps(suite).encode())
    manifest, frame = ingest(normal_frame(3), tmp_path / "c.csv", store)
    with pytest.raises(ValidationFailed, match="column 'x'"):
        validate_snapshot(store, manifest, frame)


def test_chunked_validation_decides_as_on_the_whole_frame(tmp_path: Path) -> None:
    """Counts of `mostly` expectations add up across chunks; whole-column ones see every row."""
    from data_checks.suite import generate_suite, run_suite

    frame = normal_frame(0, n=1_000)
    frame.loc[::3, "x"] = np.nan
    chunks = lambda f: lambda: (f.iloc[i : i + 97] for i in range(0, len(f), 97))  # noqa: E731
    suite = generate_suite(frame, "d", [])
    assert generate_suite(chunks(frame), "d", []) == suite
    suite["expectations"].append(
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x", "min_value": 1}}
    )
    broken = frame.assign(x=frame["x"].where(np.arange(len(frame)) % 10 > 0, 1e6))
    for data in (frame, broken):
        whole, chunked = run_suite(data, suite), run_suite(chunks(data), suite)
        assert (chunked.success, chunked.failures) == (whole.success, whole.failures)
        assert not whole.success  # the mean expectation fails on both
    failed = {f["expectation"]: f["observed"] for f in run_suite(chunks(broken), suite).failures}
    # 100 of the 700 non-missing x values are out of range (each chunk alone has its own share).
    assert failed["expect_column_values_to_be_between"] == "14.3% unexpected"
