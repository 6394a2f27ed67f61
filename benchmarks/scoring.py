"""`pynomaly score` of N x 20 Parquet batches against raw predict plus a raw write of the same rows.

For each size (1M, 4M, 16M rows by default) and each results DB (SQLite, then PostgreSQL 15 in a
throwaway cluster started as the integration tests start theirs):

- `pynomaly score BATCH --model bench --json` as a new user runs it from the second command on:
  the `pynomaly` console script, which hands the command to this home's warm command process
  (deployments/local/warm.py; the benchmark waits until it is up after training). Wall time, and
  peak RSS of the process doing the work: the command forked by the warm process (its process
  tree, psutil, sampled every 50 ms), the client beside it;
- once, at the smallest size, the same command in-process (`python -m deployments.cli score`:
  every import paid, as with PYNOMALY_WARM=false or the first command of a home);
- raw: the same registered model loaded once with `mlflow.pyfunc.load_model`, `predict` over the
  same file read in row groups, and a raw write of the same rows into a table with the same
  columns, key and indexes (SQLite: executemany of tuples in one transaction; PostgreSQL: one
  COPY of CSV written by Arrow) -- predict and write timed apart;
- on PostgreSQL the write part alone: `replace_batch` (what scoring writes through) against the
  raw COPY, both fed the same stored scores.

Printed side by side with the issue's targets: score <= 2x (raw predict + raw write) at the
smallest size, write part <= 1.5x raw COPY, peak RSS at the largest size <= 1.2x the smallest
and < 1.5 GB. Batches are generated row group by row group, never whole in memory.

Run: `python benchmarks/scoring.py [--rows 1000000,4000000,16000000] [--backends sqlite,postgres]
[--workdir DIR] [--json]`. A small smoke run: `--rows 20000,80000`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))
COLUMNS = [f"f{i:02d}" for i in range(20)]
ROW_GROUP = 250_000
MODEL = "bench"
GB = 1024**3


def write_batch(path: Path, rows: int, seed: int, shift: float = 0.0) -> Path:
    """N x 20 standard-normal floats as Parquet, one row group at a time; column f00 shifted by
    `shift` standard deviations (a drift, for benchmarks/drift.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    schema = pa.schema([(c, pa.float64()) for c in COLUMNS])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            data = rng.normal(size=(n, len(COLUMNS)))
            data[:, 0] += shift
            writer.write_table(pa.table({c: data[:, i] for i, c in enumerate(COLUMNS)}, schema))
    return path


def print_goals(goals: dict[str, bool]) -> None:
    """One line per goal of a benchmark: met or not."""
    for goal, met in goals.items():
        print(f"{goal}: {'met' if met else 'NOT met'}")


def row_groups(path: Path) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP):
        yield batch.to_pandas()


def _tree_rss(proc: object) -> int:
    """RSS of a process and its children (psutil)."""
    return proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))


def run_tree(command: list[str], env: dict[str, str], warm_pid: int | None = None) -> dict:
    """Wall time and peak RSS of a command: of the process doing the work (the command's own
    process, or the command the warm server `warm_pid` forked for it, with its children) and of
    everything (the client too)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    server = psutil.Process(warm_pid) if warm_pid else None
    peak_own = peak_tree = 0
    while proc.poll() is None:
        try:
            own = _tree_rss(root)
            forked = sum(_tree_rss(c) for c in server.children()) if server else 0
        except psutil.Error:
            continue  # a child ended between listing and reading: sample again
        peak_own, peak_tree = max(peak_own, forked or own), max(peak_tree, own + forked)
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{err.decode()[-2000:]}")
    return {
        "wall_s": wall,
        "peak_rss_gb": peak_own / GB,
        "peak_tree_rss_gb": peak_tree / GB,
        "result": json.loads(out.decode().strip().splitlines()[-1]),
    }


def wait_warm(env: dict[str, str], timeout: float = 180.0) -> int:
    """The pid of the home's warm command process for this environment, once it listens."""
    from deployments.local import warm

    home = warm.prefect_home(env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = warm.read_state(home)
        if state and Path(state["socket"]).exists():
            return int(state["pid"])
        time.sleep(0.5)
    raise SystemExit(f"no warm command process came up in {timeout:.0f} s under {home}")


def raw_table_sql(postgres: bool) -> list[str]:
    """A table like detection_results: same columns, key and the two secondary indexes."""
    real = "double precision" if postgres else "REAL"
    stamp = "timestamptz" if postgres else "DATETIME"
    return [
        "DROP TABLE IF EXISTS raw_results",
        f"CREATE TABLE raw_results (batch_id varchar(128) NOT NULL, row_index bigint NOT NULL, "
        f"score {real} NOT NULL, is_anomaly boolean NOT NULL, model_name varchar(200) NOT NULL, "
        f"model_version integer NOT NULL, scored_at {stamp} NOT NULL, "
        "PRIMARY KEY (batch_id, model_name, model_version, row_index))",
        "CREATE INDEX ix_raw_results_model ON raw_results (model_name, model_version)",
        "CREATE INDEX ix_raw_results_scored_at ON raw_results (scored_at)",
    ]


def raw_predict(model: object, batch: Path, scores: Path) -> float:
    """Seconds of pyfunc predict over the batch in row groups; scores kept in a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    elapsed = 0.0
    offset = 0
    with pq.ParquetWriter(
        scores,
        pa.schema({"row_index": pa.int64(), "score": pa.float64(), "is_anomaly": pa.bool_()}),
    ) as writer:
        for frame in row_groups(batch):
            started = time.perf_counter()
            out = model.predict(frame)
            elapsed += time.perf_counter() - started
            idx = np.arange(offset, offset + len(frame), dtype=np.int64)
            offset += len(frame)
            writer.write_table(
                pa.table(
                    {
                        "row_index": idx,
                        "score": out["score"].to_numpy(),
                        "is_anomaly": out["is_anomaly"].to_numpy(dtype=bool),
                    }
                )
            )
    return elapsed


def raw_write(url: str, scores: Path) -> float:
    """Seconds of a raw write of the scored rows: one transaction, no frames of constants."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for statement in raw_table_sql(postgres):
            conn.exec_driver_sql(statement)
    at = datetime.now(UTC)
    started = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        if postgres:
            import pyarrow as pa
            import pyarrow.csv as pa_csv
            import pyarrow.parquet as pq

            statement = (
                "COPY raw_results (batch_id, model_name, model_version, scored_at, row_index, "
                "score, is_anomaly) FROM STDIN WITH (FORMAT csv)"
            )
            key = {"batch_id": "raw", "model_name": MODEL, "model_version": 1}
            key["scored_at"] = at.isoformat()
            with cursor.copy(statement) as copy:
                for batch in pq.ParquetFile(scores).iter_batches(batch_size=ROW_GROUP):
                    n = batch.num_rows
                    table = pa.table(
                        {k: pa.repeat(pa.scalar(v), n) for k, v in key.items()}
                        | {c: batch.column(c) for c in ("row_index", "score", "is_anomaly")}
                    )
                    out = pa.BufferOutputStream()
                    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False))
                    copy.write(memoryview(out.getvalue()))
        else:
            stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
            for chunk in row_groups(scores):
                cursor.executemany(
                    "INSERT INTO raw_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        ("raw", i, s, int(a), MODEL, 1, stamp)
                        for i, s, a in zip(
                            chunk["row_index"].tolist(),
                            chunk["score"].tolist(),
                            chunk["is_anomaly"].tolist(),
                            strict=True,
                        )
                    ],
                )
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def platform_write(url: str, chunks: Iterator[pd.DataFrame], model: str = MODEL) -> float:
    """Seconds of replace_batch (scoring's writer: one transaction) over stored scores."""
    from tasks.results import replace_batch, results_engine

    engine = results_engine(url)
    started = time.perf_counter()
    replace_batch(
        engine,
        "write-only",
        chunks,
        model_name=model,
        model_version=1,
        scored_at=datetime.now(UTC),
    )
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def train(env: dict[str, str], workdir: Path) -> None:
    """A small iforest on 2,000 rows of the batches' distribution, registered as champion."""
    data = workdir / "train.csv"
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.normal(size=(2_000, len(COLUMNS))), columns=COLUMNS).to_csv(data, index=False)
    run_tree(
        [PYNOMALY, "train", str(data), "--model", MODEL, "--detector", "iforest", "--json"], env
    )


def bench_backend(name: str, results_url: str, batches: dict[int, Path], workdir: Path) -> list:
    import mlflow

    home = workdir / f"home-{name}"
    shutil.rmtree(home, ignore_errors=True)  # a fresh home per run: model v1 is the champion
    env = {**os.environ, "PYNOMALY_HOME": str(home), "PYTHONPATH": str(REPO)}
    env["PYNOMALY_RESULTS_DB_URL"] = results_url
    train(env, workdir)
    tracking = f"sqlite:///{home.resolve() / 'mlflow.db'}"
    mlflow.set_registry_uri(tracking)  # a benchmark script, not library code
    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    rows = []
    warm_pid = wait_warm(env)  # started by the train command, as for a user's second command
    try:
        for n, batch in batches.items():
            in_process = n == min(batches)
            rows.append(
                bench_size(name, results_url, n, batch, model, env, warm_pid, workdir, in_process)
            )
    finally:
        subprocess.run([PYNOMALY, "services", "down"], env=env, capture_output=True, check=False)
    return rows


def bench_size(
    name: str,
    results_url: str,
    n: int,
    batch: Path,
    model: object,
    env: dict[str, str],
    warm_pid: int,
    workdir: Path,
    in_process: bool,
) -> dict:
    """One batch size: the warm command, the in-process command (smallest size only), raw."""
    score = ["score", str(batch), "--model", MODEL, "--json"]
    scored = run_tree([PYNOMALY, *score], env, warm_pid)
    assert scored["result"]["rows_stored"] == n, scored["result"]
    first = None
    if in_process:
        first = run_tree([sys.executable, "-m", "deployments.cli", *score], env)
    scores = workdir / f"scores-{n}.parquet"
    predict_s = raw_predict(model, batch, scores)
    write_s = raw_write(results_url, scores)
    row = {
        "backend": name,
        "rows": n,
        "score_s": scored["wall_s"],
        "rows_per_s": n / scored["wall_s"],
        "raw_predict_s": predict_s,
        "raw_write_s": write_s,
        "ratio_vs_raw": scored["wall_s"] / (predict_s + write_s),
        "peak_rss_gb": scored["peak_rss_gb"],
        "peak_tree_rss_gb": scored["peak_tree_rss_gb"],
    }
    if first is not None:
        row["in_process_s"] = first["wall_s"]
        row["in_process_ratio"] = first["wall_s"] / (predict_s + write_s)
        row["in_process_rss_gb"] = first["peak_rss_gb"]
    if name == "postgres":
        row["replace_batch_s"] = platform_write(results_url, row_groups(scores))
        row["write_ratio_vs_copy"] = row["replace_batch_s"] / write_s
    scores.unlink()
    return row


def verdicts(rows: list[dict]) -> list[str]:
    lines = []
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["rows"])
        small, large = mine[0], mine[-1]
        lines.append(
            f"{backend}: score {small['rows']:,} rows = {small['ratio_vs_raw']:.2f}x "
            "(raw predict + raw write); target <= 2x"
            + (
                f" (in-process, every import paid: {small['in_process_ratio']:.2f}x)"
                if "in_process_ratio" in small
                else ""
            )
        )
        if "write_ratio_vs_copy" in small:
            lines.append(
                f"{backend}: write part {small['write_ratio_vs_copy']:.2f}x raw COPY; "
                "target <= 1.5x"
            )
        growth = large["peak_rss_gb"] / small["peak_rss_gb"]
        lines.append(
            f"{backend}: peak RSS {large['rows']:,} rows {large['peak_rss_gb']:.2f} GB = "
            f"{growth:.2f}x the {small['rows']:,}-row {small['peak_rss_gb']:.2f} GB; "
            "target <= 1.2x and < 1.5 GB"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        default="1000000,4000000,16000000",
        help="comma-separated batch sizes (rows x 20 columns)",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--workdir", type=Path, help="kept afterwards (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.rows.split(","))
    backends = args.backends.split(",")
    sys.path[:0] = [str(REPO), str(REPO / "tests")]

    with tempfile.TemporaryDirectory(prefix="pynomaly-bench-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        batches = {n: write_batch(workdir / f"batch-{n}.parquet", n, seed=n) for n in sizes}
        rows: list[dict] = []
        if "sqlite" in backends:
            (workdir / "results-sqlite.db").unlink(missing_ok=True)
            url = f"sqlite:///{workdir / 'results-sqlite.db'}"
            rows += bench_backend("sqlite", url, batches, workdir)
        if "postgres" in backends:
            from servers import start_postgres

            pg_dir = Path(tempfile.mkdtemp(prefix="pynomaly-bench-pg-"))  # postgres must reach it
            server = start_postgres(pg_dir)
            try:
                url = server.create_database("results").replace(
                    "postgresql+psycopg2", "postgresql+psycopg"
                )
                rows += bench_backend("postgres", url, batches, workdir)
            finally:
                server.stop()
                shutil.rmtree(pg_dir, ignore_errors=True)
    if args.json:
        print(json.dumps({"rows": rows, "verdicts": verdicts(rows)}, indent=2))
        return
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
