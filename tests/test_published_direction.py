"""The paper's published BigBiGAN direction: fetched once into the cache, atomically, with its
checksum checked when one is pinned; offline, a one-line error says what to do."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from gans import directions
from gans.directions import DirectionError, download_with_checksum, load_direction, published_direction_path


@pytest.fixture()
def served(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_writes_atomically_and_checks_sha256(served, tmp_path):
    www, base = served
    vec = np.arange(1, 121, dtype=np.float32)
    np.save(www / "h.npy", vec)
    payload = (www / "h.npy").read_bytes()
    dest = tmp_path / "cache" / "h.npy"
    digest = download_with_checksum(f"{base}/h.npy", dest, hashlib.sha256(payload).hexdigest())
    assert digest == hashlib.sha256(payload).hexdigest()
    assert dest.read_bytes() == payload
    got, sha = load_direction(dest)
    np.testing.assert_allclose(got, vec / np.linalg.norm(vec), rtol=1e-6)

    bad = tmp_path / "cache" / "bad.npy"
    with pytest.raises(OSError, match="sha256"):
        download_with_checksum(f"{base}/h.npy", bad, "0" * 64)
    assert not bad.exists()
    assert [p.name for p in bad.parent.iterdir()] == ["h.npy"]  # no temporary file left behind


def test_published_direction_downloads_once_then_uses_the_cache(served, tmp_path, monkeypatch):
    www, base = served
    np.save(www / "bg.npy", np.ones(120, np.float32))
    monkeypatch.setitem(directions.PUBLISHED_DIRECTIONS, "bigbigan", ("bg.npy", f"{base}/bg.npy"))
    path = published_direction_path("bigbigan", tmp_path / "cache")
    assert path == tmp_path / "cache" / "directions" / "bigbigan-bg.npy"
    (www / "bg.npy").unlink()  # a second call must not go to the network
    assert published_direction_path("bigbigan", tmp_path / "cache") == path


def test_offline_error_is_one_line_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(directions.PUBLISHED_DIRECTIONS, "bigbigan", ("bg.pth", "http://127.0.0.1:9/bg.pth"))
    with pytest.raises(DirectionError) as err:
        published_direction_path("bigbigan", tmp_path, timeout_s=5)
    msg = str(err.value)
    assert "\n" not in msg and "--direction" in msg and str(tmp_path / "directions" / "bigbigan-bg.pth") in msg
    assert not (tmp_path / "directions" / "bigbigan-bg.pth").exists()


def test_unknown_model_has_no_published_direction(tmp_path):
    with pytest.raises(DirectionError, match="find-direction"):
        published_direction_path("stylegan2", tmp_path)
