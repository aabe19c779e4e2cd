"""Fixtures for the admin API tests (the harness itself is in api_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .api_helpers import OPEN_HARNESSES, Harness, make_harness


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield make_harness(tmp_path)


@pytest.fixture(autouse=True)
def _close_harnesses() -> Iterator[None]:
    """Every harness a test made (with the fixture or make_harness) stops its server after it."""
    yield
    while OPEN_HARNESSES:
        OPEN_HARNESSES.pop().close()
