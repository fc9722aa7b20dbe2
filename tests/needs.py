"""Outside tools some tests need, found the same way by the tests and by .ci/run.

Locally a missing tool skips its tests and says how to install it; under CI=true it fails
them instead, so CI cannot go green on a suite that never ran its browser or voice tests.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

# .ci/run checks the same path (AVATAR_TEST_CHROMIUM overrides both).
CHROMIUM = Path(os.environ.get("AVATAR_TEST_CHROMIUM", "/usr/bin/chromium"))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def tool(found: bool, reason: str) -> pytest.MarkDecorator:
    """Mark tests that need an outside tool; conftest skips or (in CI) fails them when absent."""
    return pytest.mark.needs_tool(found=found, reason=reason)


def require(found: bool, reason: str) -> None:
    """The same rule inside a test or fixture: skip here, fail under CI=true."""
    if not found:
        if in_ci():
            pytest.fail(f"CI=true and a required tool is missing: {reason}", pytrace=False)
        pytest.skip(reason)


chromium = tool(CHROMIUM.is_file(), f"needs Debian's Chromium at {CHROMIUM}: apt-get install -y chromium")
ESPEAK_REASON = "needs espeak-ng for spoken questions: apt-get install -y espeak-ng"
espeak_ng = tool(shutil.which("espeak-ng") is not None, ESPEAK_REASON)
playwright = tool(importlib.util.find_spec("playwright") is not None,
                  "needs the playwright package: pip install -r requirements-dev.txt")
