"""Shared fixtures. Real benchmark data lives in ../shared/data beside the checkout; tests that
need it skip cleanly when it is absent and never copy it into the project. The BigGAN stand-in
(tests/biggan_hub_standin.py) is built once a session and placed under BigGAN's real handle."""
from __future__ import annotations

import os
import shutil
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


@pytest.fixture(scope="session")
def biggan_standin(tmp_path_factory) -> Path:
    """The folder of a BigGAN-128 hub stand-in (tests/biggan_hub_standin.py, a test fixture: the
    toy's images, class-conditional, BigGAN's TF1 `default` signature), built once a session."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_hub")
    from biggan_hub_standin import build_biggan_hub_module
    from gans.loader import import_hub

    import_hub()  # TensorFlow starts quietly
    return build_biggan_hub_module(tmp_path_factory.mktemp("biggan") / "module")


@pytest.fixture(scope="session")
def biggan_hub_dir(biggan_standin, tmp_path_factory) -> Path:
    """A TFHUB_CACHE_DIR holding the stand-in under sha1(BIGGAN_HANDLE), where `--gan biggan` looks."""
    from biggan_hub_standin import place_biggan_under_handle

    root = tmp_path_factory.mktemp("biggan-hub")
    shutil.copytree(biggan_standin, root / "copy")
    place_biggan_under_handle(root / "copy", root / "hub")
    return root / "hub"


@pytest.fixture
def biggan_handle_cache(biggan_hub_dir, monkeypatch) -> Path:
    """`--gan biggan` (and `load_gan("biggan")`) loads the stand-in offline in this test:
    TFHUB_CACHE_DIR points at `biggan_hub_dir`, which it returns."""
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(biggan_hub_dir))
    return biggan_hub_dir
