"""`pynomaly feedback SOURCE [--by NAME]`: recorded rows, and bad input as exit 2 with one line."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from deployments.cli import app

runner = CliRunner()


@pytest.fixture
def scored(platform_home: Path):
    """A results DB with batch b1 (4 rows, 2 flagged) scored by m v1."""
    from pynomaly.settings import get_settings
    from tasks.feedback import feedback_engine
    from tasks.results import replace_batch

    settings = get_settings()
    platform_home.mkdir(parents=True)
    engine = feedback_engine(settings.results_url)
    frame = pd.DataFrame(
        {"row_index": range(4), "score": [0.9, 0.8, 0.1, 0.2], "is_anomaly": [1, 1, 0, 0]}
    )
    replace_batch(
        engine, "b1", [frame], model_name="m", model_version=1, scored_at=datetime.now(UTC)
    )
    yield engine
    engine.dispose()


def feedback_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        return sorted(map(tuple, conn.execute(sa.text("SELECT * FROM detection_feedback"))))


def test_feedback_command_records_and_prints_json(scored, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("batch_id,row_index,label,note\nb1,0,1,confirmed\nb1,1,0,\n")
    result = runner.invoke(app, ["feedback", str(path), "--by", "ana", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 2 and report["anomalies"] == 1 and report["labelled_by"] == "ana"
    assert report["models"] == [{"model": "m", "version": 1, "rows": 2}]
    assert [r[:6] for r in feedback_rows(scored)] == [
        ("b1", 0, "m", 1, "ana", 1),
        ("b1", 1, "m", 1, "ana", 0),
    ]


BAD = {
    "label_not_0_1": ("batch_id,row_index,label\nb1,0,1\nb1,1,maybe\n", "row 2: label 'maybe'"),
    "never_scored_batch": ("batch_id,row_index,label\nb9,0,1\n", "batch 'b9' was never scored"),
    "never_scored_row": ("batch_id,row_index,label\nb1,12,1\n", "batch 'b1' has no scored row 12"),
    "row_twice": (
        "batch_id,row_index,label\nb1,0,1\nb1,2,0\nb1,0,0\n",
        "rows 1 and 3 both label batch 'b1' row 0",
    ),
    "missing_columns": ("batch,row_index,flag\nb1,0,1\n", "missing column(s) batch_id, label"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_feedback_exits_2_with_one_line_and_writes_nothing(
    scored, tmp_path: Path, case: str
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("batch_id,row_index,label\nb1,3,0\n")
    assert runner.invoke(app, ["feedback", str(good), "--by", "bo"]).exit_code == 0
    before = feedback_rows(scored)

    text, expected = BAD[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    result = runner.invoke(app, ["feedback", str(path), "--by", "bo"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and expected in lines[0]
    assert feedback_rows(scored) == before


def test_feedback_before_anything_was_scored(platform_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("batch_id,row_index,label\nb1,0,1\n")
    result = runner.invoke(app, ["feedback", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no batch was ever scored" in result.stderr
    assert not (platform_home / "results.db").exists()
