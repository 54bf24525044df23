"""Shared fixtures: small configs that keep the suite fast on a 2-core machine."""

from __future__ import annotations

import pytest

from helpers import small_config
from tdlens.config import RunConfig


@pytest.fixture
def cfg() -> RunConfig:
    return small_config()
