"""A SQL source's password never lands in what a run writes: sources name their URL by
reference (`env:VARNAME` or `secret:BLOCKNAME`), and a literal URL with a password is refused
before Prefect starts.

The full run goes through the real `pynomaly` console script on embedded defaults (its own
PYNOMALY_HOME, Prefect's ephemeral API and SQLite database under it), then every file the run
wrote is scanned for the password: SQLite databases as bytes, Parquet contents, JSON, logs,
and every member of the gzip/tar backup archives.
"""

from __future__ import annotations

import gzip
import os
import secrets
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import servers
import sqlalchemy as sa
from secret_scan import scan

pytestmark = pytest.mark.integration

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))
# Settings the test process carries that would point a command away from embedded defaults.
OUTSIDE = ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def test_scan_finds_a_token_inside_archives(tmp_path: Path) -> None:
    """The scanner itself: a token in a tar.gz member, a gzip file and a Parquet value is found."""
    token = secrets.token_hex(16)
    (tmp_path / "plain.gz").write_bytes(gzip.compress(f"x{token}x".encode()))
    pd.DataFrame({"v": [token]}).to_parquet(tmp_path / "t.parquet")
    member = tmp_path / "member.txt"
    member.write_text(token)
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tar:
        tar.add(member, arcname="inner/member.txt")
    member.unlink()
    files, found = scan(tmp_path, token.encode())
    assert files == 3
    # Compressed bytes may or may not show the token verbatim; what they decompress to must.
    assert {"a.tar.gz|gunzip|inner/member.txt", "plain.gz|gunzip"} <= set(found)
    assert "t.parquet|parquet contents" in found


def cli(home: Path, *args: str, extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env.update(PYNOMALY_HOME=str(home), **extra)
    return subprocess.run(
        [PYNOMALY, *args, "--json"], env=env, capture_output=True, text=True, timeout=600
    )


def save_secret_block(home: Path, name: str, value: str) -> None:
    """A Prefect Secret block in the Prefect database the commands of `home` use; the value goes
    through stdin, never a command line."""
    (home / "prefect").mkdir(parents=True, mode=0o700)  # Prefect makes only the last folder
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env.update(PREFECT_HOME=str(home / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    code = (
        "import sys; from prefect.blocks.system import Secret; "
        "Secret(value=sys.stdin.read()).save(sys.argv[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, name],
        input=value,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("reference", ["env", "secret"])
def test_password_of_a_source_is_nowhere_in_what_a_run_wrote(
    reference: str, pg_server: servers.PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    token = secrets.token_hex(16)
    role = f"reader_{uuid.uuid4().hex[:10]}"
    database = sa.make_url(pg_url).database
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    admin = sa.create_engine(pg_url, poolclass=sa.NullPool)
    frame.to_sql("readings", admin, index=False)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{token}'")  # hex: no quoting
        conn.exec_driver_sql(f'GRANT SELECT ON readings TO "{role}"')
    admin.dispose()
    url = pg_server.database_url(database, driver="postgresql", login=(role, token))
    # Reachable only with the token: the same role with another password is refused.
    wrong = sa.create_engine(url.replace(token, "not-the-password"), poolclass=sa.NullPool)
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        wrong.connect()
    wrong.dispose()

    home = tmp_path / "home"
    if reference == "env":
        extra = {"PYNOMALY_SOURCE_URL": url}
        source = "env:PYNOMALY_SOURCE_URL"
    else:
        # The block is saved where the run's own Prefect keeps its database: the home.
        extra = {}
        source = "secret:sensors-source-url"
        save_secret_block(home, "sensors-source-url", url)
    outputs = []
    for args in (
        ["ingest", source, "--query", "readings", "--dataset", "d"],
        ["train", source, "--query", "readings", "--model", "m", "--detector", "iforest"],
        ["score", source, "--query", "readings", "--model", "m"],
        ["backup", "create"],
    ):
        done = cli(home, *args, extra=extra)
        assert done.returncode == 0, (args, done.stderr)
        outputs.append(done.stdout + done.stderr)
    assert '"rows_scored": 300' in outputs[2]

    # What the run wrote is where the scan looks: Prefect's database (holding the flow
    # parameters, which name the reference, and for secret: the block, which Prefect stores
    # encrypted), MLflow's, the results DB and a backup archive.
    prefect_db = b"".join(p.read_bytes() for p in (home / "prefect").glob("prefect.db*"))
    assert source.encode() in prefect_db
    assert (home / "mlflow.db").is_file() and (home / "results.db").is_file()
    archives = list((home / "backups").rglob("*.gz"))
    assert archives, sorted(p.name for p in (home / "backups").rglob("*"))

    files, found = scan(tmp_path, token.encode())
    assert files > 20
    assert found == []
    assert not [o for o in outputs if token in o]


def test_literal_url_with_a_password_is_refused_without_echoing_it(tmp_path: Path) -> None:
    token = secrets.token_hex(16)
    home = tmp_path / "home"
    url = f"postgresql://reader:{token}@127.0.0.1:5432/sensors"
    done = cli(home, "ingest", url, "--query", "readings", "--dataset", "d", extra={})
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert token not in done.stderr
    assert "postgresql://reader:***@127.0.0.1:5432/sensors" in lines[0]
    assert "env:VARNAME" in lines[0]
    assert not home.exists() or scan(home, token.encode())[1] == []


def test_unset_reference_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    name = f"PYNOMALY_UNSET_{uuid.uuid4().hex[:8].upper()}"
    done = cli(tmp_path / "home", "train", f"env:{name}", "--query", "t", "--model", "m", extra={})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: env:{name}: environment variable {name} is not set (it holds the SQL URL)"
    ]
