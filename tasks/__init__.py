"""Plain pipeline functions, no Prefect import; `tasks.steps` wraps them as Prefect tasks."""
