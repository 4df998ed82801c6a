"""The recipes of shardset/FORMAT.md, "Reading a shard set without bgw-seg", run as written.

Each recipe is cut out of FORMAT.md (the block after its `<!-- recipe: NAME -->` marker), so the
document and the test cannot drift apart. It runs in a child process whose sys.modules must hold
no package of bgw-seg, against a real set (gen-synth --gan toy in the default encoding, delta; an
ECSSD import with PNG images where ../shared/data is present), and what it reads must equal what
bgw-seg's reader gives: the same keys in the split, the same images, the same masks once the
tool's mask values are mapped to {0, 1}. The child cannot import the packages FORMAT.md's needs
table leaves out for the recipe (a stand-in that raises ImportError shadows them), so a recipe that
needs Pillow and does not say so fails here. The values each tool gives for a mask are measured
here too (the table in FORMAT.md).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zstandard

from shardset import iter_samples, resolve
from shardset.export import export_plain_tar

REPO = Path(__file__).resolve().parents[1]
FORMAT_MD = REPO / "shardset" / "FORMAT.md"
BIN = Path(sys.executable).parent
BGW_PACKAGES = {"shardset", "generator", "trainer", "evaluator", "core", "segmodel", "benchdata"}
NAME = "myset"  # the set the recipes name (shards/myset.json)
RECIPES = ("decoders", "split", "webdataset", "webdataset-zstandard", "decompress", "decompress-zstandard",
           "datasets", "pytorch", "sha256", "sha256-python")
# import name -> the package FORMAT.md's needs table names; torch is left out (webdataset and datasets
# import it when it is there, and work without it), numpy is in every row
GUARDED = {"PIL": "Pillow", "zstandard": "zstandard", "webdataset": "webdataset", "datasets": "datasets"}

# Appended to a Python recipe: iterate what it built (`loader` if it made one, else `dataset`),
# save keys, images and masks as they came, and print which bgw-seg packages got imported.
HARNESS = f"""
import json as _json, sys as _sys
import numpy as _np
_keys, _images, _masks = [], [], []
for _item in (loader if "loader" in globals() else dataset):
    if isinstance(_item, dict):
        _item = (_item["__key__"], _item["image"], _item["mask"])
    _keys.append(str(_item[0]))
    _images.append(_np.asarray(_item[1]))
    _masks.append(_np.asarray(_item[2]))
_np.savez(_sys.argv[1], keys=_np.array(_keys), images=_np.stack(_images), masks=_np.stack(_masks))
print(_json.dumps(sorted(set(_sys.modules) & set({sorted(BGW_PACKAGES)!r}))))
"""


def recipes() -> dict[str, tuple[str, str]]:
    """name -> (language, code) of every recipe block in FORMAT.md."""
    found = re.findall(r"<!-- recipe: ([\w-]+) -->\n```(\w+)\n(.*?)```", FORMAT_MD.read_text(), re.S)
    return {name: (lang, code) for name, lang, code in found}


def needs() -> dict[str, dict[str, str]]:
    """recipe -> {package: minimum version} from FORMAT.md's needs table (the `pkg>=version` spans)."""
    text = FORMAT_MD.read_text()
    table = text[text.index("<!-- needs -->"):].split("\n\n", 1)[0]
    out = {}
    for row in table.splitlines()[3:]:
        name = re.match(r"\| \[([\w-]+)\]", row)[1]
        out[name] = dict(re.findall(r"`([\w-]+)>=([\d.]+)`", row))
    return out


def blocked_packages(work: Path, names: tuple[str, ...], encoding: str) -> Path:
    """A folder of stand-ins for the guarded imports that the recipes `names` do not name: put first
    on the child's path, they make `import PIL` (say) fail as it would where it is not installed."""
    table = needs()
    allowed = {pkg for n in names for pkg in table.get(n, {})}
    if "pytorch" in names and encoding == "delta":
        allowed.discard("Pillow")  # FORMAT.md: a delta set needs no Pillow there
    folder = work / ("blocked-" + "-".join(names) + "-" + encoding)
    for module, pkg in GUARDED.items():
        if pkg not in allowed:
            (folder / module).mkdir(parents=True, exist_ok=True)
            (folder / module / "__init__.py").write_text(
                f"raise ImportError({pkg + ' is not named for this recipe in FORMAT.md (blocked by the test)'!r})\n")
    folder.mkdir(exist_ok=True)
    return folder


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _env(work: Path, path: str | None = None, blocked: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if blocked is not None:
        env["PYTHONPATH"] = str(blocked)
    env["PATH"] = path if path is not None else f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # datasets: its cache in the test's folder, and no network
    env.update(HF_HOME=str(work / "hf-home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def path_without_zstd(work: Path) -> str:
    """A PATH with the venv's python and the coreutils the recipes use, and no zstd program."""
    tools = work / "tools-without-zstd"
    if not tools.exists():
        tools.mkdir()
        for tool in ("mkdir", "basename"):
            (tools / tool).symlink_to(shutil.which(tool))
    assert shutil.which("zstd", path=f"{BIN}{os.pathsep}{tools}") is None
    return f"{BIN}{os.pathsep}{tools}"


def set_encoding(work: Path) -> str:
    manifest = work / "shards" / f"{NAME}.json"
    return json.loads(manifest.read_text())["encoding"]


def run_python(work: Path, *names: str, split: str = "train", path: str | None = None):
    """Run the recipes `names`, joined, plus HARNESS in a child that cannot import what the needs
    table leaves out; returns (keys, images, masks)."""
    code = "\n".join(recipes()[n][1] for n in names)
    if split != "train":
        code = code.replace('files["train"]', f'files["{split}"]')
    script = work / f"recipe-{'-'.join(names)}-{split}.py"
    script.write_text(code + HARNESS)
    out = work / (script.stem + ".npz")
    blocked = blocked_packages(work, names, set_encoding(work))
    res = subprocess.run([sys.executable, str(script), str(out)], cwd=work, env=_env(work, path, blocked),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [], "the reader imported bgw-seg"
    with np.load(out, allow_pickle=False) as z:
        return list(z["keys"]), z["images"], z["masks"]


def run_sh(work: Path, name: str, path: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash"), "-eo", "pipefail", "-c", recipes()[name][1]], cwd=work,
                          env=_env(work, path), capture_output=True, text=True, timeout=600)


def bgw_samples(work: Path, split: str) -> list[dict]:
    """The split as bgw-seg's reader gives it (masks in {0, 1})."""
    ref = resolve(str(work / "shards" / f"{NAME}.json"))
    return [s for url in ref.split_urls(split) for s in iter_samples(url, expect=ref.record(url))]


def assert_same(work: Path, got, split: str = "train", *, mask_values: set, ordered: bool = True) -> None:
    keys, images, masks = got
    expected = bgw_samples(work, split)
    assert expected, "the fixture's split is empty"
    assert set(np.unique(masks).tolist()) == mask_values
    if not ordered:  # DataLoader workers interleave shards
        order = np.argsort(keys)
        keys, images, masks = sorted(keys), images[order], masks[order]
        expected = sorted(expected, key=lambda s: s["__key__"])
    assert keys == [s["__key__"] for s in expected]
    np.testing.assert_array_equal(images, np.stack([s["image"] for s in expected]))
    np.testing.assert_array_equal((masks > 0).astype(np.uint8), np.stack([s["mask"] for s in expected]))


# ---------------------------------------------------------------------------------------------
# the sets


@pytest.fixture(scope="module")
def toy_set(tmp_path_factory) -> Path:
    """A folder holding shards/myset-*.tar.zst and shards/myset.json from gen-synth --gan toy."""
    if not _has("tensorflow"):
        pytest.skip("gen-synth --gan toy needs TensorFlow")
    work = tmp_path_factory.mktemp("toy")
    res = subprocess.run([str(BIN / "gen-synth"), "--gan", "toy", "--latents", "prior", "--n", "24",
                          "--shard-size", "8", "--val-shards", "1", "--out", "shards", "--name", NAME,
                          "--seed", "1"], cwd=work, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return work


@pytest.fixture(scope="module")
def ecssd_png_set(ecssd_dir, tmp_path_factory) -> Path:
    """40 ECSSD pairs imported with --encoding png (links to the shared data; nothing copied)."""
    from shardset.importer import import_folder

    work = tmp_path_factory.mktemp("ecssd")
    pairs = work / "pairs"
    for sub in ("images", "masks"):
        (pairs / sub).mkdir(parents=True)
    for img in sorted((ecssd_dir / "images").glob("*.jpg"))[:40]:
        (pairs / "images" / img.name).symlink_to(img)
        (pairs / "masks" / f"{img.stem}.png").symlink_to(ecssd_dir / "masks" / f"{img.stem}.png")
    import_folder(pairs / "images", pairs / "masks", work / "shards", NAME, size=128, shard_size=10,
                  val_fraction=0.25, encoding="png", seed=0)
    return work


SET_FIXTURES = {"toy": "toy_set", "ecssd-png": "ecssd_png_set"}


@pytest.fixture(params=list(SET_FIXTURES))
def reading_set(request) -> Path:
    return request.getfixturevalue(SET_FIXTURES[request.param])


# ---------------------------------------------------------------------------------------------
# the recipes


def test_every_recipe_is_in_the_document():
    found = recipes()
    assert set(RECIPES) <= set(found), f"FORMAT.md lacks recipes {set(RECIPES) - set(found)}"
    langs = {n: lang for n, (lang, _) in found.items()}
    assert {n for n in RECIPES if langs[n] == "sh"} == {"decompress", "decompress-zstandard", "sha256",
                                                        "sha256-python"}
    assert set(needs()) == set(RECIPES) - {"decoders", "split"}


def test_the_named_packages_meet_their_minimums():
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    for recipe, pkgs in needs().items():
        for pkg, minimum in pkgs.items():
            try:
                assert Version(version(pkg)) >= Version(minimum), f"{recipe}: {pkg} {version(pkg)} < {minimum}"
            except PackageNotFoundError:
                pass  # the recipe's own test skips


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the pipe: recipe needs the zstd program")
@pytest.mark.parametrize("set_name,split", [("toy", "train"), ("toy", "val"), ("ecssd-png", "train")])
def test_webdataset_pipe_url(request, set_name, split):
    reading_set = request.getfixturevalue(SET_FIXTURES[set_name])
    got = run_python(reading_set, "decoders", "split", "webdataset", split=split)
    assert got[2].dtype == np.uint8 and got[2].ndim == 3  # [N, H, W]
    assert_same(reading_set, got, split, mask_values={0, 255})


def test_webdataset_with_python_zstandard_and_no_zstd_program(reading_set):
    got = run_python(reading_set, "decoders", "split", "webdataset", "webdataset-zstandard",
                     path=path_without_zstd(reading_set))
    assert_same(reading_set, got, mask_values={0, 255})


def test_pytorch_tarfile_dataset_with_two_workers(reading_set):
    pytest.importorskip("torch")
    got = run_python(reading_set, "decoders", "split", "pytorch")
    assert got[2].dtype == np.uint8
    assert_same(reading_set, got, mask_values={0, 1}, ordered=False)


def test_decompress_recipes_give_the_plain_tar_export(toy_set, tmp_path):
    """`zstd -d`, Python's zstandard and `shardset export --plain-tar` write the same files."""
    export_plain_tar(str(toy_set / "shards"), tmp_path / "export")
    exported = {p.name: p.read_bytes() for p in (tmp_path / "export").glob("*.tar")}
    assert sorted(exported) == [f"{NAME}-{i:06d}.tar" for i in range(3)]
    for how in ("decompress", "decompress-zstandard"):
        if how == "decompress" and shutil.which("zstd") is None:
            continue
        work = tmp_path / how
        work.mkdir()
        (work / "shards").symlink_to(toy_set / "shards")
        res = run_sh(work, how, path=None if how == "decompress" else path_without_zstd(work))
        assert res.returncode == 0, res.stderr
        assert {p.name: p.read_bytes() for p in (work / "plain").iterdir()} == exported, how


@pytest.mark.skipif(not _has("datasets"), reason="Hugging Face datasets is not installed")
@pytest.mark.parametrize("set_name,how", [("toy", "decompress-zstandard"), ("ecssd-png", "export")])
def test_hugging_face_datasets_after_decompressing(request, tmp_path, set_name, how):
    source = request.getfixturevalue(SET_FIXTURES[set_name])
    work = tmp_path / "work"
    work.mkdir()
    (work / "shards").symlink_to(source / "shards")
    if how == "export":  # bgw-seg's own export, run here, in the parent
        export_plain_tar(str(work / "shards" / f"{NAME}.json"), work / "plain")
    else:
        res = run_sh(work, how, path=path_without_zstd(work))
        assert res.returncode == 0, res.stderr
    got = run_python(work, "decoders", "datasets")
    assert got[2].dtype == bool
    assert_same(work, got, mask_values={False, True})


# ---------------------------------------------------------------------------------------------
# sha256sum against the manifest


def _copy_set(src: Path, dst: Path) -> Path:
    (dst / "shards").mkdir(parents=True)
    for p in (src / "shards").iterdir():
        if p.is_file() and not p.name.startswith("."):
            shutil.copy(p, dst / "shards" / p.name)
    return dst


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils' sha256sum")
@pytest.mark.parametrize("recipe", ["sha256", "sha256-python"])
def test_sha256sum_recipes(toy_set, tmp_path, recipe):
    if recipe == "sha256" and shutil.which("jq") is None:
        pytest.skip("needs jq")
    shards = json.loads((toy_set / "shards" / f"{NAME}.json").read_text())["shards"]
    res = run_sh(toy_set, recipe)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"{r['file']}: OK" for r in shards]

    flipped = _copy_set(toy_set, tmp_path / "flipped")
    shard = flipped / "shards" / shards[1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    res = run_sh(flipped, recipe)
    assert res.returncode == 1 and f"{shards[1]['file']}: FAILED" in res.stdout

    missing = _copy_set(toy_set, tmp_path / "missing")
    (missing / "shards" / shards[0]["file"]).unlink()
    assert run_sh(missing, recipe).returncode == 1

    # the same lines check a plain-tar export against its own manifest
    exported = tmp_path / "exported"
    exported.mkdir()
    export_plain_tar(str(toy_set / "shards"), exported / "shards")
    res = run_sh(exported, recipe)
    assert res.returncode == 0 and res.stdout.splitlines() == [f"{NAME}-{r['index']:06d}.tar: OK" for r in shards]


# ---------------------------------------------------------------------------------------------
# what each tool makes of a mask (the table in FORMAT.md)

MEASURE_MASKS = """
import io, json, sys
import cv2
import numpy as np
import webdataset as wds
from PIL import Image

sample = next(iter(wds.WebDataset(sys.argv[1], shardshuffle=False)))
member = sys.argv[3]  # "mask.pbm" (from the shard) or "mask.png=FILE" (bytes made by the test)
field = member.split("=")[0]
png = sample[member] if member in sample else open(member.split("=", 1)[1], "rb").read()

def describe(v):
    kind = type(v).__name__
    if isinstance(v, Image.Image):
        return {"type": "PIL", "mode": v.mode, "dtype": str(np.asarray(v).dtype),
                "shape": list(np.asarray(v).shape), "values": np.unique(np.asarray(v)).tolist()}
    if isinstance(v, bytes):
        return {"type": "bytes"}
    a = v.numpy() if kind == "Tensor" else v
    return {"type": kind, "dtype": str(a.dtype), "shape": list(a.shape), "values": np.unique(a).tolist()}

out = {}
for spec in ["l8", "rgb8", "l", "torchl8", "pill"]:
    out["wds " + spec] = describe(wds.autodecode.Decoder([wds.imagehandler(spec)])({field: png})[field])
out["wds default"] = describe(wds.autodecode.Decoder([])({field: png})[field])
im = Image.open(io.BytesIO(png))
out["PIL open"] = describe(im)
out["PIL uint8"] = describe(np.asarray(im, dtype=np.uint8))
out["PIL L"] = describe(np.asarray(im.convert("L")))
buf = np.frombuffer(png, np.uint8)
for flag in ["IMREAD_UNCHANGED", "IMREAD_GRAYSCALE", "IMREAD_COLOR"]:
    out["cv2 " + flag] = describe(cv2.imdecode(buf, getattr(cv2, flag)))
try:  # the compressed shard as a plain URL: what FORMAT.md says fails
    next(iter(wds.WebDataset(sys.argv[2], shardshuffle=False)))
    out["wds .tar.zst"] = "read"
except Exception as exc:
    out["wds .tar.zst"] = f"{type(exc).__name__}: {exc.args[0]}"
print(json.dumps(out))
print(json.dumps(sorted(set(sys.modules) & %r)))
""" % (BGW_PACKAGES,)


def _desc(typ, dtype, shape, values, **extra):
    return {"type": typ, "dtype": dtype, "shape": shape, "values": values, **extra}


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd program")
def test_mask_values_per_decoder(toy_set, tmp_path):
    """The table in FORMAT.md, for the toy set's mask.pbm and for the same mask as bgw-seg's 1-bit PNG."""
    from shardset.codec import encode_mask

    shard = toy_set / "shards" / f"{NAME}-000000.tar.zst"
    first = next(iter_samples(str(shard)))
    png = tmp_path / "mask.png"
    png.write_bytes(encode_mask(first["mask"]))
    hw = [128, 128]
    expected = {
        "wds l8": _desc("ndarray", "uint8", hw, [0, 255]),
        "wds rgb8": _desc("ndarray", "uint8", hw + [3], [0, 255]),
        "wds l": _desc("ndarray", "float32", hw, [0.0, 1.0]),
        "wds torchl8": _desc("Tensor", "uint8", hw, [0, 255]),
        "wds pill": _desc("PIL", "uint8", hw, [0, 255], mode="L"),
        "wds default": {"type": "bytes"},
        "PIL open": _desc("PIL", "bool", hw, [False, True], mode="1"),
        "PIL uint8": _desc("ndarray", "uint8", hw, [0, 1]),
        "PIL L": _desc("ndarray", "uint8", hw, [0, 255]),
        "cv2 IMREAD_UNCHANGED": _desc("ndarray", "uint8", hw, [0, 255]),
        "cv2 IMREAD_GRAYSCALE": _desc("ndarray", "uint8", hw, [0, 255]),
        "cv2 IMREAD_COLOR": _desc("ndarray", "uint8", hw + [3], [0, 255]),
        "wds .tar.zst": "ReadError: invalid header",
    }
    for member in ("mask.pbm", f"mask.png={png}"):
        res = subprocess.run([sys.executable, "-c", MEASURE_MASKS, f"pipe:zstd -dc < {shard}", str(shard), member],
                             cwd=toy_set, capture_output=True, text=True, timeout=600, env=_env(toy_set))
        assert res.returncode == 0, res.stderr[-2000:]
        measured, modules = (json.loads(line) for line in res.stdout.strip().splitlines()[-2:])
        assert modules == []
        assert measured == expected, member
    # and bgw-seg's own reader: {0, 1}, foreground where every tool above shows it
    assert first["mask"].dtype == np.uint8 and set(np.unique(first["mask"]).tolist()) == {0, 1}


MEASURE_DATASETS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from datasets import load_dataset
    out = {}
    for path in sys.argv[1:]:
        ds = load_dataset("webdataset", data_files={"train": [path]})["train"]
        row, as_numpy = ds[0], ds.with_format("numpy")[0]
        image = next(c for c in ds.column_names if c.startswith("image."))
        mask = next(c for c in ds.column_names if c.startswith("mask."))
        out[image] = [type(row[image]).__name__, str(as_numpy[image].dtype)]
        out[mask] = [type(row[mask]).__module__.split(".")[0], row[mask].mode, str(np.asarray(row[mask]).dtype)]
    print(json.dumps(out))
    print(json.dumps(sorted(set(sys.modules) & %r)))
""") % (BGW_PACKAGES,)


@pytest.mark.skipif(not _has("datasets"), reason="Hugging Face datasets is not installed")
def test_datasets_mask_and_npy_types(toy_set, tmp_path):
    """FORMAT.md: datasets gives either mask as a mode-1 PIL image, image.delta as bytes (decoded by
    the recipe) and image.npy as nested lists (int64 under with_format("numpy"))."""
    from shardset.synthetic import write_synthetic_set

    export_plain_tar(str(toy_set / "shards"), tmp_path / "plain")
    write_synthetic_set(tmp_path / "npyset", "npyset", shards=1, shard_size=4, encoding="npy")
    export_plain_tar(str(tmp_path / "npyset"), tmp_path / "plain")
    res = subprocess.run([sys.executable, "-c", MEASURE_DATASETS, str(tmp_path / "plain" / f"{NAME}-000000.tar"),
                          str(tmp_path / "plain" / "npyset-000000.tar")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    measured, modules = (json.loads(line) for line in res.stdout.strip().splitlines()[-2:])
    assert modules == []
    assert measured.pop("image.delta")[0] == "bytes"  # with_format("numpy"): a bytes scalar, |S<length>
    assert measured == {"mask.pbm": ["PIL", "1", "bool"], "image.npy": ["list", "int64"],
                        "mask.png": ["PIL", "1", "bool"]}


STRAY_MEMBER = """
import io, sys, tarfile
import webdataset as wds
files = {"train": ["never-opened.tar.zst"]}
%s
%s
with tarfile.open(sys.argv[1]) as src, tarfile.open("stray.tar", "w", format=tarfile.USTAR_FORMAT) as dst:
    first = [m for m in src.getmembers() if m.name.startswith(src.getmembers()[0].name.split(".")[0] + ".")]
    for m in first:
        dst.addfile(m, src.extractfile(m))
    payload = b"cbuiltins\\nprint\\n(S'UNPICKLED'\\ntR."  # print("UNPICKLED") when unpickled
    info = tarfile.TarInfo(first[0].name.split(".")[0] + ".payload.pyd")
    info.size = len(payload)
    dst.addfile(info, io.BytesIO(payload))
for only in (MEMBERS, None):
    sample = next(iter(wds.WebDataset("stray.tar", shardshuffle=False).decode(*DECODERS, only=only)))
    print("only" if only else "all", type(sample["payload.pyd"]).__name__, sample["mask.pbm"].dtype,
          sample["image.delta"].dtype)
"""


def test_webdataset_recipe_never_unpickles_a_stray_member(toy_set, tmp_path):
    """FORMAT.md: `only=` leaves members outside the format undecoded (webdataset's default
    decoders would unpickle a `.pyd`: the second line shows it, so the check can fail)."""
    plain = tmp_path / "plain.tar"
    shard = toy_set / "shards" / f"{NAME}-000000.tar.zst"
    plain.write_bytes(zstandard.ZstdDecompressor().decompress(shard.read_bytes()))
    code = STRAY_MEMBER % (recipes()["decoders"][1], recipes()["webdataset"][1])
    res = subprocess.run([sys.executable, "-c", code, str(plain)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.splitlines() == ["only bytes uint8 uint8", "UNPICKLED", "all bytes uint8 uint8"]
