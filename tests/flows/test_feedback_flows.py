"""Analyst feedback through the flows on the embedded stores (SQLite results DB).

The scenario (tests/feedback_scenario.py): feedback changes a gate decision (keep -> promote)
and feeds a retrain that runs the labelled search on the labelled batch rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from feedback_scenario import feedback_scenario


def test_feedback_changes_the_gate_decision_and_feeds_the_retrain(
    platform_home: Path, tmp_path: Path
) -> None:
    feedback_scenario(tmp_path)


def test_demo_records_feedback_for_the_flagged_rows(platform_home: Path) -> None:
    """The demo labels what it flagged with the truth it kept aside, and reports the precision."""
    import sqlite3

    from typer.testing import CliRunner

    from deployments.cli import app

    result = CliRunner().invoke(app, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    truth = pd.read_csv(platform_home / "demo" / "batch_labels.csv")["is_malignant"]
    with sqlite3.connect(platform_home / "results.db") as conn:
        flagged = [
            r for (r,) in conn.execute("SELECT row_index FROM detection_results WHERE is_anomaly")
        ]
        labels = dict(conn.execute("SELECT row_index, label FROM detection_feedback"))
    assert flagged and sorted(labels) == sorted(flagged)
    assert labels == {r: int(truth[r]) for r in flagged}
    assert out["feedback"]["rows"] == len(flagged) == out["anomalies"]
    assert out["feedback"]["flagged_precision"] == pytest.approx(
        sum(labels.values()) / len(flagged)
    )
