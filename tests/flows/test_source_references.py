"""SQL sources by reference on the embedded Prefect: the URL of a `secret:BLOCKNAME` source is
read from a Prefect Secret block inside the read and lands in nothing a run writes; a literal
URL with a password given to a flow directly (a UI run, `flow(source=...)`) is refused before
anything is read or written."""

from __future__ import annotations

import secrets
import sqlite3
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from prefect.blocks.system import Secret
from secret_scan import scan

from flows.ingest_dataset import ingest_dataset
from flows.train_detector import train_detector
from pynomaly.errors import InputError
from pynomaly.settings import get_settings
from tasks.store import ArtifactStore

ROWS = 50


def sqlite_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE readings (a REAL, b REAL)")
        conn.executemany("INSERT INTO readings VALUES (?, ?)", [(i, i % 7) for i in range(ROWS)])


def url_with_password(path: Path, token: str) -> str:
    """A SQLite URL carrying a password (SQLite ignores it; it stands for a PostgreSQL one)."""
    url = f"sqlite://reader:{token}@/{path}"
    assert sa.make_url(url).database == str(path)
    return url


def prefect_database_folder() -> Path:
    """The folder of the session harness's Prefect database (flow runs, logs, blocks)."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    return Path(sa.make_url(PREFECT_API_DATABASE_CONNECTION_URL.value()).database).parent


def flow_run_sources(flow_name: str) -> list[str]:
    """The `source` parameter of every recorded run of a flow."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
    return [run.parameters.get("source") for run in runs]


def test_secret_block_url_is_read_inside_the_read_and_recorded_nowhere(
    platform_home: Path, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    sqlite_source(tmp_path / "src.db")
    name = f"source-{uuid.uuid4().hex[:10]}"
    Secret(value=url_with_password(tmp_path / "src.db", token)).save(name)
    source = f"secret:{name}"

    done = ingest_dataset(source, "d", query="readings")
    assert done["rows"] == ROWS
    store = ArtifactStore(get_settings().artifact_store, get_settings().s3_endpoint_url)
    assert f'"source": "{source}"' in store.get_bytes(f"datasets/d/{done['sha256']}.json").decode()
    # An error names the reference and the URL with its password hidden.
    with pytest.raises(InputError) as failed:
        ingest_dataset(source, "d", query="SELECT nope FROM readings")
    assert str(failed.value).startswith(f"{source} (sqlite://reader:***@/")
    assert token not in str(failed.value)

    assert source in flow_run_sources("ingest-dataset")
    # Nothing written holds the password: the platform home (snapshots, manifests, suites) and
    # Prefect's database (flow and task runs, their parameters and logs, the block itself,
    # which Prefect stores encrypted).
    for root in (platform_home, prefect_database_folder()):
        files, found = scan(root, token.encode())
        assert files and found == [], root


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Prefect Secret block '{name}' not found (save the SQL URL in it)"),
        ("data/train.csv", "Secret block '{name}' does not hold a SQL URL"),
    ],
)
def test_secret_block_that_does_not_resolve_is_one_error_naming_it(
    value: str | None, message: str, platform_home: Path
) -> None:
    name = f"source-{uuid.uuid4().hex[:10]}"
    if value is not None:
        Secret(value=value).save(name)
    with pytest.raises(InputError) as failed:
        ingest_dataset(f"secret:{name}", "d", query="readings")
    assert str(failed.value) == f"secret:{name}: " + message.format(name=name)
    assert (
        ArtifactStore(get_settings().artifact_store, get_settings().s3_endpoint_url).list(
            "datasets"
        )
        == []
    )


@pytest.mark.parametrize("flow", [ingest_dataset, train_detector])
def test_flow_given_a_url_with_a_password_refuses_it_before_reading(
    flow, platform_home: Path, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    sqlite_source(tmp_path / "src.db")
    with pytest.raises(InputError) as refused:
        flow(url_with_password(tmp_path / "src.db", token), "d", query="readings")
    message = str(refused.value)
    assert message.startswith(f"sqlite://reader:***@/{tmp_path}/src.db: a SQL URL with a password")
    assert "env:VARNAME" in message and "secret:BLOCKNAME" in message
    assert token not in message and "\n" not in message
    assert (
        ArtifactStore(get_settings().artifact_store, get_settings().s3_endpoint_url).list(
            "datasets"
        )
        == []
    )
