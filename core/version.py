"""The installed package's version, for --version, results.json and manifests."""
from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

PACKAGE = "bgw-seg"


@functools.lru_cache(maxsize=1)
def package_version(missing: str = "unknown") -> str:
    """bgw-seg's installed version; `missing` when it is not installed (run from a bare checkout)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return missing
