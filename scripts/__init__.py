"""Checkout scripts: run the Python ones from the repository root as modules, e.g. ``python -m scripts.workflow_sync``."""
