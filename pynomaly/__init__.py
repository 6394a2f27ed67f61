"""The bottom layer: settings and the input-error type, importable by every layer."""
