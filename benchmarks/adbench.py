"""ADBench benchmark: every catalog detector vs AutoML without labels and with train labels.

Protocol (ADBench, Han et al. 2022): datasets above 10,000 rows are subsampled to 10,000, below
1,000 rows resampled (with replacement) to 1,000; 70/30 stratified split; MinMax scaling fitted on
the train part; detectors fit on the train part; ROC-AUC and average precision on the test part.
The test labels never reach the search: AutoML gets the train rows (and, in the labelled mode,
the train labels) only.

    python benchmarks/adbench.py --data-dir /work/shared/datasets/adbench [--json]
        [--datasets cardio,WBC] [--seeds 3] [--time-budget 60]
    python benchmarks/adbench.py --data-dir ... --workers-scaling --storage postgresql://...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.automl import fit_best_detector  # noqa: E402
from tasks.detectors import CATALOG, make_detector  # noqa: E402

MIN_ROWS, MAX_ROWS = 1_000, 10_000
TEST_SHARE = 0.3
UNLABELLED, LABELLED = "automl", "automl+labels"
# Our catalog names -> the column names of published_rocauc.csv / published_aucpr.csv.
PUBLISHED_NAMES = {
    "iforest": "IForest",
    "ecod": "ECOD",
    "copod": "COPOD",
    "hbos": "HBOS",
    "knn": "KNN",
    "lof": "LOF",
    "ocsvm": "OCSVM",
    "pca": "PCA",
    "cblof": "CBLOF",
    "loda": "LODA",
}


def load_dataset(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """X and y of one ADBench .npz file."""
    with np.load(path, allow_pickle=True) as data:
        return np.asarray(data["X"], dtype=float), np.asarray(data["y"], dtype=int)


def split_dataset(
    X: np.ndarray, y: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ADBench's subsample/resample, 70/30 stratified split and train-fitted MinMax scaling."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.RandomState(seed)
    if len(y) > MAX_ROWS:
        rows = rng.choice(len(y), MAX_ROWS, replace=False)
        X, y = X[rows], y[rows]
    if len(y) < MIN_ROWS:
        rows = rng.choice(len(y), MIN_ROWS, replace=True)
        X, y = X[rows], y[rows]
    x_train, x_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SHARE, stratify=y, random_state=seed
    )
    scaler = MinMaxScaler().fit(x_train)
    return scaler.transform(x_train), scaler.transform(x_test), y_train, y_test


def measure(y_test: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """ROC-AUC and average precision on the test part."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = np.nan_to_num(np.asarray(scores, float), nan=0.0, posinf=1e12, neginf=-1e12)
    return {
        "roc_auc": float(roc_auc_score(y_test, scores)),
        "average_precision": float(average_precision_score(y_test, scores)),
    }


def run_methods(
    x_train: np.ndarray,
    x_test: np.ndarray,
    y_train: np.ndarray,
    y_test: np.ndarray,
    seed: int,
    time_budget: float,
) -> list[dict]:
    """Scores of every method on one split: catalog defaults, AutoML, AutoML with train labels."""
    rows = []
    contamination = float(np.clip(y_train.mean(), 0.001, 0.49))
    for name in CATALOG:
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                detector = make_detector(name, contamination=0.1, random_state=seed).fit(x_train)
            result = measure(y_test, detector.decision_function(x_test))
            error = None
        except Exception as exc:  # noqa: BLE001 - a failed fit counts as a random ranking
            result = {"roc_auc": 0.5, "average_precision": float(y_test.mean())}
            error = f"{type(exc).__name__}: {exc}"[:200]
        rows.append(
            {"method": name, **result, "seconds": time.perf_counter() - started, "error": error}
        )
    for method, labels in ((UNLABELLED, None), (LABELLED, y_train)):
        started = time.perf_counter()
        try:
            model = fit_best_detector(
                x_train,
                labels,
                time_budget_s=time_budget,
                random_state=seed,
                contamination=contamination,
            )
            result = measure(y_test, model.decision_function(x_test))
            chosen, trials, error = model.best_config_["detector"], len(model.leaderboard_), None
        except Exception as exc:  # noqa: BLE001 - reported, counted as a random ranking
            result = {"roc_auc": 0.5, "average_precision": float(y_test.mean())}
            chosen, trials, error = None, 0, f"{type(exc).__name__}: {exc}"[:200]
        rows.append(
            {
                "method": method,
                **result,
                "seconds": time.perf_counter() - started,
                "error": error,
                "chosen": chosen,
                "trials": trials,
            }
        )
    return rows


def published_table(data_dir: Path, metric_file: str) -> pd.DataFrame:
    """Published ADBench numbers, one row per dataset, our method names as columns."""
    table = pd.read_csv(data_dir / metric_file).set_index("dataset")
    table = table.rename(columns={v: k for k, v in PUBLISHED_NAMES.items()})
    return table[list(PUBLISHED_NAMES)]


def run_benchmark(
    data_dir: Path, datasets: list[str] | None, seeds: int, time_budget: float, log
) -> pd.DataFrame:
    """Every method on every dataset and seed, one row per (dataset, seed, method)."""
    summary = pd.read_csv(data_dir / "summary.csv")
    if datasets:
        unknown = set(datasets) - set(summary["name"])
        if unknown:
            raise SystemExit(f"unknown datasets: {', '.join(sorted(unknown))}")
        summary = summary[summary["name"].isin(datasets)]
    records = []
    for _, entry in summary.iterrows():
        X, y = load_dataset(data_dir / entry["file"])
        started = time.perf_counter()
        for seed in range(seeds):
            split = split_dataset(X, y, seed)
            for row in run_methods(*split, seed=seed, time_budget=time_budget):
                records.append({"dataset": entry["name"], "seed": seed, **row})
        log(f"{entry['name']}: {time.perf_counter() - started:.0f} s")
    return pd.DataFrame.from_records(records)


def report(results: pd.DataFrame, data_dir: Path) -> dict:
    """Per-dataset tables, means, mean ranks and published figures, as plain data."""
    published = {
        "roc_auc": published_table(data_dir, "published_rocauc.csv"),
        "average_precision": published_table(data_dir, "published_aucpr.csv"),
    }
    out: dict = {}
    for metric in ("roc_auc", "average_precision"):
        table = results.pivot_table(
            index="dataset", columns="method", values=metric, aggfunc="mean"
        )
        methods = list(CATALOG) + [UNLABELLED, LABELLED]
        table = table[[m for m in methods if m in table.columns]]
        ranks = table.rank(axis=1, ascending=False).mean()
        pub = published[metric].reindex(table.index)
        out[metric] = {
            "per_dataset": table.round(4).to_dict(orient="index"),
            "mean": table.mean().round(4).to_dict(),
            "mean_rank": ranks.round(2).to_dict(),
            "published_mean": pub.mean(numeric_only=True).round(4).to_dict(),
            "published_per_dataset": pub.round(4).to_dict(orient="index"),
        }
    automl = results[results["method"].isin([UNLABELLED, LABELLED])]
    seconds = automl.pivot_table(
        index="dataset", columns="method", values="seconds", aggfunc="mean"
    )
    out["automl_seconds_per_run"] = seconds.round(1).to_dict(orient="index")
    out["automl_seconds_max"] = automl.groupby("method")["seconds"].max().round(1).to_dict()
    per_dataset = results.groupby("dataset")["seconds"].sum() / results["seed"].nunique()
    out["all_methods_seconds_per_dataset"] = per_dataset.round(1).to_dict()
    out["chosen"] = (
        automl.groupby(["method", "chosen"]).size().rename("runs").reset_index().to_dict("records")
    )
    out["failed_fits"] = results[results["error"].notna()][
        ["dataset", "seed", "method", "error"]
    ].to_dict("records")
    return out


def print_report(summary: dict) -> None:
    """Human-readable tables of a report."""
    for metric in ("roc_auc", "average_precision"):
        part = summary[metric]
        table = pd.DataFrame(part["per_dataset"]).T
        pub = pd.DataFrame(part["published_per_dataset"]).T
        table["pub_IForest"] = pub.get("iforest")
        table["pub_best"] = pub.max(axis=1, numeric_only=True)
        print(f"\n== test {metric} per dataset (mean of seeds; pub_ = published ADBench) ==")
        print(table.round(3).to_string())
        print(f"\n== mean test {metric} (ours | published) and mean rank ==")
        lines = pd.DataFrame(
            {
                "mean": part["mean"],
                "published": part["published_mean"],
                "mean_rank": part["mean_rank"],
            }
        )
        print(lines.sort_values("mean_rank").to_string())
    print("\n== AutoML seconds per run (mean of seeds) ==")
    print(pd.DataFrame(summary["automl_seconds_per_run"]).T.to_string())
    print("max seconds per run:", summary["automl_seconds_max"])
    print("\n== chosen configurations ==")
    print(pd.DataFrame(summary["chosen"]).to_string(index=False))
    if summary["failed_fits"]:
        print("\n== failed fits (counted as random ranking) ==")
        print(pd.DataFrame(summary["failed_fits"]).to_string(index=False))


def workers_scaling(data_dir: Path, dataset: str, storage: str, time_budget: float) -> dict:
    """Trials per minute of 1 and 2 workers on a shared RDB study, side by side in one run."""
    summary = pd.read_csv(data_dir / "summary.csv").set_index("name")
    X, y = load_dataset(data_dir / summary.loc[dataset, "file"])
    x_train, _, y_train, _ = split_dataset(X, y, 0)
    out = {"dataset": dataset, "time_budget_s": time_budget}
    for n_workers in (1, 2):
        started = time.perf_counter()
        model = fit_best_detector(
            x_train,
            y_train,
            time_budget_s=time_budget,
            storage=storage,
            n_workers=n_workers,
            study_name=f"workers-scaling-{n_workers}-{int(time.time())}",
        )
        seconds = time.perf_counter() - started
        trials = [t for t in model.study_.trials if t.datetime_complete is not None]
        finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        # Throughput while the search ran (first trial start to last trial end), so process
        # start-up and the final refit do not blur the comparison.
        window = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
        out[f"{n_workers}_workers"] = {
            "trials_finished": len(finished),
            "trials_per_minute": round(len(finished) / (window.total_seconds() / 60), 1),
            "search_seconds": round(window.total_seconds(), 1),
            "seconds": round(seconds, 1),
            "trials_per_worker": model.leaderboard_["worker"].value_counts().to_dict(),
        }
    out["speedup"] = round(
        out["2_workers"]["trials_per_minute"] / out["1_workers"]["trials_per_minute"], 2
    )
    return out


def main() -> None:
    """Parse arguments and run the benchmark or the worker scaling measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--datasets", help="comma-separated dataset names (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--time-budget", type=float, default=60.0, help="seconds per AutoML run")
    parser.add_argument("--workers-scaling", action="store_true")
    parser.add_argument("--storage", help="PostgreSQL URL for --workers-scaling")
    parser.add_argument("--save", type=Path, help="also write the raw rows as CSV here")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.workers_scaling:
        if not args.storage:
            raise SystemExit("--workers-scaling needs --storage postgresql://...")
        dataset = (args.datasets or "cardio").split(",")[0]
        result = workers_scaling(args.data_dir, dataset, args.storage, args.time_budget)
        print(json.dumps(result, indent=2))
        return
    datasets = args.datasets.split(",") if args.datasets else None
    results = run_benchmark(args.data_dir, datasets, args.seeds, args.time_budget, log)
    if args.save:
        results.to_csv(args.save, index=False)
    summary = report(results, args.data_dir)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_report(summary)


if __name__ == "__main__":
    main()
