"""Fixed cost per command: `pynomaly train` + `pynomaly score` against one plain script.

Embedded defaults in a temporary home (nothing configured but PYNOMALY_HOME), commands run as a
new user runs them (`pynomaly ...` processes, wall time). Side by side in one run:

- cli: `pynomaly train` (ROWS x COLS, iforest) then `pynomaly score` (SCORE_ROWS rows), repeated;
  the first pair starts the background Prefect API, later pairs reuse it;
- plain: one Python process doing the same work directly (PyOD fit, MLflow log + register +
  alias on SQLite, load by alias, score, write the scores to SQLite), repeated;
- with `--ephemeral`, the CLI pairs also under PYNOMALY_PREFECT_MODE=ephemeral (a Prefect API
  started and stopped by every command: the behaviour before the background server).

Run: `python benchmarks/overhead.py [--rows 2000] [--cols 5] [--score-rows 300] [--repeats 3]
[--ephemeral] [--json]`. Targets (issue 12): train + score <= 1.5x the plain script; `pynomaly
score` of 300 rows <= 5 s from the second command on. Medians over the later repeats; the
sides run in turn, repeat by repeat, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PYNOMALY = str(Path(sys.executable).with_name("pynomaly"))
TRAIN_SCORE_TARGET = 1.5
SCORE_SECONDS_TARGET = 5.0


def plain(home: Path, train_csv: Path, score_csv: Path) -> None:
    """The same work without the platform: fit, log, register, alias, load, score, write."""
    import sqlite3

    import mlflow
    from mlflow import MlflowClient
    from pyod.models.iforest import IForest

    uri = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("plain")
    train = pd.read_csv(train_csv)
    with mlflow.start_run():
        detector = IForest(random_state=0).fit(train)
        mlflow.log_metric("threshold", float(detector.threshold_))
        info = mlflow.sklearn.log_model(
            detector,
            name="model",
            registered_model_name="plain",
            serialization_format="cloudpickle",  # as the platform's pyfunc model is stored
        )
    MlflowClient(uri).set_registered_model_alias("plain", "champion", info.registered_model_version)
    model = mlflow.sklearn.load_model("models:/plain@champion")
    batch = pd.read_csv(score_csv)
    scores = model.decision_function(batch)
    with sqlite3.connect(home / "results.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS results (row INTEGER, score REAL, anomaly INTEGER)")
        db.executemany(
            "INSERT INTO results VALUES (?, ?, ?)",
            [(i, float(s), int(s > detector.threshold_)) for i, s in enumerate(scores)],
        )


def timed(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return took


def interleaved(
    root: Path, train_csv: Path, score_csv: Path, repeats: int, modes: list[str]
) -> tuple[dict[str, list[tuple[float, float]]], list[float]]:
    """Per mode, (train seconds, score seconds) of `repeats` train + score pairs in one fresh
    home, and the plain script's seconds: run in turn, repeat by repeat, so the load of the
    machine weighs on every side alike."""
    envs = {}
    for mode in modes:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYNOMALY_", "PREFECT_"))}
        envs[mode] = env | {
            "PYNOMALY_HOME": str(root / f"home-{mode}"),
            "PYNOMALY_PREFECT_MODE": mode,
        }
    pairs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    script = []
    try:
        for i in range(repeats):
            for mode, env in envs.items():
                model = f"bench{i}"
                train = timed([PYNOMALY, "train", str(train_csv), "--model", model, "--json"], env)
                score = timed([PYNOMALY, "score", str(score_csv), "--model", model, "--json"], env)
                pairs[mode].append((train, score))
            home = root / f"plain-{i}"
            home.mkdir()
            command = [
                sys.executable,
                __file__,
                "--plain",
                str(home),
                str(train_csv),
                str(score_csv),
            ]
            script.append(timed(command, dict(os.environ)))
    finally:
        for env in envs.values():
            subprocess.run(
                [PYNOMALY, "services", "down"], env=env, capture_output=True, check=False
            )
    return pairs, script


def later(values: list[float]) -> float:
    """Median of the second-and-later runs (the first alone if there is one)."""
    return statistics.median(values[1:] or values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--cols", type=int, default=5)
    parser.add_argument("--score-rows", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="Train + score pairs per mode.")
    parser.add_argument("--ephemeral", action="store_true", help="Also time the ephemeral mode.")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plain", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        plain(*(Path(p) for p in args.plain))
        return

    root = Path(tempfile.mkdtemp(prefix="pynomaly-overhead-"))
    try:
        rng = np.random.default_rng(0)
        columns = [f"f{i}" for i in range(args.cols)]
        train_csv, score_csv = root / "train.csv", root / "score.csv"
        pd.DataFrame(rng.normal(size=(args.rows, args.cols)), columns=columns).to_csv(
            train_csv, index=False
        )
        pd.DataFrame(rng.normal(size=(args.score_rows, args.cols)), columns=columns).to_csv(
            score_csv, index=False
        )
        modes = ["background", "ephemeral"] if args.ephemeral else ["background"]
        cli, script = interleaved(root, train_csv, score_csv, args.repeats, modes)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    plain_s = later(script)
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "sizes": {"rows": args.rows, "cols": args.cols, "score_rows": args.score_rows},
        "plain_seconds": script,
        "modes": {},
    }
    for mode, pairs in cli.items():
        trains, scores = [t for t, _ in pairs], [s for _, s in pairs]
        ratio = (later(trains) + later(scores)) / plain_s
        report["modes"][mode] = {
            "train_seconds": trains,
            "score_seconds": scores,
            "first_pair_seconds": trains[0] + scores[0],
            "later_pair_seconds": later(trains) + later(scores),
            "ratio_to_plain": ratio,
            "train_score_target_met": ratio <= TRAIN_SCORE_TARGET,
            "score_target_met": later(scores) <= SCORE_SECONDS_TARGET,
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['machine']}; sizes {report['sizes']}; {args.repeats} repeats")
    print(f"plain script (fit, log, register, alias, load, score, write): {plain_s:.1f} s")
    for mode, r in report["modes"].items():
        fmt = ", ".join
        print(
            f"\n{mode}: train {fmt(f'{t:.1f}' for t in r['train_seconds'])} s; "
            f"score {fmt(f'{s:.1f}' for s in r['score_seconds'])} s"
        )
        print(
            f"  first train + score {r['first_pair_seconds']:.1f} s; later "
            f"{r['later_pair_seconds']:.1f} s = {r['ratio_to_plain']:.2f}x the plain script "
            f"(target <= {TRAIN_SCORE_TARGET}x: "
            f"{'met' if r['train_score_target_met'] else 'NOT met'})"
        )
        print(
            f"  score of {args.score_rows} rows, second command on: "
            f"{later(r['score_seconds']):.1f} s (target <= {SCORE_SECONDS_TARGET} s: "
            f"{'met' if r['score_target_met'] else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
