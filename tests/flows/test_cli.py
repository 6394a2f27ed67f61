"""The CLI end to end on embedded defaults: demo, idempotent scoring, and every bad input.

Each bad input must end in exit code 2 with one line on stderr naming the file, column or
value, and must leave the registry and the results table as they were.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sql_sources import build_source, source_state
from typer.testing import CliRunner

from deployments.cli import app
from pynomaly.settings import get_settings

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):
    get_settings.cache_clear()
    result = runner.invoke(app, list(args), env=env)
    get_settings.cache_clear()
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """One demo run, shared: its home and its JSON output."""
    home = tmp_path_factory.mktemp("cli") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYNOMALY_HOME", str(home))
        result = invoke("demo", "--json")
        assert result.exit_code == 0, result.output
        yield home, json.loads(result.stdout)
    get_settings.cache_clear()


def registry_state(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "mlflow.db") as conn:
        versions = conn.execute("SELECT name, version FROM model_versions ORDER BY 1, 2")
        return versions.fetchall()


def results_state(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "results.db") as conn:
        query = "SELECT batch_id, count(*), sum(is_anomaly) FROM detection_results GROUP BY 1"
        return conn.execute(query).fetchall()


def test_demo_reports_a_real_model(demo: tuple[Path, dict]) -> None:
    home, out = demo
    assert out["model"] == "breast-cancer" and out["version"] == 1 and out["alias"] == "champion"
    assert out["detector"] == "iforest"
    assert 0.8 <= out["metrics"]["roc_auc"] <= 1.0
    assert 0.8 <= out["metrics"]["batch_roc_auc"] <= 1.0
    assert out["rows_scored"] == results_state(home)[0][1] > 0
    assert out["anomalies"] == results_state(home)[0][2]
    assert "mlflow ui --backend-store-uri sqlite:///" in out["ui"]["mlflow"]
    # One Prefect server per database: the hint stops the background API before the UI server.
    assert out["ui"]["prefect"].startswith("pynomaly services down && PREFECT_HOME=")


def test_scoring_a_batch_twice_keeps_one_copy(demo: tuple[Path, dict], monkeypatch) -> None:
    home, out = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    batch = str(home / "demo" / "batch.csv")
    first = invoke("score", batch, "--model", "breast-cancer", "--batch-id", "b-7", "--json")
    second = invoke(
        "score", batch, "--model", "breast-cancer@champion", "--batch-id", "b-7", "--json"
    )
    assert first.exit_code == second.exit_code == 0, second.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["rows_scored"] == b["rows_scored"] == out["rows_scored"]
    assert dict((r[0], r[1]) for r in results_state(home))["b-7"] == out["rows_scored"]
    assert set(a) >= {
        "model",
        "version",
        "alias",
        "metrics",
        "rows_scored",
        "anomalies",
        "batch_id",
    }


def test_second_training_is_gated_against_the_champion(
    demo: tuple[Path, dict], monkeypatch
) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    train_csv = str(home / "demo" / "train.csv")
    result = invoke(
        "train",
        train_csv,
        "--model",
        "breast-cancer",
        "--label-column",
        "is_malignant",
        "--detector",
        "knn",
        "--json",
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["version"] >= 2 and out["detector"] == "knn" and "roc_auc" in out["metrics"]
    gate = out["gate"]
    assert gate["decision"] in {"promote", "keep", "reject"} and gate["reasons"]
    assert out["alias"] == ("champion" if gate["decision"] == "promote" else "challenger")


BAD_TRAINING_FILES = {
    "empty.csv": ("", "file is empty"),
    "header.csv": ("a,b\n", "no data rows"),
    "semicolon.csv": ("a;b\n1;2\n", "';'-delimited"),
    "text.csv": ("a,b\n" + "".join(f"{i},{i}\n" for i in range(20)) + "1,abc\n", "'abc'"),
    "allnan.csv": ("a,b\n1,\n2,\n", "column 'b' has no values"),
    "infinite.csv": ("a,b\n1,2\n2,-inf\n", "column 'b' holds an infinite value"),
    "duplicate.csv": ("a,b,b\n1,2,3\n", "duplicate column name 'b'"),
}


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("name", sorted(BAD_TRAINING_FILES))
def test_bad_training_file(name: str, demo, tmp_path: Path, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    before = registry_state(home), results_state(home)
    content, fragment = BAD_TRAINING_FILES[name]
    path = tmp_path / name
    path.write_text(content)
    assert_refused(invoke("train", str(path), "--model", "m", "--json"), str(path), fragment)
    assert (registry_state(home), results_state(home)) == before


def test_missing_file(demo, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    assert_refused(
        invoke("pipeline", "/no/such.csv", "--model", "m"), "/no/such.csv: file not found"
    )


def test_batch_with_other_columns(demo, tmp_path: Path, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    before = registry_state(home), results_state(home)
    batch = pd.read_csv(home / "demo" / "batch.csv").drop(columns=["mean radius"])
    batch.to_csv(tmp_path / "fewer.csv", index=False)
    assert_refused(
        invoke("score", str(tmp_path / "fewer.csv"), "--model", "breast-cancer", "--json"),
        "missing column(s) the model needs: mean radius",
    )
    assert (registry_state(home), results_state(home)) == before


@pytest.mark.parametrize(
    ("ref", "fragment"),
    [("nope", "model 'nope' is not registered"), ("breast-cancer@gold", "no alias 'gold'")],
)
def test_unknown_model_or_alias(demo, monkeypatch, ref: str, fragment: str) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    before = results_state(home)
    assert_refused(invoke("score", str(home / "demo" / "batch.csv"), "--model", ref), fragment)
    assert results_state(home) == before


def test_unreachable_s3_endpoint(demo, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    env = {
        "PYNOMALY_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    assert_refused(
        invoke("ingest", "s3://bucket/data.csv", "--dataset", "d", env=env),
        "cannot reach S3 endpoint http://127.0.0.1:9",
    )


def test_sql_syntax_error(demo, tmp_path: Path, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    before = registry_state(home)
    db = tmp_path / "source.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x REAL)")
    assert_refused(
        invoke("train", f"sqlite:///{db}", "--query", "SELEC x FROM t", "--model", "m"),
        "SQL error in 'SELEC x FROM t'",
    )
    assert registry_state(home) == before


def test_drop_table_through_query_is_refused(demo, tmp_path: Path, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    url = f"sqlite:///{tmp_path / 'src.db'}"
    build_source(url)
    before = source_state(url)
    assert_refused(
        invoke("ingest", url, "--query", "DROP TABLE victim", "--dataset", "d"),
        "SQL error in 'DROP TABLE victim'",
        "read-only",
    )
    assert source_state(url) == before
    # The retry still finds the table.
    result = invoke("ingest", url, "--query", "victim", "--dataset", "victims", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == len(before["victim"])


def test_missing_sqlite_source(demo, tmp_path: Path, monkeypatch) -> None:
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    missing = tmp_path / "src.db"
    assert_refused(
        invoke("ingest", f"sqlite:///{missing}", "--query", "t", "--dataset", "d"),
        f"SQLite database {missing} not found",
    )
    assert not missing.exists()


def test_two_models_scoring_one_batch_keep_both(demo, monkeypatch) -> None:
    """`score batch.csv --model m1` then `--model m2` (the same default batch id, the content
    hash) used to leave only m2's rows and summary."""
    home, _ = demo
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    trained = invoke(
        "train",
        str(home / "demo" / "train.csv"),
        "--model",
        "second-opinion",
        "--label-column",
        "is_malignant",
        "--detector",
        "hbos",
    )
    assert trained.exit_code == 0, trained.output
    batch = str(home / "demo" / "batch.csv")
    first = invoke("score", batch, "--model", "breast-cancer", "--version", "1", "--json")
    second = invoke("score", batch, "--model", "second-opinion", "--json")
    assert first.exit_code == second.exit_code == 0, second.output
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["batch_id"] == b["batch_id"] and a["rows_scored"] == b["rows_scored"] > 0
    with sqlite3.connect(home / "results.db") as conn:
        rows = conn.execute(
            "SELECT model_name, model_version, count(*), sum(is_anomaly) FROM detection_results "
            "WHERE batch_id = ? GROUP BY 1, 2",
            (a["batch_id"],),
        ).fetchall()
        summaries = conn.execute(
            "SELECT model_name, model_version, row_count, anomaly_count FROM detection_batches "
            "WHERE batch_id = ?",
            (a["batch_id"],),
        ).fetchall()
    expected = {
        ("breast-cancer", 1, a["rows_scored"], a["anomalies"]),
        ("second-opinion", 1, b["rows_scored"], b["anomalies"]),
    }
    assert set(rows) == expected
    assert set(summaries) == expected
