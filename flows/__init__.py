"""Prefect flows, one per file, each reading top to bottom as a stage of the pipeline."""
