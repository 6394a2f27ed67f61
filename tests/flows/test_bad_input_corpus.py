"""Bad-input corpus: the real CLI over every bad input we know of, on one trained demo state.

Each case must end in its exit code (2: bad input) with exactly one non-empty line on stderr
naming the file, column, value, option or variable at fault, nothing on stdout, and must leave
the registry (model versions, aliases, runs), the expectation suites and the results tables
(row counts per table) as they were.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import sqlite3
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from deployments.cli import app
from pynomaly.settings import get_settings

runner = CliRunner()
MODEL = "breast-cancer"


def invoke(args: list[str], env: dict[str, str] | None = None):
    get_settings.cache_clear()
    result = runner.invoke(app, args, env=env)
    get_settings.cache_clear()
    return result


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One demo run (a champion on the embedded defaults) shared by every case."""
    home = tmp_path_factory.mktemp("corpus") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYNOMALY_HOME", str(home))
        result = invoke(["demo", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["alias"] == "champion"
        yield home
    get_settings.cache_clear()


def platform_state(home: Path) -> dict:
    """Model versions, aliases and runs; expectation suites; row counts per results table."""
    with sqlite3.connect(home / "mlflow.db") as conn:
        versions = conn.execute("SELECT name, version FROM model_versions ORDER BY 1, 2")
        versions = versions.fetchall()
        aliases = conn.execute(
            "SELECT name, alias, version FROM registered_model_aliases ORDER BY 1, 2"
        ).fetchall()
        runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    with sqlite3.connect(home / "results.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    suites = sorted(p.name for p in (home / "artifacts" / "expectations").glob("*"))
    return {
        "versions": versions,
        "aliases": aliases,
        "runs": runs,
        "rows": counts,
        "suites": suites,
    }


# ------------------------------------------------------------------ files the cases read


def numeric_csv(rows: int = 20) -> str:
    """A small CSV two varying numeric columns: good training data."""
    return "a,b\n" + "".join(f"{i},{(i * 7) % 11}\n" for i in range(rows))


def with_value(column: str, row: int, value: str, rows: int = 20) -> str:
    frame = pd.read_csv(io.StringIO(numeric_csv(rows))).astype(object)
    frame.loc[row, column] = value
    return frame.to_csv(index=False)


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def zip_bytes(text: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data.csv", text)
    return buffer.getvalue()


def sqlite_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x REAL, y REAL)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, i % 3) for i in range(20)])


def sqlite_source_holding(value: float) -> Callable[[Path, Path], None]:
    """A SQLite source (tmp/src.db, table t) with `value` in column y of its 8th row."""

    def build(home: Path, tmp: Path) -> None:
        sqlite_source(tmp / "src.db")
        with sqlite3.connect(tmp / "src.db") as conn:
            conn.execute("UPDATE t SET y = ? WHERE x = 7", (value,))

    return build


def demo_batch(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, Path], None]:
    """A batch the demo model can score, changed by `change`, written to tmp/batch.csv."""

    def build(home: Path, tmp: Path) -> None:
        change(pd.read_csv(home / "demo" / "batch.csv")).to_csv(tmp / "batch.csv", index=False)

    return build


def set_cell(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[row, column] = value
        return frame

    return change


@dataclass(frozen=True)
class Case:
    """One bad input: the command (templates over {tmp} and {home}), what it needs, what it
    must say. `files` are written to the case's tmp folder; `build` makes more from the demo."""

    args: tuple[str, ...]
    fragments: tuple[str, ...]
    files: dict[str, bytes | str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    build: Callable[[Path, Path], None] | None = None
    code: int = 2


def train(file: str, *more: str) -> tuple[str, ...]:
    return ("train", "{tmp}/" + file, "--model", "m", "--json", *more)


def score(*more: str, batch: str = "{home}/demo/batch.csv") -> tuple[str, ...]:
    return ("score", batch, "--json", *more)


GOOD = {"good.csv": numeric_csv()}
LATIN1 = "a,caf\xe9\n" + "".join(f"{i},{i % 5}\n" for i in range(20))
LATE_LATIN1 = numeric_csv() + "7,\xe9\n"
CONSTANT = "a,b,c\n" + "5,1.5,x\n" * 20
LONG_ID = "b" * 10_000
CASES: dict[str, Case] = {
    # ---------------------------------------------------------------- training files
    "empty-file": Case(train("f.csv"), ("{tmp}/f.csv", "file is empty"), {"f.csv": ""}),
    "header-only": Case(train("f.csv"), ("{tmp}/f.csv", "no data rows"), {"f.csv": "a,b\n"}),
    "semicolons": Case(train("f.csv"), ("';'-delimited",), {"f.csv": "a;b\n1;2\n"}),
    "tabs": Case(train("f.csv"), ("'\\t'-delimited",), {"f.csv": "a\tb\n1\t2\n"}),
    "text-in-numbers": Case(
        train("f.csv"), ("column 'b'", "'abc'"), {"f.csv": with_value("b", 19, "abc", 25)}
    ),
    "all-empty-column": Case(
        train("f.csv"), ("column 'b' has no values",), {"f.csv": "a,b\n1,\n2,\n"}
    ),
    "infinity": Case(
        train("f.csv"), ("column 'b' holds an infinite value",), {"f.csv": "a,b\n1,2\n2,-inf\n"}
    ),
    "duplicate-columns": Case(
        train("f.csv"), ("duplicate column name 'b'",), {"f.csv": "a,b,b\n1,2,3\n"}
    ),
    "unnamed-column": Case(train("f.csv"), ("empty name",), {"f.csv": "a,,c\n1,2,3\n"}),
    "one-row": Case(
        train("f.csv"), ("{tmp}/f.csv", "1 row(s)", "at least 10"), {"f.csv": "a,b\n1,2\n"}
    ),
    "nine-rows": Case(train("f.csv"), ("9 row(s)",), {"f.csv": numeric_csv(9)}),
    "constant-columns": Case(
        train("f.csv"), ("every feature column is constant", "'a', 'b', 'c'"), {"f.csv": CONSTANT}
    ),
    "constant-besides-label": Case(
        train("f.csv", "--label-column", "y"),
        ("every feature column is constant", "'a'"),
        {"f.csv": "a,y\n" + "3,0\n" * 16 + "3,1\n" * 4},
    ),
    "huge-positive": Case(
        train("f.csv"),
        ("column 'b'", "1e+308", "row 5", "too large"),
        {"f.csv": with_value("b", 4, "1e308")},
    ),
    "huge-negative": Case(
        train("f.csv"),
        ("column 'a'", "-1e+308", "row 12"),
        {"f.csv": with_value("a", 11, "-1e308")},
    ),
    # Beyond ±1e150 (tasks/ingest.py MAX_MAGNITUDE) at ingest, whatever the command or source.
    "ingest-huge-value": Case(
        ("ingest", "{tmp}/f.csv", "--dataset", "d"),
        ("{tmp}/f.csv", "column 'b'", "1e+300", "row 5", "too large"),
        {"f.csv": with_value("b", 4, "1e300")},
    ),
    "ingest-huge-just-over-bound": Case(
        ("ingest", "{tmp}/f.csv", "--dataset", "d"),
        ("column 'a'", "-2e+150", "row 3"),
        {"f.csv": with_value("a", 2, "-2e150")},
    ),
    "sql-huge-value": Case(
        ("ingest", "sqlite:///{tmp}/src.db", "--query", "t", "--dataset", "d"),
        ("sqlite:///{tmp}/src.db", "column 'y'", "1e+308", "row 8", "too large"),
        build=sqlite_source_holding(1e308),
    ),
    "latin-1-header": Case(
        train("f.csv"),
        ("{tmp}/f.csv", "not UTF-8", "0xe9", "byte offset 5", "line 1"),
        {"f.csv": LATIN1.encode("latin-1")},
    ),
    "latin-1-late-row": Case(
        train("f.csv"),
        ("not UTF-8", f"byte offset {len(numeric_csv()) + 2}", "line 22"),
        {"f.csv": LATE_LATIN1.encode("latin-1")},
    ),
    "gzip-named-csv": Case(
        train("f.csv"),
        ("{tmp}/f.csv", "gzip-compressed bytes"),
        {"f.csv": gzip.compress(numeric_csv().encode())},
    ),
    "bzip2-named-csv": Case(
        train("f.csv"),
        ("bzip2-compressed bytes",),
        {"f.csv": bz2.compress(numeric_csv().encode())},
    ),
    "zip-named-csv": Case(
        train("f.csv"), ("zip-compressed bytes",), {"f.csv": zip_bytes(numeric_csv())}
    ),
    "parquet-named-csv": Case(
        train("f.csv"),
        ("Parquet bytes", "name it .parquet"),
        {"f.csv": parquet_bytes(pd.read_csv(io.StringIO(numeric_csv())))},
    ),
    "csv-named-parquet": Case(
        train("f.parquet"), ("not a readable Parquet file",), {"f.parquet": numeric_csv()}
    ),
    "empty-parquet": Case(train("f.parquet"), ("file is empty",), {"f.parquet": ""}),
    "spreadsheet": Case(train("f.xlsx"), ("unsupported file type '.xlsx'",), {"f.xlsx": "x"}),
    "folder": Case(train("d"), ("is a folder",), build=lambda home, tmp: (tmp / "d").mkdir()),
    "missing-file": Case(train("nope.csv"), ("{tmp}/nope.csv: file not found",)),
    "label-not-found": Case(
        train("good.csv", "--label-column", "y"), ("label column 'y' not found",), GOOD
    ),
    "label-not-binary": Case(
        train("f.csv", "--label-column", "b"),
        ("label column 'b' must hold 0 or 1",),
        {"f.csv": numeric_csv()},
    ),
    "label-without-anomalies": Case(
        train("f.csv", "--label-column", "y"),
        ("needs at least 2 anomalies",),
        {"f.csv": "a,y\n" + "".join(f"{i},0\n" for i in range(20))},
    ),
    "unknown-detector": Case(train("good.csv", "--detector", "nope"), ("'nope'",), GOOD),
    "bad-model-name": Case(
        ("train", "{tmp}/good.csv", "--model", "bad name"), ("invalid name 'bad name'",), GOOD
    ),
    # ---------------------------------------------------------------- option values
    "contamination-0": Case(
        train("good.csv", "--contamination", "0"), ("--contamination 0",), GOOD
    ),
    "contamination-1": Case(
        train("good.csv", "--contamination", "1"), ("--contamination 1",), GOOD
    ),
    "contamination-negative": Case(
        train("good.csv", "--contamination", "-1"), ("--contamination -1",), GOOD
    ),
    "contamination-half": Case(
        train("good.csv", "--contamination", "0.5"), ("--contamination 0.5", "0 and 0.5"), GOOD
    ),
    "contamination-nan": Case(
        train("good.csv", "--contamination", "nan"), ("--contamination nan",), GOOD
    ),
    "contamination-text": Case(
        train("good.csv", "--contamination", "abc"), ("'--contamination'", "'abc'"), GOOD
    ),
    "delimiter-two-chars": Case(
        train("good.csv", "--delimiter", ";;"), ("--delimiter ';;'", "one character"), GOOD
    ),
    "delimiter-empty": Case(
        train("good.csv", "--delimiter", ""), ("--delimiter ''", "one character"), GOOD
    ),
    "delimiter-quote": Case(train("good.csv", "--delimiter", '"'), ("--delimiter '\"'",), GOOD),
    "delimiter-newline": Case(
        ("ingest", "{tmp}/good.csv", "--dataset", "d", "--delimiter", "\n"),
        ("--delimiter '\\n'", "line break"),
        GOOD,
    ),
    "trials-text": Case(train("good.csv", "--trials", "many"), ("'--trials'", "'many'"), GOOD),
    "workers-text": Case(train("good.csv", "--workers", "x"), ("'--workers'", "'x'"), GOOD),
    "model-option-missing": Case(("train", "{tmp}/good.csv"), ("'--model'",), GOOD),
    "unknown-option": Case(train("good.csv", "--colour", "red"), ("--colour",), GOOD),
    "unknown-command": Case(("trian", "x.csv"), ("'trian'",)),
    "bad-dataset-name": Case(
        ("ingest", "{tmp}/good.csv", "--dataset", "../up"), ("invalid name '../up'",), GOOD
    ),
    # ---------------------------------------------------------------- other sources
    "s3-bucket-without-key": Case(
        ("train", "s3://bucket", "--model", "m"), ("s3://bucket: no object key",)
    ),
    "s3-folder": Case(
        ("ingest", "s3://bucket/in/", "--dataset", "d"), ("s3://bucket/in/: no object key",)
    ),
    "s3-without-bucket": Case(("ingest", "s3://", "--dataset", "d"), ("without a bucket",)),
    "s3-unreachable": Case(
        ("ingest", "s3://bucket/data.csv", "--dataset", "d"),
        ("cannot reach S3 endpoint http://127.0.0.1:9",),
        env={
            "PYNOMALY_S3_ENDPOINT_URL": "http://127.0.0.1:9",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
        },
    ),
    "sql-syntax-error": Case(
        ("train", "sqlite:///{tmp}/src.db", "--query", "SELEC x FROM t", "--model", "m"),
        ("SQL error in 'SELEC x FROM t'",),
        build=lambda home, tmp: sqlite_source(tmp / "src.db"),
    ),
    "sql-write": Case(
        ("ingest", "sqlite:///{tmp}/src.db", "--query", "DROP TABLE t", "--dataset", "d"),
        ("'DROP TABLE t'", "read-only"),
        build=lambda home, tmp: sqlite_source(tmp / "src.db"),
    ),
    "sql-without-query": Case(
        ("ingest", "sqlite:///{tmp}/src.db", "--dataset", "d"),
        ("needs --query",),
        build=lambda home, tmp: sqlite_source(tmp / "src.db"),
    ),
    "sqlite-missing": Case(
        ("ingest", "sqlite:///{tmp}/none.db", "--query", "t", "--dataset", "d"),
        ("SQLite database {tmp}/none.db not found",),
    ),
    "secret-block-missing": Case(
        ("ingest", "secret:pynomaly-no-such-block", "--query", "t", "--dataset", "d"),
        ("secret:pynomaly-no-such-block: Prefect Secret block 'pynomaly-no-such-block' not found",),
    ),
    "secret-bad-block-name": Case(
        ("train", "secret:Sensors_DB", "--query", "t", "--model", "m"),
        ("secret:Sensors_DB", "'Sensors_DB' is not a Prefect block name"),
    ),
    "sql-other-database": Case(
        ("ingest", "mysql://u@localhost/db", "--query", "t", "--dataset", "d"),
        ("SQLite or PostgreSQL only",),
    ),
    # ---------------------------------------------------------------- scoring
    "unknown-model": Case(score("--model", "nope"), ("model 'nope' is not registered",)),
    "unknown-alias": Case(score("--model", f"{MODEL}@gold"), ("no alias 'gold'",)),
    "alias-and-version": Case(
        score("--model", f"{MODEL}@challenger", "--version", "1"),
        (f"--model '{MODEL}@challenger' with --version 1", "not both"),
    ),
    "version-not-registered": Case(
        score("--model", MODEL, "--version", "99"), ("has no version 99",)
    ),
    "version-zero": Case(score("--model", MODEL, "--version", "0"), ("--version 0",)),
    "version-text": Case(score("--model", MODEL, "--version", "one"), ("'--version'", "'one'")),
    "model-ref-without-name": Case(score("--model", "@champion"), ("'@champion'",)),
    "batch-id-10000-chars": Case(
        score("--model", MODEL, "--batch-id", LONG_ID), ("10000 characters, at most 128",)
    ),
    "batch-id-129-chars": Case(
        score("--model", MODEL, "--batch-id", "x" * 129), ("129 characters",)
    ),
    "batch-id-empty": Case(score("--model", MODEL, "--batch-id", ""), ("--batch-id ''",)),
    "batch-id-newline": Case(score("--model", MODEL, "--batch-id", "a\nb"), ("control character",)),
    "dask-malformed": Case(
        score("--model", MODEL, "--dask", "not an address"), ("--dask 'not an address'",)
    ),
    "dask-unreachable": Case(
        score("--model", MODEL, "--dask", "tcp://127.0.0.1:9"),
        ("--dask tcp://127.0.0.1:9", "no Dask scheduler answers"),
    ),
    "train-dask-unreachable": Case(
        train("good.csv", "--dask", "tcp://127.0.0.1:9"),
        ("--dask tcp://127.0.0.1:9", "no Dask scheduler answers"),
        GOOD,
    ),
    "batch-missing-column": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("missing column(s) the model needs: mean radius",),
        build=demo_batch(lambda f: f.drop(columns=["mean radius"])),
    ),
    "batch-extra-column": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("column(s) the model does not know: extra",),
        build=demo_batch(lambda f: f.assign(extra=1.0)),
    ),
    "batch-text-in-numbers": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("column 'mean radius'", "'abc'"),
        build=demo_batch(set_cell("mean radius", 40, "abc")),
    ),
    "batch-huge-value": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("{tmp}/batch.csv", "column 'mean radius'", "1e+308", "row 41", "too large"),
        build=demo_batch(set_cell("mean radius", 40, 1e308)),
    ),
    "batch-huge-negative": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("column 'mean texture'", "-1e+200", "row 8"),
        build=demo_batch(set_cell("mean texture", 7, -1e200)),
    ),
    "drift-huge-value": Case(
        ("drift", "{tmp}/batch.csv", "--model", MODEL),
        ("column 'mean area'", "1e+160", "row 3"),
        build=demo_batch(set_cell("mean area", 2, 1e160)),
    ),
    "batch-latin-1": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("{tmp}/batch.csv", "not UTF-8"),
        build=lambda home, tmp: (tmp / "batch.csv").write_bytes(
            (home / "demo" / "batch.csv").read_bytes() + "1,\xe9\n".encode("latin-1")
        ),
    ),
    "batch-gzip": Case(
        score("--model", MODEL, batch="{tmp}/batch.csv"),
        ("gzip-compressed bytes",),
        build=lambda home, tmp: (tmp / "batch.csv").write_bytes(
            gzip.compress((home / "demo" / "batch.csv").read_bytes())
        ),
    ),
    "drift-two-char-delimiter": Case(
        ("drift", "{home}/demo/batch.csv", "--model", MODEL, "--delimiter", ";;"),
        ("--delimiter ';;'",),
    ),
    "batch-file-missing": Case(
        score("--model", MODEL, batch="{tmp}/none.csv"), ("{tmp}/none.csv: file not found",)
    ),
    # ---------------------------------------------------------------- pipeline: nothing trained
    "pipeline-long-batch-id": Case(
        ("pipeline", "{home}/demo/train.csv", "--model", MODEL, "--batch-id", LONG_ID),
        ("10000 characters",),
    ),
    "pipeline-bad-batch": Case(
        ("pipeline", "{home}/demo/train.csv", "--model", MODEL, "--score", "{tmp}/f.csv"),
        ("{tmp}/f.csv", "not UTF-8"),
        {"f.csv": LATIN1.encode("latin-1")},
    ),
    "pipeline-contamination-1": Case(
        ("pipeline", "{home}/demo/train.csv", "--model", MODEL, "--contamination", "1"),
        ("--contamination 1",),
    ),
    # ---------------------------------------------------------------- settings
    "chunk-rows-zero": Case(
        train("good.csv"), ("PYNOMALY_CHUNK_ROWS='0'",), GOOD, {"PYNOMALY_CHUNK_ROWS": "0"}
    ),
    "chunk-rows-text": Case(
        train("good.csv"), ("PYNOMALY_CHUNK_ROWS='many'",), GOOD, {"PYNOMALY_CHUNK_ROWS": "many"}
    ),
    "prefect-mode-unknown": Case(
        train("good.csv"),
        ("PYNOMALY_PREFECT_MODE='forever'",),
        GOOD,
        {"PYNOMALY_PREFECT_MODE": "forever"},
    ),
    "prefect-idle-zero": Case(
        train("good.csv"),
        ("PYNOMALY_PREFECT_IDLE_MINUTES='0'",),
        GOOD,
        {"PYNOMALY_PREFECT_IDLE_MINUTES": "0"},
    ),
    "gate-margin-negative": Case(
        train("good.csv"), ("PYNOMALY_GATE_MARGIN='-1'",), GOOD, {"PYNOMALY_GATE_MARGIN": "-1"}
    ),
    "drift-threshold-above-1": Case(
        ("drift", "{home}/demo/batch.csv", "--model", MODEL),
        ("PYNOMALY_DRIFT_THRESHOLD='2'",),
        env={"PYNOMALY_DRIFT_THRESHOLD": "2"},
    ),
    "keep-last-zero": Case(
        ("backup", "prune"),
        ("PYNOMALY_BACKUP_KEEP_LAST='0'",),
        env={"PYNOMALY_BACKUP_KEEP_LAST": "0"},
    ),
    "results-url-not-a-url": Case(
        score("--model", MODEL),
        ("PYNOMALY_RESULTS_DB_URL='results'",),
        env={"PYNOMALY_RESULTS_DB_URL": "results"},
    ),
    "artifact-root-without-bucket": Case(
        train("good.csv"),
        ("PYNOMALY_ARTIFACT_ROOT='s3://'",),
        GOOD,
        {"PYNOMALY_ARTIFACT_ROOT": "s3://"},
    ),
    "home-is-a-file": Case(
        train("good.csv"),
        ("PYNOMALY_HOME={tmp}/file", "is a file"),
        {**GOOD, "file": "x"},
        {"PYNOMALY_HOME": "{tmp}/file"},
    ),
    "home-inside-a-file": Case(
        train("good.csv"),
        ("PYNOMALY_HOME={tmp}/file/home", "cannot write there"),
        {**GOOD, "file": "x"},
        {"PYNOMALY_HOME": "{tmp}/file/home"},
    ),
    # An existing folder no process may add a file to, root included: the read-only home that
    # used to hang for 97 s in Prefect's start-up.
    "home-not-writable": Case(
        train("good.csv"),
        ("PYNOMALY_HOME=/sys", "cannot write there"),
        GOOD,
        {"PYNOMALY_HOME": "/sys"},
    ),
    "prefect-home-is-a-file": Case(
        train("good.csv"),
        ("PREFECT_HOME={tmp}/file", "is a file"),
        {**GOOD, "file": "x"},
        {"PREFECT_HOME": "{tmp}/file"},
    ),
    # ---------------------------------------------------------------- other commands
    "registry-version-text": Case(
        ("registry", "promote", MODEL, "--version", "latest"), ("'--version'", "'latest'")
    ),
    "feedback-file-missing": Case(("feedback", "{tmp}/none.csv"), ("{tmp}/none.csv",)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, home: Path, tmp_path: Path, monkeypatch) -> None:
    case = CASES[name]
    monkeypatch.setenv("PYNOMALY_HOME", str(home))
    fill = {"tmp": str(tmp_path), "home": str(home)}
    for file, content in case.files.items():
        path = tmp_path / file
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if case.build is not None:
        case.build(home, tmp_path)
    before_files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    before = platform_state(home)

    args = [a.replace("{tmp}", fill["tmp"]).replace("{home}", fill["home"]) for a in case.args]
    env = {k: v.format(**fill) for k, v in case.env.items()}
    result = invoke(args, env=env)

    assert result.exit_code == case.code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in case.fragments:
        assert fragment.format(**fill) in lines[0], lines[0]
    assert result.stdout == ""
    assert platform_state(home) == before
    # Nothing made beside the inputs either (no new home, no database file, no snapshot).
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before_files


def test_corpus_size() -> None:
    assert len(CASES) >= 60


def test_json_stdout_is_one_object_whatever_libraries_print(tmp_path: Path, monkeypatch) -> None:
    """MLflow prints "View run ... at: URL" on stdout when it talks to a tracking server: with
    --json, stdout still holds exactly the one JSON object."""
    import flows.score_batch

    summary = {"model": "m", "version": 1, "batch_id": "b", "rows_scored": 3}

    def chatty_flow(*args, **kwargs) -> dict:
        print("🏃 View run train-m at: http://mlflow:5000/#/experiments/1/runs/abc")
        return summary

    monkeypatch.setattr(flows.score_batch, "score_batch", chatty_flow)
    monkeypatch.setenv("PYNOMALY_HOME", str(tmp_path / "home"))
    result = invoke(["score", __file__, "--model", "m", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == summary
    assert "View run" not in result.output
