"""The ingest and validate flows: snapshots, suite creation, re-validation after an edit."""

from __future__ import annotations

import json

import pytest

from deployments.demo import LABEL, build_demo_files
from flows.ingest_dataset import ingest_dataset
from flows.validate_dataset import validate_dataset
from pynomaly.errors import InputError, ValidationFailed
from pynomaly.settings import get_settings
from tasks.store import ArtifactStore


def test_ingest_then_revalidate_after_editing_the_suite(platform_home) -> None:
    files = build_demo_files(platform_home / "demo")
    first = ingest_dataset(str(files["train"]), "bc", label_column=LABEL)
    assert first["validation"]["suite_created"] and first["rows"] > 300
    again = ingest_dataset(str(files["train"]), "bc", label_column=LABEL)
    assert again["sha256"] == first["sha256"] and not again["validation"]["suite_created"]
    assert validate_dataset("bc", first["sha256"])["success"]

    store = ArtifactStore(get_settings().artifact_store, get_settings().s3_endpoint_url)
    suite = json.loads(store.get_bytes("expectations/bc.json"))
    suite["expectations"].append(
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "mean radius", "max_value": 1.0},
        }
    )
    store.put_bytes("expectations/bc.json", json.dumps(suite).encode())
    with pytest.raises(ValidationFailed, match="column 'mean radius'"):
        validate_dataset("bc", first["sha256"])
    assert store.list("quarantine/bc")


def test_validate_unknown_snapshot(platform_home) -> None:
    with pytest.raises(InputError, match="dataset 'bc' has no snapshot 'abc'"):
        validate_dataset("bc", "abc")
