"""Shared fixtures. Each area keeps its fixtures in a tests/fixtures_*.py plugin module."""

import os

# No machine of this project reaches a model hub: make any accidental hub call fail fast.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest_plugins = ["fixtures_diffusion", "fixtures_nodes", "fixtures_families", "fixtures_comfy", "fixtures_llm",
                  "fixtures_metrics", "fixtures_loaders"]
