"""Plain functions over MLflow: the model wrapper, registration, aliases and lineage."""
