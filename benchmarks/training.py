"""`pynomaly train` on N x 20 labelled Parquet sets: seconds, peak RSS and hold-out quality as the
data grows past the training row cap, against training on every row.

Training takes at most PYNOMALY_TRAIN_MAX_ROWS rows (1,000,000 by default): beyond it, a sample
stratified by the label column, read chunk by chunk. For each size (1M, 4M, 16M rows by default)
`python -m deployments.cli train SET --model bench-train-N --label-column y --detector iforest
--json` runs in-process on a set of standard-normal floats where 2% of the rows (y = 1) are
shifted by 0.75 in every column; at the middle size it also runs with the cap as large as the
set: training on every row, as before the cap. Each run has a fresh home (its own MLflow, store
and results DB), so every model is a first version and nothing is shared between runs.

Printed side by side: seconds, peak RSS (the command's process tree, psutil), rows fitted, the
hold-out's ROC-AUC and average precision (30% of the rows trained on, stratified); and the
goals: peak RSS at the largest size <= 1.2x the cap's size, hold-out ROC-AUC of the sampled run
within 0.01 of the every-row run. Sets are generated row group by row group, never whole in
memory. Run it alone: the seconds are wall-clock.

Run: `python benchmarks/training.py [--rows 1000000,4000000,16000000] [--workdir DIR] [--json]`.
A small smoke run: `--rows 2000,8000,32000 --max-rows 2000`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from scoring import COLUMNS, PYNOMALY, ROW_GROUP, print_goals, run_tree  # noqa: E402

SHARE = 0.02  # anomalies
SHIFT = 0.75  # added to every column of an anomaly


def write_labelled_set(path: Path, rows: int, seed: int) -> Path:
    """N x 20 standard-normal floats and a label y: SHARE of the rows shifted by SHIFT."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    schema = pa.schema([*((c, pa.float64()) for c in COLUMNS), ("y", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            y = (rng.random(n) < SHARE).astype(np.int64)
            data = rng.normal(size=(n, len(COLUMNS))) + SHIFT * y[:, None]
            columns = {c: data[:, i] for i, c in enumerate(COLUMNS)}
            writer.write_table(pa.table({**columns, "y": y}, schema))
    return path


def train(data: Path, rows: int, max_rows: int, workdir: Path) -> dict:
    """One in-process `train` in a fresh home with the given row cap: its figures."""
    home = workdir / f"home-{rows}-{max_rows}"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "PYNOMALY_HOME": str(home), "PYTHONPATH": str(REPO)}
    for var in ("PYNOMALY_TRACKING_URI", "PYNOMALY_ARTIFACT_ROOT", "PYNOMALY_RESULTS_DB_URL"):
        env.pop(var, None)
    # In-process; the Prefect API in the background (not a child, so not in the peak RSS),
    # stopped after the run.
    env |= {"PYNOMALY_TRAIN_MAX_ROWS": str(max_rows), "PYNOMALY_WARM": "false"}
    command = [sys.executable, "-m", "deployments.cli", "train", str(data)]
    command += ["--model", f"bench-train-{rows}", "--label-column", "y", "--detector", "iforest"]
    try:
        ran = run_tree([*command, "--json"], env)
    finally:
        subprocess.run([PYNOMALY, "services", "down"], env=env, capture_output=True, check=False)
    metrics = ran["result"]["metrics"]
    return {
        "rows": rows,
        "max_rows": max_rows,
        "sample_rows": ran["result"].get("sample_rows"),
        "wall_s": ran["wall_s"],
        "peak_rss_gb": ran["peak_rss_gb"],
        "fit_rows": int(metrics["fit_rows"]),
        "roc_auc": metrics["roc_auc"],
        "average_precision": metrics["average_precision"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,4000000,16000000")
    parser.add_argument("--max-rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.rows.split(","))
    every_row_size = sizes[len(sizes) // 2]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pynomaly-bench-training-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    for n in sizes:
        data = write_labelled_set(workdir / f"train-{n}.parquet", n, seed=n)
        runs.append({"check": "capped", **train(data, n, args.max_rows, workdir)})
        if n == every_row_size and n > args.max_rows:
            runs.append({"check": "every row", **train(data, n, n, workdir)})

    capped = [r for r in runs if r["check"] == "capped"]
    at_cap = next((r for r in capped if r["rows"] == args.max_rows), capped[0])
    every = next((r for r in runs if r["check"] == "every row"), None)
    sampled = next((r for r in capped if r["rows"] == every_row_size), None)
    goals = {
        f"peak RSS at the largest size <= 1.2x at {at_cap['rows']:,} rows": (
            capped[-1]["peak_rss_gb"] <= 1.2 * at_cap["peak_rss_gb"]
        )
    }
    if every and sampled:
        goals["hold-out ROC-AUC of the sampled run within 0.01 of every row"] = (
            abs(sampled["roc_auc"] - every["roc_auc"]) <= 0.01
        )
    if args.json:
        print(json.dumps({"runs": runs, "goals": goals}, indent=2))
        return
    print(
        f"\n`pynomaly train --detector iforest --label-column y` in-process, {len(COLUMNS)} "
        f"columns, {SHARE:.0%} anomalies shifted by {SHIFT}; row cap {args.max_rows:,}\n"
    )
    head = f"{'rows':>12} {'check':>10} {'fitted':>10} {'seconds':>8} {'peak RSS':>9}"
    print(f"{head} {'hold-out ROC-AUC':>17} {'AP':>6}")
    for r in runs:
        print(
            f"{r['rows']:>12,} {r['check']:>10} {r['fit_rows']:>10,} {r['wall_s']:>8.1f} "
            f"{r['peak_rss_gb']:>6.2f} GB {r['roc_auc']:>17.4f} {r['average_precision']:>6.3f}"
        )
    if every and sampled:
        print(
            f"\nat {every['rows']:,} rows, sampled vs every row: {sampled['wall_s']:.1f} s vs "
            f"{every['wall_s']:.1f} s, {sampled['peak_rss_gb']:.2f} vs "
            f"{every['peak_rss_gb']:.2f} GB, ROC-AUC {sampled['roc_auc']:.4f} vs "
            f"{every['roc_auc']:.4f}"
        )
    print_goals(goals)


if __name__ == "__main__":
    main()
