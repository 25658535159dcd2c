"""Where the real files of ``../shared/realdata`` are (read in place, never copied here).

Tests that use them call :func:`realdata` and are skipped with the reason when the folder is
missing, unless ``DISCOVERY_REQUIRE_REALDATA=1`` (``.ci/run`` sets it): then they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def realdata(*parts: str) -> Path:
    """The path ``../shared/realdata/<parts>``; skips (or fails when required) when absent."""
    path = ROOT.joinpath(*parts)
    if not path.exists():
        msg = f"real files not found at {path} (../shared/realdata beside the repository)"
        if os.environ.get("DISCOVERY_REQUIRE_REALDATA") == "1":
            pytest.fail(msg + "; DISCOVERY_REQUIRE_REALDATA=1")
        pytest.skip(msg)
    return path
