"""resolve(): globs, brace ranges, manifests, folders, file:// and http:// (local server)."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest

from shardset import ShardError, expand_braces, iter_samples, resolve, verify_set
from shardset.synthetic import write_synthetic_set


@pytest.fixture
def shard_dir(tmp_path):
    write_synthetic_set(tmp_path, "s", shards=4, shard_size=2, val_shards=1)
    return tmp_path


def _names(urls):
    return [u.rsplit("/", 1)[-1] for u in urls]


def test_expand_braces():
    assert expand_braces("a-{000008..000011}.tar.zst") == [f"a-{i:06d}.tar.zst" for i in range(8, 12)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("plain") == ["plain"]
    with pytest.raises(ValueError, match="backwards"):
        expand_braces("{5..1}")
    with pytest.raises(ValueError, match="neither a range"):
        expand_braces("{abc}")


def test_resolve_folder_manifest_glob_braces_file_url(shard_dir):
    all4 = [f"s-{i:06d}.tar.zst" for i in range(4)]
    for spec in (str(shard_dir), str(shard_dir / "s.json"), str(shard_dir / "s-*"),
                 str(shard_dir / "s-{000000..000003}.tar.zst"), f"file://{shard_dir}/s.json",
                 f"file://{shard_dir}/s-*.tar.zst"):
        ref = resolve(spec)
        assert _names(ref.urls) == all4, spec
        assert ref.manifest is not None and ref.manifest["name"] == "s", spec
        assert _names(ref.split_urls("train")) == all4[:3]
        assert _names(ref.split_urls("val")) == all4[3:]
    sub = resolve(str(shard_dir / "s-{000001..000002}.tar.zst"))
    assert _names(sub.urls) == all4[1:3] and _names(sub.split_urls("train")) == all4[1:3]
    both = resolve([str(shard_dir / "s-000003.tar.zst"), str(shard_dir / "s-00000[01].tar.zst")])
    assert _names(both.urls) == ["s-000003.tar.zst", "s-000000.tar.zst", "s-000001.tar.zst"]


def test_resolve_without_manifest(shard_dir):
    (shard_dir / "s.json").unlink()
    ref = resolve(str(shard_dir))
    assert len(ref.urls) == 4 and ref.manifest is None
    assert ref.split_urls("train") == ref.urls and ref.split_urls("val") == []


def test_resolve_errors(tmp_path, shard_dir):
    with pytest.raises(ValueError, match="matches no"):
        resolve(str(shard_dir / "nope-*"))
    with pytest.raises(ValueError, match="does not exist"):
        resolve(str(shard_dir / "missing.tar.zst"))
    write_synthetic_set(shard_dir, "t", shards=1)
    with pytest.raises(ValueError, match="several shard sets"):
        resolve(str(shard_dir))
    with pytest.raises(ShardError, match="no such file"):
        list(iter_samples(str(shard_dir / "gone.tar.zst")))


@pytest.fixture
def http_root(shard_dir):
    handler = functools.partial(_QuietHandler, directory=str(shard_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_manifest_and_shards(http_root, shard_dir):
    ref = resolve(f"{http_root}/s.json")
    assert ref.urls[0] == f"{http_root}/s-000000.tar.zst" and ref.manifest["name"] == "s"
    assert _names(ref.split_urls("val")) == ["s-000003.tar.zst"]
    local = list(iter_samples(str(shard_dir / "s-000001.tar.zst")))
    remote = list(iter_samples(ref.urls[1]))
    assert [s["__key__"] for s in remote] == [s["__key__"] for s in local]
    assert (remote[0]["image"] == local[0]["image"]).all()
    assert verify_set(ref).ok
    braces = resolve(f"{http_root}/s-{{000000..000001}}.tar.zst")
    assert braces.urls == [f"{http_root}/s-000000.tar.zst", f"{http_root}/s-000001.tar.zst"]
    with pytest.raises(ShardError, match=r"s-000009\.tar\.zst: HTTP 404"):
        list(iter_samples(f"{http_root}/s-000009.tar.zst"))


def test_fsspec_urls_glob_and_manifest(shard_dir):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for p in shard_dir.iterdir():
        if p.is_file():
            fs.pipe(f"/bgwtest/{p.name}", p.read_bytes())
    try:
        globbed = resolve("memory://bgwtest/s-*.tar.zst")
        assert _names(globbed.urls) == [f"s-{i:06d}.tar.zst" for i in range(4)]
        ref = resolve("memory://bgwtest/s.json")
        assert _names(ref.split_urls("val")) == ["s-000003.tar.zst"]
        assert [s["__key__"] for s in iter_samples(ref.urls[3])] == ["s-000003-000000", "s-000003-000001"]
        assert verify_set(ref).ok
    finally:
        fs.rm("/bgwtest", recursive=True)
