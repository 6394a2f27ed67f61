"""Rebuild the shipped meta-model (tasks/metamodel.json.gz) from ../shared/datasets.

    python benchmarks/build_metamodel.py --data-dir ../shared/datasets [--cache DIR] [--jobs 2]

It completes the meta-corpus (benchmarks/metacorpus.py: the 21 tabular ADBench sets, the 22
embedding tasks and synthetic tasks made from the tabular sets' normal rows), measures every
configuration of tasks/search_space.META_CONFIGS on every task, and fits the meta-model on all of
them. It reads nothing but the datasets folder. benchmarks/adbench.py --lodo re-fits the same
meta-model without the dataset under test, for every dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.metacorpus import (  # noqa: E402
    DEFAULT_CACHE,
    build_task,
    corpus_tasks,
    load_corpus,
    performance_matrix,
)
from tasks.metaselect import META_MODEL_PATH, save_meta_model, train_meta_model  # noqa: E402
from tasks.search_space import META_CONFIGS  # noqa: E402


def corpus_digest(data_dir: Path) -> str:
    """sha256 over the dataset files the corpus is made from (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("*/*.npz")):
        digest.update(path.relative_to(data_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    """Complete the corpus, fit the meta-model on all of it, write tasks/metamodel.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="../shared/datasets")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=META_MODEL_PATH)
    args = parser.parse_args()
    from joblib import Parallel, delayed

    args.cache.mkdir(parents=True, exist_ok=True)
    tasks = corpus_tasks(args.data_dir)
    Parallel(n_jobs=args.jobs)(delayed(build_task)(t, args.cache) for t in tasks)
    keys = {t.key for t in tasks}
    corpus = [t for t in load_corpus(args.cache) if t["key"] in keys]
    configs = list(META_CONFIGS)
    performance = performance_matrix(corpus, configs)
    kinds: dict[str, int] = {}
    for task in corpus:
        kinds[task["kind"]] = kinds.get(task["kind"], 0) + 1
    model = train_meta_model(
        [t["meta_features"] for t in corpus],
        performance,
        configs,
        info={
            "tasks": len(corpus),
            "tasks_by_kind": kinds,
            "datasets_sha256": corpus_digest(args.data_dir),
            "built_by": "benchmarks/build_metamodel.py",
        },
    )
    save_meta_model(model, args.out)
    size = args.out.stat().st_size
    print(f"{args.out}: {len(corpus)} tasks, {len(configs)} configurations, {size:,} bytes")


if __name__ == "__main__":
    main()
