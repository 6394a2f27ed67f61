"""Scale-out on Dask: scoring one batch with 1 vs 2 Dask workers, side by side in one run.

For each worker count, a `distributed.LocalCluster` of that many worker processes with one
thread each; on it, the same N x 20 Parquet batch (4M rows by default) is scored

- end to end: the score flow with `dask=<the cluster's address>` (ingest + validation of the
  batch, partitioned scoring on the workers, one results-DB transaction in this process), run
  twice on the cluster: the first run's workers import the libraries and load the model (printed
  as "first run, new workers"); the second, on the same workers as on a standing cluster, is
  the end-to-end figure;
- scoring phase: the flow's partition task body (tasks.scaleout.score_partition: read its row
  range, score it) mapped over the same partitions with the Dask client, without Prefect or the
  results DB: what the workers themselves do.

Also the flow without Dask (one process) as the reference, and the batch's one-transaction write
alone (replace_batch fed the stored scores): a floor under every end-to-end time. Printed:
seconds, rows/s and the cores kept busy on average (the machine's busy CPU time over the run,
from /proc/stat) of each, and the ratio of 2 workers to 1 against the issue's target (>= 1.7x
on 4M rows), next to the most this machine allows: 2 workers do at least the CPU work of 1, so
their speed-up cannot pass (cores) / (cores the 1-worker run kept busy). The model is an IForest
trained through the train flow on 2,000 rows, in a throwaway embedded home (SQLite). Only
meaningful on an otherwise idle machine (Linux) with more cores than workers.

Run: `python benchmarks/scaleout.py [--rows 4000000] [--workers 1,2] [--partition-rows 500000]
[--workdir DIR] [--json]`. A small smoke run: `--rows 40000 --partition-rows 5000`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COLUMNS = [f"f{i:02d}" for i in range(20)]
ROW_GROUP = 250_000
MODEL = "bench-scaleout"
TARGET = 1.7


def write_batch(path: Path, rows: int, seed: int) -> Path:
    """N x 20 standard-normal floats as Parquet, one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    schema = pa.schema([(c, pa.float64()) for c in COLUMNS])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            frame = pd.DataFrame(rng.normal(size=(n, len(COLUMNS))), columns=COLUMNS)
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
    return path


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy since boot, all cores (Linux /proc/stat): user,
    nice, system, irq, softirq and steal; not idle or iowait. Deltas over a run of the benchmark
    on an otherwise idle machine are what the run kept busy: the flow, the Dask scheduler and
    workers, the results DB."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Timed:
    """Wall seconds and busy CPU seconds (all cores) of a `with` block."""

    def __enter__(self) -> Timed:
        self.cpu, self.wall = busy_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = busy_cpu_s() - self.cpu

    @property
    def cores(self) -> float:
        """Cores kept busy on average."""
        return self.cpu / self.wall


def scoring_phase(address: str, manifest: Any, partition_rows: int) -> tuple[Timed, int]:
    """Time and rows of the partition task bodies mapped over the cluster (no Prefect)."""
    from distributed import Client

    from flows.score_batch import absolute
    from pynomaly.settings import get_settings
    from registry.versions import client as mlflow_client
    from registry.versions import resolve_version
    from tasks.scaleout import partition_arguments, partitions, score_partition

    settings = get_settings()
    resolved = resolve_version(mlflow_client(settings.mlflow_tracking_uri), MODEL, None, 1)
    manifest = replace(manifest, snapshot_uri=absolute(manifest.snapshot_uri))
    parts = partitions(manifest.rows, partition_rows)
    arguments = partition_arguments(
        manifest,
        resolved,
        COLUMNS,
        settings.s3_endpoint_url,
        settings.mlflow_tracking_uri,
        settings.chunk_rows,
    )
    with Client(address, set_as_default=False) as client, Timed() as timed:
        futures = [client.submit(score_partition, *arguments(part), pure=False) for part in parts]
        rows = sum(len(frame) for frame, _ in client.gather(futures))
    return timed, rows


def write_alone(batch_id: str) -> float:
    """Seconds of the batch's one-transaction write alone: replace_batch fed the scores the flow
    stored for `batch_id`, in 250k-row chunks, into another batch id of the same results DB."""
    from scoring import platform_write  # benchmarks/scoring.py

    from pynomaly.settings import get_settings
    from tasks.results import read_batch, results_engine

    url = get_settings().results_url
    engine = results_engine(url)
    stored = read_batch(engine, batch_id, model_name=MODEL, model_version=1)
    engine.dispose()
    chunks = (stored.iloc[i : i + ROW_GROUP] for i in range(0, len(stored), ROW_GROUP))
    return platform_write(url, chunks, MODEL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000)
    parser.add_argument("--workers", default="1,2", help="Worker counts, comma-separated.")
    parser.add_argument("--partition-rows", type=int, default=500_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pynomaly-bench-scaleout-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["PYNOMALY_HOME"] = str(workdir / "home")
    for var in ("PYNOMALY_TRACKING_URI", "PYNOMALY_ARTIFACT_ROOT", "PYNOMALY_RESULTS_DB_URL"):
        os.environ.pop(var, None)
    from distributed import LocalCluster

    from flows.score_batch import load_batch, score_batch
    from flows.train_detector import train_detector
    from tasks.scaleout import local_cluster_kwargs

    rng = np.random.default_rng(0)
    train = workdir / "train.csv"
    pd.DataFrame(rng.normal(size=(2000, len(COLUMNS))), columns=COLUMNS).to_csv(train, index=False)
    batch = write_batch(workdir / "batch.parquet", args.rows, seed=1)
    train_detector(str(train), MODEL, detector="iforest")

    figures: dict[str, dict[str, float]] = {}
    with Timed() as timed:
        result = score_batch(str(batch), MODEL, batch_id="one-process")
    figures["one process (no Dask)"] = {"end_to_end_s": timed.wall, "end_to_end_cores": timed.cores}
    assert result["rows_stored"] == args.rows, result
    manifest = load_batch(str(batch), MODEL)  # the stored snapshot (already there: same hash)
    for n in counts:
        with LocalCluster(**local_cluster_kwargs(n)) as cluster:
            address = cluster.scheduler_address
            runs = {}
            # First on new workers (they import the libraries and load the model), then again
            # on the same workers, as on a standing cluster: the end-to-end figure.
            for run in ("new_workers", "end_to_end"):
                with Timed() as timed:
                    scored = score_batch(
                        str(batch),
                        MODEL,
                        batch_id=f"dask-{n}-{run}",
                        dask=address,
                        partition_rows=args.partition_rows,
                    )
                runs |= {f"{run}_s": timed.wall, f"{run}_cores": timed.cores}
                assert scored["rows_stored"] == args.rows, scored
            phase, rows = scoring_phase(address, manifest, args.partition_rows)
            assert rows == args.rows
        figures[f"{n} Dask worker(s)"] = {
            **runs,
            "scoring_phase_s": phase.wall,
            "scoring_phase_cores": phase.cores,
        }

    write_s = write_alone("one-process")
    for f in figures.values():
        for key in [k for k in f if k.endswith("_s")]:
            f[key.removesuffix("_s") + "_rows_per_s"] = args.rows / f[key]
    ratios, ceilings = {}, {}
    cpus = os.cpu_count() or 1
    if 1 in counts and 2 in counts:
        one, two = figures["1 Dask worker(s)"], figures["2 Dask worker(s)"]
        for key in ("end_to_end", "scoring_phase"):
            ratios[key] = two[key + "_rows_per_s"] / one[key + "_rows_per_s"]
            # The 2-worker run does at least the 1-worker run's CPU work, and can keep at most
            # every core busy: its speed-up cannot pass cpus / (cores the 1-worker run kept busy).
            ceilings[key] = cpus / one[key + "_cores"]
    report = {
        "rows": args.rows,
        "partition_rows": args.partition_rows,
        "cpus": os.cpu_count(),
        "figures": figures,
        "ratio_2_vs_1": ratios,
        "ceiling_2_vs_1_on_these_cpus": ceilings,
        "write_alone_s": write_s,
        "target": TARGET,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\nScoring {args.rows:,} x {len(COLUMNS)} rows, partitions of {args.partition_rows:,}")
    print(f"({os.cpu_count()} CPUs; LocalCluster worker processes with one thread each)\n")
    print("each cell: seconds, rows per second, cores kept busy on average (all processes)\n")
    heads = ("end to end", "scoring phase", "first run, new workers")
    print(f"{'':24}" + "".join(f"{h:>30}" for h in heads))
    for name, f in figures.items():
        cells = [
            f"{f[k + '_s']:6.1f} s {f[k + '_rows_per_s']:9,.0f}/s {f[k + '_cores']:4.2f}"
            if k + "_s" in f
            else ""
            for k in ("end_to_end", "scoring_phase", "new_workers")
        ]
        print(f"{name:24}" + "".join(f"{c:>30}" for c in cells))
    for key, ratio in ratios.items():
        verdict = "meets" if ratio >= TARGET else "misses"
        print(
            f"2 vs 1 workers, {key.replace('_', ' ')}: {ratio:.2f}x ({verdict} >= {TARGET}x); "
            f"the 1-worker run kept {figures['1 Dask worker(s)'][key + '_cores']:.2f} of "
            f"{cpus} cores busy, so {ceilings[key]:.2f}x is the most 2 workers can reach here"
        )
    # The batch's rows go into the results DB in one transaction on one connection, whatever the
    # number of workers: that write is a floor under every run's end-to-end time.
    print(f"the one-transaction write alone: {write_s:.1f} s", end="")
    if "2 Dask worker(s)" in figures:
        two = figures["2 Dask worker(s)"]["end_to_end_s"]
        print(f" ({write_s / two:.0%} of the 2-worker run)")
    else:
        print()


if __name__ == "__main__":
    main()
