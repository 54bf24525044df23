"""Shared fixtures: small configs that keep the suite fast on a 2-core machine."""

from __future__ import annotations

import pytest

from helpers import small_config
from tdlens.config import RunConfig


@pytest.fixture
def cfg() -> RunConfig:
    return small_config()


@pytest.fixture(autouse=True)
def _private_catalog(tmp_path_factory, monkeypatch):
    """Every test indexes runs in its own catalog, never in the repository's outputs/."""
    monkeypatch.setenv("TDLENS_CATALOG", str(tmp_path_factory.mktemp("catalog") / "c.sqlite"))
