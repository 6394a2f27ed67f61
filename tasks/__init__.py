"""Plain pipeline functions (no Prefect import) and, in `tasks.steps`, their Prefect task wrappers."""
