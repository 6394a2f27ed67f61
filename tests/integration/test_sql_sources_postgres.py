"""SQL sources on PostgreSQL are read in a read-only transaction, with table names quoted."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sql_sources import TABLES, WRITES, build_source, source_state
from typer.testing import CliRunner

from deployments.cli import app
from pynomaly.errors import InputError
from pynomaly.settings import get_settings
from tasks.ingest import load_snapshot, snapshot_source
from tasks.store import ArtifactStore

pytestmark = pytest.mark.integration

DRIVERS = ["postgresql+psycopg2", "postgresql"]  # plain postgresql:// is psycopg 3


@pytest.fixture
def source(pg_url: str) -> str:
    build_source(pg_url)
    return pg_url


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"))


def with_driver(url: str, driver: str) -> str:
    return driver + url[url.index("://") :]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("query", WRITES)
def test_write_through_query_is_refused_on_postgres(
    source: str, store: ArtifactStore, query: str, driver: str
) -> None:
    before = source_state(source)
    assert before["victim"]
    with pytest.raises(InputError, match=re.escape(f"SQL error in {query!r}")) as refused:
        snapshot_source(with_driver(source, driver), "d", store, query=query)
    if ";" not in query:  # psycopg 3 refuses two statements before the server sees them
        assert "read-only" in str(refused.value)
    assert source_state(source) == before
    assert store.list("datasets/d") == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_select_that_writes_is_refused_by_the_read_only_transaction(
    source: str, store: ArtifactStore, driver: str
) -> None:
    """A SELECT can still write (a function with side effects): the transaction refuses it."""
    engine = sa.create_engine(source, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION wipe() RETURNS bigint LANGUAGE sql AS "
            "'WITH gone AS (DELETE FROM victim RETURNING 1) SELECT count(*) FROM gone'"
        )
    engine.dispose()
    before = source_state(source)
    with pytest.raises(InputError, match=r"read-only transaction \(SQL sources are read-only"):
        snapshot_source(with_driver(source, driver), "d", store, query="SELECT wipe() AS n")
    assert source_state(source) == before


@pytest.mark.parametrize("name", sorted(TABLES))
def test_table_names_are_quoted_on_postgres(source: str, store: ArtifactStore, name: str) -> None:
    manifest = snapshot_source(source, "d", store, query=name)
    assert manifest.rows == TABLES[name]
    assert load_snapshot(store, manifest)["x"].tolist() == list(range(TABLES[name]))


def test_cli_refuses_drop_table_on_postgres(
    source: str, platform_home: Path, prefect_harness: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = source_state(source)
    monkeypatch.setenv("PYNOMALY_TEST_SOURCE", source)  # a URL with a password goes by reference
    get_settings.cache_clear()
    result = CliRunner().invoke(
        app,
        ["ingest", "env:PYNOMALY_TEST_SOURCE", "--query", "DROP TABLE victim", "--dataset", "d"],
    )
    get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SQL error in 'DROP TABLE victim'" in lines[0] and "read-only" in lines[0]
    assert lines[0].startswith("error: env:PYNOMALY_TEST_SOURCE (postgresql+psycopg2://")
    assert "***" in lines[0]  # the URL's password stays hidden
    assert result.stdout == ""
    assert source_state(source) == before
