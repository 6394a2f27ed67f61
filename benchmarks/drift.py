"""`pynomaly drift` of N x 20 Parquet batches: seconds and peak RSS as the batch grows, and the
sampled check against the whole-data check on the same batch.

A drift check compares a uniform sample of each side (PYNOMALY_DRIFT_SAMPLE_ROWS, 100,000 rows by
default, drawn while the snapshot is read chunk by chunk) instead of loading both whole. For each
size (1M, 4M, 16M rows by default) the batch (standard-normal floats, column f00 shifted by 0.3
standard deviations: a drift Evidently should find in that column only) is checked with
`python -m deployments.cli drift BATCH --model bench --no-retrain --json` in-process, against an
IForest trained on 2,000 rows of the unshifted distribution (benchmarks/scoring.py's `train`).
At the smallest size the same command also runs with the sample as large as the batch: the
whole-data check, as before sampling.

Printed side by side: seconds, peak RSS (the command's process tree, psutil), the verdict, the
drifted columns and score PSI of each run; the largest difference of a per-column drift score
between the sampled and the whole-data check; and the goals: same verdict and drifted columns as
the whole-data check, peak RSS at the largest size <= 1.2x the smallest. Batches are generated
row group by row group, never whole in memory. Run it alone: the seconds are wall-clock.

Run: `python benchmarks/drift.py [--rows 1000000,4000000,16000000] [--workdir DIR] [--json]`.
A small smoke run: `--rows 20000,80000 --sample-rows 5000`.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from scoring import COLUMNS, MODEL, PYNOMALY, print_goals, run_tree, train, write_batch  # noqa: E402

SHIFT = 0.3  # standard deviations added to f00: drift in one column of 20


def check(batch: Path, env: dict[str, str], sample_rows: int) -> dict:
    """One in-process `drift` command with the given sample size: its figures and result."""
    env = {**env, "PYNOMALY_DRIFT_SAMPLE_ROWS": str(sample_rows)}
    command = [sys.executable, "-m", "deployments.cli", "drift", str(batch), "--model", MODEL]
    ran = run_tree([*command, "--no-retrain", "--json"], env)
    result = ran["result"]
    return {
        "sample_rows": sample_rows,
        "wall_s": ran["wall_s"],
        "peak_rss_gb": ran["peak_rss_gb"],
        "drift_detected": result["drift_detected"],
        "drifted": sorted(c for c, r in result["columns"].items() if r["drifted"]),
        "column_scores": {c: r["score"] for c, r in result["columns"].items()},
        "score_psi": result["score_drift"]["psi"],
        "compared": (result["reference_sample_rows"], result["current_sample_rows"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,4000000,16000000")
    parser.add_argument("--sample-rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.rows.split(","))

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pynomaly-bench-drift-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "PYNOMALY_HOME": str(home), "PYTHONPATH": str(REPO)}
    for var in ("PYNOMALY_TRACKING_URI", "PYNOMALY_ARTIFACT_ROOT", "PYNOMALY_RESULTS_DB_URL"):
        env.pop(var, None)
    runs: list[dict] = []
    try:
        train(env, workdir)
        for n in sizes:
            batch = write_batch(workdir / f"drift-{n}.parquet", n, seed=n, shift=SHIFT)
            runs.append({"rows": n, "check": "sampled", **check(batch, env, args.sample_rows)})
            if n == sizes[0]:
                runs.append({"rows": n, "check": "whole data", **check(batch, env, n)})
    finally:
        subprocess.run([PYNOMALY, "services", "down"], env=env, capture_output=True, check=False)

    sampled = [r for r in runs if r["check"] == "sampled"]
    whole = next(r for r in runs if r["check"] == "whole data")
    first = sampled[0]
    score_gap = max(abs(first["column_scores"][c] - s) for c, s in whole["column_scores"].items())
    goals = {
        "same verdict and drifted columns as the whole-data check": (
            first["drift_detected"] == whole["drift_detected"]
            and first["drifted"] == whole["drifted"]
        ),
        "peak RSS at the largest size <= 1.2x the smallest": (
            sampled[-1]["peak_rss_gb"] <= 1.2 * first["peak_rss_gb"]
        ),
    }
    if args.json:
        report = {"runs": runs, "largest_column_score_gap": score_gap, "goals": goals}
        print(json.dumps(report, indent=2, default=str))
        return
    print(f"\n`pynomaly drift` in-process, {len(COLUMNS)} columns, f00 shifted by {SHIFT} sd\n")
    print(f"{'rows':>12} {'check':>11} {'compared':>16} {'seconds':>8} {'peak RSS':>9}  verdict")
    for r in runs:
        verdict = "drift" if r["drift_detected"] else "no drift"
        print(
            f"{r['rows']:>12,} {r['check']:>11} {r['compared'][1]:>16,} {r['wall_s']:>8.1f} "
            f"{r['peak_rss_gb']:>7.2f} GB  {verdict}, drifted {','.join(r['drifted']) or '-'}, "
            f"score PSI {r['score_psi']:.3f}"
        )
    print(
        f"\nat {first['rows']:,} rows, sampled vs whole data: {first['wall_s']:.1f} s vs "
        f"{whole['wall_s']:.1f} s ({whole['wall_s'] / first['wall_s']:.1f}x faster), "
        f"{first['peak_rss_gb']:.2f} vs {whole['peak_rss_gb']:.2f} GB; largest per-column "
        f"drift score difference {score_gap:.4f}"
    )
    print(
        f"peak RSS {sampled[-1]['rows']:,} / {first['rows']:,} rows: "
        f"{sampled[-1]['peak_rss_gb'] / first['peak_rss_gb']:.2f}x"
    )
    print_goals(goals)


if __name__ == "__main__":
    main()
