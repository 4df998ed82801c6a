"""Shared fixtures. Real benchmark data lives in ../shared/data beside the checkout; tests that
need it skip cleanly when it is absent and never copy it into the project."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BGW_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "images").is_dir() or not (path / "masks").is_dir():
        pytest.skip(f"{path} not present (real benchmark data lives in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def ecssd_dir() -> Path:
    return _shared("ecssd")


@pytest.fixture(scope="session")
def duts_dir() -> Path:
    return _shared("duts-tr-3000")
