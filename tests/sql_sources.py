"""A SQL source database for the --query tests, the same on SQLite (tests/unit/test_ingest.py)
and PostgreSQL (tests/integration/test_sql_sources_postgres.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

# Table name -> rows. The odd names broke the old `SELECT * FROM "{query}"` (a quote inside)
# or read as SQL; the last one is an injection attempt that must stay a name.
TABLES = {
    "victim": 7,
    'we"ird-tab;le': 5,
    "Readings Today": 4,
    'victim"; DROP TABLE victim; --': 3,
}

# Statements that would change the source: each must be refused, naming the query.
WRITES = [
    "DROP TABLE victim",
    "DELETE FROM victim",
    "INSERT INTO victim (x, kind) VALUES (99, 'z')",
    "UPDATE victim SET x = 0",
    "CREATE TABLE extra (x REAL)",
    "SELECT 1; DROP TABLE victim",
]


def build_source(url: str) -> None:
    """Create every table of TABLES with its rows (x = 0..n-1, kind = a/b)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    for name, rows in TABLES.items():
        x = np.arange(rows, dtype=float)
        pd.DataFrame({"x": x, "kind": ["ab"[i % 2] for i in range(rows)]}).to_sql(
            name, engine, index=False
        )
    engine.dispose()


def source_state(url: str) -> dict[str, list[tuple]]:
    """Every table of the source with its rows, in order: what a refused query must not change."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        state = {
            name: [
                tuple(r)
                for r in conn.execute(sa.select(sa.literal_column("*")).select_from(sa.table(name)))
            ]
            for name in sorted(sa.inspect(conn).get_table_names())
        }
    engine.dispose()
    return state
