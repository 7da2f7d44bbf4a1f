"""What a test may do where a system package it needs is missing: skip, except under CI.

CI (``CI`` set) installs those packages through ``make test`` (``scripts/ensure-system-packages.sh``),
so there a missing one is a failure, not a skip.
"""
import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def cannot_run(test: str, reason: str):
    """Skip with ``reason``, or under CI fail saying that CI must run ``test``."""
    if under_ci():
        pytest.fail(f"CI must run {test}, but: {reason}")
    pytest.skip(reason)
