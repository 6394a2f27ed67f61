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
