"""The errors `moc bench` turns into exit status 2: bad benchmark input, named with its option and fix."""

from __future__ import annotations


class EfficiencyError(ValueError):
    """Bad efficiency-benchmark input (unknown method or model); the message names the option and the fix."""


class AccuracyError(ValueError):
    """Bad accuracy-study input; the message names the option and the fix."""
