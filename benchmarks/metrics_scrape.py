"""What a Prometheus scrape costs the results database: batch summaries vs scanning every row.

Writes N detection rows in B batches through `replace_batch` (the scoring path), then times
`read_results` side by side, in one run, on the same rows:
- `summaries`: the exporter's query on detection_batches (one row per batch);
- `row_scan`: the same query on detection_results grouped per batch, what a results DB without
  detection_batches costs (and what the exporter did before the summaries existed).
Run: `python benchmarks/metrics_scrape.py [--rows N] [--batches B] [--url SQLALCHEMY_URL]
[--repeats R]`; the default is an embedded SQLite file. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd


def fill(engine, rows: int, batches: int) -> float:
    """`rows` scored rows in `batches` batches over the last 10 days; returns seconds taken."""
    from tasks.results import replace_batch

    rng = np.random.default_rng(0)
    per_batch = rows // batches
    now = datetime.now(UTC)
    started = time.perf_counter()
    for b in range(batches):
        scores = rng.normal(size=per_batch)
        frame = pd.DataFrame(
            {"row_index": np.arange(per_batch), "score": scores, "is_anomaly": scores > 2.0}
        )
        replace_batch(
            engine,
            f"batch-{b:05d}",
            [frame],
            model_name=f"model-{b % 3}",
            model_version=1 + b % 2,
            scored_at=now - timedelta(hours=240 * b / batches),
        )
    return time.perf_counter() - started


def timed(read, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batches", type=int, default=1_000)
    parser.add_argument("--url", help="results DB URL (default: a SQLite file in a temp folder)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import sqlalchemy as sa

    from deployments import metrics
    from tasks.results import detection_batches, results_engine

    with tempfile.TemporaryDirectory(prefix="pynomaly-bench-metrics-") as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'results.db'}"
        engine = results_engine(url)
        fill_s = fill(engine, args.rows, args.batches)
        now = datetime.now(UTC)

        summaries_s, by_summary = timed(lambda: metrics.read_results(engine, now), args.repeats)
        # The same exporter code on a DB without the summary table: it groups every row.
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {detection_batches.name} RENAME TO kept_batches"))
        try:
            scan_s, by_scan = timed(lambda: metrics.read_results(engine, now), args.repeats)
        finally:
            with engine.begin() as conn:
                conn.execute(
                    sa.text(f"ALTER TABLE kept_batches RENAME TO {detection_batches.name}")
                )
        assert by_summary == by_scan, "both paths must report the same figures"
        engine.dispose()

    print(
        json.dumps(
            {
                "database": sa.engine.make_url(url).get_backend_name(),
                "rows": args.rows,
                "batches": args.batches,
                "fill_s": round(fill_s, 2),
                "scrape_summaries_ms": round(summaries_s * 1000, 2),
                "scrape_row_scan_ms": round(scan_s * 1000, 2),
                "speedup": round(scan_s / summaries_s, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
