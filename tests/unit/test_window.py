"""A retrain window beyond the row cap: sampled in proportion, every analyst-labelled row kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.ingest import snapshot_source
from tasks.store import ArtifactStore
from tasks.window import combine_window


def test_a_window_beyond_the_cap_is_sampled_per_snapshot_with_every_labelled_row(
    tmp_path: Path,
) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    parts = []
    for name, rows in (("old", 3_000), ("new", 1_000)):
        source = tmp_path / f"{name}.csv"
        frame = pd.DataFrame({"row": np.arange(rows), "part": int(name == "new")})
        frame.to_csv(source, index=False)
        manifest = snapshot_source(str(source), "m-batches", store)
        parts.append(f"{manifest.dataset}/{manifest.sha256}")
    # Analysts labelled rows of the new batch: 6 anomalies and 4 normal rows.
    labelled_rows = np.array([3, 50, 101, 402, 650, 777, 800, 900, 950, 999])
    feedback = pd.DataFrame(
        {
            "row_index": labelled_rows,
            "label": [1] * 6 + [0] * 4,
            "snapshot": parts[1],
        }
    )

    path, label, rows, used, total = combine_window(
        store, parts, None, str(tmp_path), feedback, max_rows=400, chunk_rows=256
    )
    combined = pd.read_parquet(path)
    assert (total, rows, len(combined)) == (4_000, 400, 400)
    # 3:1 from the old and the new batch, as in the data
    assert (combined["part"] == 1).sum() == 100 and (combined["part"] == 0).sum() == 300
    new = combined[combined["part"] == 1]
    assert set(labelled_rows) <= set(new["row"])  # every labelled row is in the sample
    assert new.set_index("row").loc[labelled_rows, label].tolist() == [1] * 6 + [0] * 4
    assert combined[label].sum() == 6  # the rest presumed normal
    assert used["feedback_rows"] == 10

    # Under the cap the window is whole, as before.
    _, _, rows, _, total = combine_window(store, parts, None, str(tmp_path), None, max_rows=4_000)
    assert rows == total == 4_000
