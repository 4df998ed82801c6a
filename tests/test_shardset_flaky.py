"""Remote reads that survive the network: a local server (127.0.0.1 only) that cuts shard bodies
short, with and without Range support; what is read equals the local folder, and a shard is called
changed only when its complete bytes differ from its manifest record."""
from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from shardset import ShardError, iter_samples, resolve, verify_set
from shardset import urls
from shardset.split import open_split
from shardset.synthetic import write_synthetic_set
from shardset.urls import ShardConnectionError


class _Handler(BaseHTTPRequestHandler):
    """Serves the files of `server.root`; `server.cut(name, k)` says whether the k-th request
    (1-based) for `name` is cut a third of the way into its body, `server.status(name, k)` may
    answer an HTTP error instead. HTTP/1.0: one request per connection, as a cut leaves it."""

    server: "FlakyServer"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        path = srv.root / name
        if "/" in name or not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        with srv.lock:
            k = srv.counts[name] = srv.counts.get(name, 0) + 1
            asked = self.headers.get("Range")
        if (code := srv.status(name, k)) is not None:
            srv.log.append((name, asked, code))
            self.send_error(code)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", asked or "")
        if srv.ranges and m and int(m.group(1)) < len(data):
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        srv.log.append((name, asked, 206 if start else 200))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", srv.version(name))
        self.end_headers()
        if name.endswith(".tar.zst") and srv.cut(name, k):
            self.wfile.write(body[: len(body) // 3])
            return  # the server closes the connection: the body ends short of its Content-Length
        self.wfile.write(body)


class FlakyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, *, ranges: bool, cut=lambda name, k: k % 2 == 1, status=lambda name, k: None,
                 version=lambda name: "Mon, 01 Jan 2024 00:00:00 GMT"):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.ranges, self.cut, self.status, self.version = Path(root), ranges, cut, status, version
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.log: list[tuple[str, str | None, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serve():
    servers = []

    def start(root, **kw) -> FlakyServer:
        server = FlakyServer(root, **kw)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """The waits between tries, recorded instead of slept (the schedule is what is tested)."""
    waits: list[float] = []
    monkeypatch.setattr(urls.time, "sleep", waits.append)
    return waits


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("flaky")
    write_synthetic_set(root, "s", shards=4, shard_size=3, size=48, val_shards=1)
    return root


def _same_samples(a: list[dict], b: list[dict]) -> None:
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b] and a
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_read_cut_short_is_taken_up_where_it_stopped(serve, shard_dir, sleeps, ranges):
    server = serve(shard_dir, ranges=ranges)  # every other answer for a shard is cut at a third
    ref = resolve(f"{server.url}/s.json")
    for url in ref.urls:
        local = shard_dir / url.rsplit("/", 1)[1]
        _same_samples(list(iter_samples(url, expect=ref.record(url))), list(iter_samples(str(local))))
    served = [entry for entry in server.log if entry[0].endswith(".tar.zst")]
    assert len(served) == 2 * len(ref.urls) and sleeps == [urls.RETRY_BACKOFF_S] * len(ref.urls)
    resumed = [entry for entry in served if entry[1] is not None]  # the second request of each shard
    assert all(re.fullmatch(r"bytes=\d+-", asked) for _, asked, _ in resumed) and len(resumed) == len(ref.urls)
    # with Range support only the rest is sent again; without, the whole body, whose head is skipped
    assert {status for _, _, status in resumed} == ({206} if ranges else {200})
    server.counts.clear()
    assert verify_set(ref).ok  # shardset verify reads through the same streams
    server.counts.clear()  # and eval-seg's shards:SET (its val split)
    remote, local = open_split(f"{server.url}/s.json"), open_split(str(shard_dir / "s.json"))
    got = [(k, img.tobytes()) for u in remote.urls for k, img, _ in remote.samples(u, set(remote.keys(u)))]
    assert got == [(k, img.tobytes()) for u in local.urls for k, img, _ in local.samples(u, set(local.keys(u)))]


def test_a_connection_that_keeps_dropping_gives_up_saying_so(serve, shard_dir, sleeps):
    server = serve(shard_dir, ranges=False, cut=lambda name, k: True)
    url = f"{server.url}/s-000001.tar.zst"
    size = (shard_dir / "s-000001.tar.zst").stat().st_size
    record = resolve(f"{server.url}/s.json").record(url)
    with pytest.raises(ShardConnectionError) as caught:
        list(iter_samples(url, expect=record))
    message = str(caught.value)
    assert message.startswith(f"{url}: the connection dropped after {size // 3} of {size} bytes and 5 tries in a "
                              "row to take it up again failed (last: the server closed the connection before the end)")
    assert "changed" not in message and "\n" not in message
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0] and server.counts["s-000001.tar.zst"] == 6
    report = verify_set([url])
    assert not report.ok and "the connection dropped" in report.bad[0].reason


def test_every_try_counts_even_when_each_delivers_a_little(serve, shard_dir, sleeps, monkeypatch):
    monkeypatch.setattr(urls, "MAX_RECONNECTS", 3)
    server = serve(shard_dir, ranges=True, cut=lambda name, k: True)  # each answer a third of the rest
    url = f"{server.url}/s-000000.tar.zst"
    with pytest.raises(ShardConnectionError, match="and it was taken up again 3 times"):
        list(iter_samples(url))
    assert server.counts["s-000000.tar.zst"] == 4 and sleeps == [0.5] * 3  # progress resets the wait


def test_a_busy_server_is_asked_again_and_a_missing_file_is_not(serve, shard_dir, sleeps):
    server = serve(shard_dir, ranges=True, cut=lambda name, k: False,
                   status=lambda name, k: 503 if k <= 2 else None)
    url = f"{server.url}/s-000002.tar.zst"
    _same_samples(list(iter_samples(url)), list(iter_samples(str(shard_dir / "s-000002.tar.zst"))))
    assert sleeps == [0.5, 1.0]
    with pytest.raises(ShardError, match=r"s-000009\.tar\.zst: HTTP 404") as caught:
        list(iter_samples(f"{server.url}/s-000009.tar.zst"))
    assert type(caught.value) is ShardError and sleeps == [0.5, 1.0]
    busy = serve(shard_dir, ranges=True, status=lambda name, k: 503)
    with pytest.raises(ShardConnectionError, match=r"cannot open \(HTTP 503 .*\), and 5 more tries failed"):
        list(iter_samples(f"{busy.url}/s-000002.tar.zst"))


def test_a_file_replaced_between_tries_is_called_changed_not_mixed(serve, shard_dir, sleeps):
    versions = iter(["v1", "v2", "v3"])
    server = serve(shard_dir, ranges=True, version=lambda name: next(versions))
    with pytest.raises(ShardError, match=r"s-000000\.tar\.zst: changed on the server while it was read \(v1 -> v2\)"):
        list(iter_samples(f"{server.url}/s-000000.tar.zst"))


def test_only_complete_bytes_that_differ_are_called_changed(serve, shard_dir, tmp_path, sleeps):
    from test_integrity import tamper

    folder = tmp_path / "tampered"
    folder.mkdir()
    for p in shard_dir.iterdir():
        if p.is_file():
            (folder / p.name).write_bytes(p.read_bytes())
    tamper(folder / "s-000001.tar.zst")  # one pixel, same size, valid zstd: only the sha256 tells
    server = serve(folder, ranges=True)  # cut too: the retries deliver the bytes, the hash judges them
    ref = resolve(f"{server.url}/s.json")
    with pytest.raises(ShardError, match="sha256 differs from its manifest record"):
        list(iter_samples(ref.urls[1], expect=ref.record(ref.urls[1])))
    assert sleeps == [0.5]  # it was cut once and taken up again before the hash judged it


# ---------------------------------------------------------------------------------------------
# train-unet through a flaky server: the same batches, the same run


@pytest.fixture(scope="module")
def disc_set(tmp_path_factory):
    from trainer.toy import write_disc_set

    return write_disc_set(tmp_path_factory.mktemp("discs"), "discs", n_train=32, n_val=8, size=32, shard_size=8,
                          seed=0)


def test_training_batches_from_a_flaky_url_equal_the_local_ones(serve, disc_set, sleeps):
    torch = pytest.importorskip("torch")
    from shardset.select import select_shards
    from trainer.data import StreamSpec, make_loader

    server = serve(disc_set.parent, ranges=False)
    batches = []
    for spec in (str(disc_set), f"{server.url}/discs.json"):
        src = select_shards([spec])
        stream = StreamSpec(urls=tuple(src.train_urls), seed=0, batch=4, size=32, shuffle_buffer=8,
                            round_samples=32, expect=src.expect)
        batches.append([(img, mask) for img, mask in zip(range(16), make_loader(stream, 0, pin_memory=False))])
    assert sleeps and len(batches[0]) == len(batches[1]) == 16
    for (_, a), (_, b) in zip(*batches):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_train_unet_from_a_flaky_url_trains_as_from_the_folder(serve, disc_set, tmp_path, sleeps):
    pytest.importorskip("torch")
    import json

    from click.testing import CliRunner

    from trainer.cli import main

    fast = ["--size", "32", "--width", "4", "--batch-size", "4", "--steps", "4", "--val-every", "0",
            "--val-samples", "8", "--workers", "0", "--shuffle-buffer", "8", "--ckpt-every", "4", "--log-every", "1",
            "--cpu-threads", "1", "--device", "cpu", "--lr-milestones", "1"]
    server = serve(disc_set.parent, ranges=True)
    losses = []
    for name, spec in (("local", str(disc_set)), ("flaky", f"{server.url}/discs.json")):
        res = CliRunner().invoke(main, ["--shards", spec, "--out", str(tmp_path / name), *fast],
                                 catch_exceptions=False)
        assert res.exit_code == 0 and "done: step 4" in res.output, res.output
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if r.get("kind") == "train"])
    assert sleeps and len(losses[0]) == 4 and losses[0] == losses[1]


def test_train_unet_names_a_dropped_connection_in_one_line(serve, disc_set, tmp_path, sleeps):
    pytest.importorskip("torch")
    from click.testing import CliRunner

    from trainer.cli import main

    # each shard's first answer is cut, then the server is busy for good
    server = serve(disc_set.parent, ranges=True, cut=lambda name, k: True,
                   status=lambda name, k: 503 if k > 1 and name.endswith(".tar.zst") else None)
    res = CliRunner().invoke(main, ["--shards", f"{server.url}/discs.json", "--out", str(tmp_path / "r"),
                                    "--size", "32", "--width", "4", "--batch-size", "4", "--steps", "2",
                                    "--val-every", "0", "--workers", "0", "--cpu-threads", "1", "--device", "cpu"])
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert res.exit_code == 1 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert re.match(rf"Error: cannot read shard {server.url}/discs-00000\d\.tar\.zst: the connection dropped after "
                    r"\d+ of \d+ bytes and 5 tries in a row to take it up again failed \(last: HTTP 503 ", errors[0])
