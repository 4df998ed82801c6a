"""Benchmark datasets by name: where each lives under the data root, its split, its input
sizing (benchdata.sizing), and how its images and ground truth load.

numpy + cv2 only (the generator uses it for train images, so no torch, no TF); it imports `core`
and no other package of this project.

    get_dataset("ecssd", root="/data")              # name from DATASETS, under the data root
    get_dataset("folder:/data/mine")                # images/ + masks/
    get_dataset("shards:shards/toy", shard_sets=shardset.open_split)   # a shard set's val split

`root` defaults to the BGW_DATA_ROOT environment variable. DATASETS is a core.registry Registry: an
unknown name is its UnknownNameError (close matches, every choice). Every failure to find a named
dataset's files is a `DatasetError` whose message is one line naming the missing path and where
the data comes from.

Images and ground truth are read by `core.images.read_user_image` (benchdata.io): an image over
the pixel limit (`max_pixels`, checked from the header before decoding) or one that does not
decode (truncated, corrupt, missing) is skipped with a warning by `Dataset.iter_loaded`, and
recorded in `Dataset.skipped` (item id -> reason) for the command's summary. `read_image` /
`read_gt` raise `ImageSkipped` (a DatasetError) for such files.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from core.errors import UserError, first_line
from core.images import DEFAULT_MAX_PIXELS
from core.registry import Registry

from .io import IMAGE_EXTS, DatasetError, ImageSkipped, read_gt, read_image
from .sizing import CROP128, SHORT128, Sizing

log = logging.getLogger(__name__)

__all__ = ["ENV_ROOT", "DATASETS", "Item", "Dataset", "get_dataset", "dataset_names", "flowers_segmim_mask"]

ENV_ROOT = "BGW_DATA_ROOT"



@dataclass(frozen=True)
class Item:
    """One test image and its ground truth.

    `id` names the prediction file (`<pred-dir>/<id>.png`; it may hold `/` for nested sets).
    `mask_path` is the segmentation ground truth (None for box-only sets). WSOL sets add
    `boxes` ((x0, y0, x1, y1) in original pixels, inclusive, as in Choe et al.'s metadata),
    `extra_mask_paths` (further instance masks of the same image, unioned) and `ignore_path`.
    `key` points into a shard (shards:SET), where `image_path` is the shard URL.
    """

    id: str
    image_path: Path | str
    mask_path: Path | None = None
    boxes: tuple[tuple[int, int, int, int], ...] = ()
    extra_mask_paths: tuple[Path, ...] = ()
    ignore_path: Path | None = None
    key: str | None = None


@dataclass
class Dataset:
    """A named dataset: `.name`, `.sizing`, `.train_images()`, `.test_items()`.

    `task` says which ground truth its items carry: "mask" (segmentation masks), "boxes"
    (WSOL bounding boxes) or "pxap" (WSOL masks with ignore regions).
    """

    name: str
    sizing: Sizing  # how its images reach the model and its maps the metrics (CROP128, SHORT128)
    root: Path | None
    task: str = "mask"
    _list_train: Callable[[], list[Path]] | None = field(default=None, repr=False)
    _list_test: Callable[[], list[Item]] | None = field(default=None, repr=False)
    _gt_reader: Callable[[Item, int], np.ndarray] | None = field(default=None, repr=False)
    _iter_loaded: Callable[[list[Item]], Iterator[tuple[Item, np.ndarray, np.ndarray | None]]] | None = (
        field(default=None, repr=False))
    source: str = ""  # where to obtain the data, quoted in errors
    info: dict = field(default_factory=dict)  # provenance for results.json (paths, fingerprints)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images over this many pixels are skipped before decoding
    skipped: dict[str, str] = field(default_factory=dict)  # item id -> why iter_loaded skipped it

    def train_images(self) -> list[Path]:
        """Image files of the training split (sorted), for the generator's embeddings."""
        if self._list_train is None:
            raise DatasetError(f"dataset {self.name!r} has no training split")
        return self._list_train()

    def test_items(self) -> list[Item]:
        """The evaluation split, in a fixed order."""
        if self._list_test is None:
            raise DatasetError(f"dataset {self.name!r} has no test split; {self.source}")
        return self._list_test()

    def load_image(self, item: Item) -> np.ndarray:
        """uint8 RGB [H, W, 3] at its original size; ImageSkipped when it cannot be used."""
        return read_image(item.image_path, self.max_pixels)

    def load_gt(self, item: Item) -> np.ndarray:
        """The raw ground-truth map at its original size (uint8/uint16 [H, W]); `sizing.prepare_gt`
        sizes it for the metrics, the evaluation protocols binarise it (scoring.binarize_gt)."""
        if self._gt_reader is not None:
            return self._gt_reader(item, self.max_pixels)
        if item.mask_path is None:
            raise DatasetError(f"{self.name}: item {item.id!r} has no mask (task {self.task})")
        gt = read_gt(item.mask_path, self.max_pixels)
        for extra in item.extra_mask_paths:  # instance masks of one image: union
            gt = np.maximum(gt, read_gt(extra, self.max_pixels))
        return gt

    def load_ignore(self, item: Item) -> np.ndarray | None:
        """The map of the pixels to leave out of PxAP (OpenImages; foreground as a ground truth's,
        scoring.binarize_gt), raw as `load_gt`, or None."""
        if item.ignore_path is None:
            return None
        return read_gt(item.ignore_path, self.max_pixels)

    def _note_skip(self, item: Item, exc: ImageSkipped) -> None:
        first = item.id not in self.skipped
        self.skipped[item.id] = exc.skip.reason
        # name the first few; a folder of thousands of broken files must not flood the log
        if first:
            (log.warning if len(self.skipped) <= 5 else log.debug)("skipping %s: %s", item.id, exc.skip.reason)

    def iter_loaded(self, items: Iterable[Item], *, images: bool = True, workers: int = 1
                    ) -> Iterator[tuple[Item, np.ndarray | None, np.ndarray | None]]:
        """(item, image uint8 RGB, raw gt) in the order of `items`.

        The gt is None for box-only sets; with `images=False` the image is None (no decoding)
        except for shard sets, which decode whole samples anyway. `workers` > 1 decodes in that
        many threads (cv2 releases the GIL while decoding), at most 4 x `workers` items ahead, so
        memory stays bounded on large sets. An item whose image or ground truth is skipped (see
        the module docstring) is left out, with a warning, and recorded in `self.skipped`.
        """
        items = list(items)
        if self._iter_loaded is not None:
            yield from self._iter_loaded(items)
            return

        def load(item: Item):
            try:
                gt = None if self.task == "boxes" else self.load_gt(item)
                return item, (self.load_image(item) if images else None), gt
            except ImageSkipped as exc:
                return item, exc, None

        def loaded(results: Iterable[tuple]) -> Iterator[tuple]:
            for item, image, gt in results:
                if isinstance(image, ImageSkipped):
                    self._note_skip(item, image)
                    continue
                yield item, image, gt

        if workers <= 1:
            yield from loaded(map(load, items))
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        def ahead_of(pool) -> Iterator[tuple]:
            ahead: deque = deque()
            for item in items:
                ahead.append(pool.submit(load, item))
                if len(ahead) >= 4 * workers:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()

        with ThreadPoolExecutor(workers, thread_name_prefix="bgw-load") as pool:
            yield from loaded(ahead_of(pool))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class _Entry:
    build: Callable[[Path], Dataset]
    layout: str  # one line for `eval-seg --help` and errors
    source: str


DATASETS: Registry[_Entry] = Registry("dataset", also=("folder:PATH", "shards:SET"))


def _register(name: str, layout: str, source: str):
    """Decorator: register the builder `fn(root) -> Dataset` as dataset `name` of DATASETS."""

    def deco(fn: Callable[[Path], Dataset]):
        DATASETS.register(name, _Entry(fn, layout, source))
        return fn
    return deco


def dataset_names() -> list[str]:
    return [*DATASETS.names(), *DATASETS.also]


def _data_root(root: Path | str | None, name: str) -> Path:
    if root is None:
        root = os.environ.get(ENV_ROOT)
    if not root:
        raise DatasetError(f"dataset {name!r} needs a data root: pass --data-root DIR or set {ENV_ROOT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"data root {root} is not a folder: pass --data-root DIR or set {ENV_ROOT}")
    return root


def get_dataset(spec: str, root: Path | str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                shard_sets: Callable[[str], object] | None = None) -> Dataset:
    """The dataset named by `spec`: a DATASETS name (under `root` or $BGW_DATA_ROOT),
    `folder:PATH` or `shards:SET`. Images over `max_pixels` pixels are skipped (see iter_loaded).

    `shard_sets` reads `shards:SET` specs: a function of SET returning the set's val split by key,
    as shardset.open_split does (`.urls`, `.keys(url)`, `.samples(url, keys)`, `.manifest_name`,
    `.fingerprint`); the tools that score shard sets pass shardset.open_split."""
    if spec.startswith("folder:"):
        path = Path(spec[len("folder:"):]).expanduser()
        # tables name the folder ("ecssd"), so its rows line up with the named set's
        ds = _folder(path, name=path.resolve().name or spec, sizing=SHORT128)
    elif spec.startswith("shards:"):
        if shard_sets is None:
            raise DatasetError(f"{spec}: this tool reads no shard sets as benchmarks; name a dataset or folder:PATH")
        ds = _shards(spec[len("shards:"):], shard_sets)
    else:
        ds = DATASETS.get(spec).build(_data_root(root, spec))  # an unknown name: UnknownNameError
    ds.max_pixels = max_pixels
    return ds


def _find_dir(root: Path, candidates: Iterable[str], name: str, source: str) -> Path:
    candidates = list(candidates)
    for c in candidates:
        if (root / c).is_dir():
            return root / c
    raise DatasetError(f"{name}: no folder {' or '.join(str(root / c) for c in candidates)}; {source}")


def _need(path: Path, name: str, source: str, what: str = "") -> Path:
    if not path.exists():
        raise DatasetError(f"{name}: missing {what + ' ' if what else ''}{path}; {source}")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _paired(name: str, images: Path, masks: Path, source: str, sizing: Sizing) -> Dataset:
    """A flat images/ + masks/ layout: `<images>/<id>.<ext>` pairs with `<masks>/<id>.png`."""

    def test() -> list[Item]:
        items, missing = [], []
        mask_files = {p.stem: p for p in _images_in(masks)}
        for img in _images_in(images):
            m = mask_files.get(img.stem)
            if m is None:
                missing.append(img.stem)
            items.append(Item(img.stem, img, m))
        if missing:
            raise DatasetError(f"{name}: {len(missing)} image(s) have no mask in {masks} "
                               f"(first: {missing[0]!r}); each images/<id>.* needs masks/<id>.png")
        if not items:
            raise DatasetError(f"{name}: no images in {images}; {source}")
        return items

    return Dataset(name=name, sizing=sizing, root=images.parent, _list_test=test,
                   _list_train=lambda: _images_in(images), source=source)


def _folder(path: Path, *, name: str, sizing: Sizing) -> Dataset:
    source = "a folder: layout is PATH/images/<id>.jpg + PATH/masks/<id>.png"
    if not path.is_dir():
        raise DatasetError(f"{name}: {path} is not a folder; {source}")
    images = _find_dir(path, ["images"], name, source)
    masks = _find_dir(path, ["masks", "ground_truth_mask", "gt"], name, source)
    return _paired(name, images, masks, source, sizing)


# ---- table 1: CUB-200-2011 and Flowers-102 (CROP128)

_CUB_SOURCE = ("get CUB_200_2011.tgz and segmentations.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
               "and train_val_test_split.txt from https://github.com/mickaelChen/ReDO (datasplits/cub/)")


def _cub_split_ids(cub: Path, wanted: int) -> list[str]:
    """Relative image paths of one split of Chen et al. (ReDO): 0 train, 1 val, 2 test."""
    split_file = _need(cub / "train_val_test_split.txt", "cub", _CUB_SOURCE, "split file")
    images_txt = _need(cub / "images.txt", "cub", _CUB_SOURCE, "image list")
    paths = {}
    for line in images_txt.read_text().split("\n"):
        if line.strip():
            idx, rel = line.split()
            paths[int(idx)] = rel
    out = []
    for line in split_file.read_text().split("\n"):
        if line.strip():
            idx, split = (int(v) for v in line.split())
            if split == wanted:
                if idx not in paths:
                    raise DatasetError(f"cub: image {idx} of {split_file} is not in {images_txt}; {_CUB_SOURCE}")
                out.append(paths[idx])
    return out


@_register("cub", "CUB_200_2011/{images.txt, images/, segmentations/, train_val_test_split.txt}", _CUB_SOURCE)
def _cub(root: Path) -> Dataset:
    cub = _find_dir(root, ["CUB_200_2011"], "cub", _CUB_SOURCE)
    images = _need(cub / "images", "cub", _CUB_SOURCE, "image folder")
    # the segmentations archive unpacks beside CUB_200_2011/; ReDO moves it inside: take either
    segs = cub / "segmentations" if (cub / "segmentations").is_dir() else root / "segmentations"
    _need(segs, "cub", _CUB_SOURCE, "segmentation folder")

    def test() -> list[Item]:
        return [Item(rel.rsplit(".", 1)[0], images / rel, segs / (rel.rsplit(".", 1)[0] + ".png"))
                for rel in _cub_split_ids(cub, 2)]

    return Dataset("cub", CROP128, cub, _list_test=test, source=_CUB_SOURCE,
                   _list_train=lambda: [images / rel for rel in _cub_split_ids(cub, 0)])


_FLOWERS_SOURCE = ("get 102flowers.tgz, 102segmentations.tgz and setid.mat from "
                   "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into one folder 'flowers'")


def _flowers_split(flowers: Path, key: str) -> list[int]:
    setid = _need(flowers / "setid.mat", "flowers", _FLOWERS_SOURCE, "split file")
    try:
        from scipy.io import loadmat  # optional: only Flowers' split is a .mat file
    except ImportError as e:  # pragma: no cover - scipy is in the dev environment
        raise DatasetError(f"flowers: reading {setid} needs scipy (pip install scipy)") from e
    return [int(v) for v in np.asarray(loadmat(str(setid))[key]).ravel()]


def flowers_segmim_mask(segmim: np.ndarray) -> np.ndarray:
    """bool foreground of a Flowers `segmim_*.jpg` (RGB): background is painted pure blue, so a
    pixel is background when R == 0 or G == 0 or B == 254, the rule of ReDO's loader that the
    prior works' numbers use (the JPEG keeps most of the blue exact)."""
    r, g, b = segmim[..., 0], segmim[..., 1], segmim[..., 2]
    return ~((r == 0) | (g == 0) | (b == 254))


@_register("flowers", "flowers/{jpg/image_XXXXX.jpg, segmim/segmim_XXXXX.jpg, setid.mat}", _FLOWERS_SOURCE)
def _flowers(root: Path) -> Dataset:
    flowers = _find_dir(root, ["flowers", "flowers102", "102flowers"], "flowers", _FLOWERS_SOURCE)
    jpg = _need(flowers / "jpg", "flowers", _FLOWERS_SOURCE, "image folder")
    segmim = _need(flowers / "segmim", "flowers", _FLOWERS_SOURCE, "segmentation folder")

    # ReDO (Chen et al. 2019) swaps the official splits: it trains on `tstid` (6149 images) and
    # tests on `trnid` (1020); the numbers of table 1 follow it.
    def test() -> list[Item]:
        return [Item(f"image_{i:05d}", jpg / f"image_{i:05d}.jpg", segmim / f"segmim_{i:05d}.jpg")
                for i in _flowers_split(flowers, "trnid")]

    def gt(item: Item, max_pixels: int) -> np.ndarray:
        return flowers_segmim_mask(read_image(item.mask_path, max_pixels)).astype(np.uint8) * 255

    return Dataset("flowers", CROP128, flowers, _list_test=test, _gt_reader=gt, source=_FLOWERS_SOURCE,
                   _list_train=lambda: [jpg / f"image_{i:05d}.jpg" for i in _flowers_split(flowers, "tstid")])


# ---- table 2: saliency sets (SHORT128)

_ECSSD_SOURCE = ("get images.zip and ground_truth_mask.zip from "
                 "https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/dataset.html into 'ecssd'")
_DUTS_SOURCE = "get DUTS-TE.zip from http://saliencydetection.net/duts/ and unpack it under the data root"
_OMRON_SOURCE = ("get DUT-OMRON-image.zip and DUT-OMRON-gt-pixelwise.zip.zip from "
                 "http://saliencydetection.net/dut-omron/ and unpack both into 'DUT-OMRON'")


def _saliency_set(name: str, layout: str, source: str, bases: list[str], image_dirs: list[str],
                  mask_dirs: list[str]) -> None:
    """Register a saliency set laid out as BASE/IMAGES/<id>.jpg + BASE/MASKS/<id>.png (SHORT128);
    each list names the folder names accepted, the official one first."""

    def build(root: Path) -> Dataset:
        base = _find_dir(root, bases, name, source)
        images = _find_dir(base, image_dirs, name, source)
        masks = _find_dir(base, mask_dirs, name, source)
        return _paired(name, images, masks, source, SHORT128)

    _register(name, layout, source)(build)


_saliency_set("ecssd", "ecssd/{images/, ground_truth_mask/ | masks/}", _ECSSD_SOURCE,
              ["ecssd", "ECSSD"], ["images"], ["ground_truth_mask", "masks"])
_saliency_set("duts-te", "DUTS-TE/{DUTS-TE-Image/, DUTS-TE-Mask/}", _DUTS_SOURCE,
              ["DUTS-TE", "duts-te"], ["DUTS-TE-Image", "images"], ["DUTS-TE-Mask", "masks"])
# DUTS-TR: the train part, whose images gen-synth embeds (the paper scores on DUTS-TE: duts-te)
_saliency_set("duts", "DUTS-TR/{DUTS-TR-Image/, DUTS-TR-Mask/}",
              "get DUTS-TR.zip from http://saliencydetection.net/duts/ and unpack it under the data root",
              ["DUTS-TR", "duts-tr", "duts", "duts-tr-3000"], ["DUTS-TR-Image", "images"], ["DUTS-TR-Mask", "masks"])
_saliency_set("dut-omron", "DUT-OMRON/{DUT-OMRON-image/, pixelwiseGT-new-PNG/}", _OMRON_SOURCE,
              ["DUT-OMRON", "dut-omron"], ["DUT-OMRON-image", "images"], ["pixelwiseGT-new-PNG", "masks"])


# ---- ImageNet train images (the generator's embeddings; no test split here)

_IMAGENET_SOURCE = ("get ILSVRC2012_img_train.tar from https://image-net.org/ and unpack it to "
                    "imagenet/train/<wnid>/*.JPEG; for table 3 use imagenet-wsol")


@_register("imagenet", "imagenet/train/<wnid>/*.JPEG", _IMAGENET_SOURCE)
def _imagenet(root: Path) -> Dataset:
    base = _find_dir(root, ["imagenet", "ILSVRC2012", "ILSVRC"], "imagenet", _IMAGENET_SOURCE)
    train = _find_dir(base, ["train"], "imagenet", _IMAGENET_SOURCE)

    def listing() -> list[Path]:
        return [p for d in sorted(x for x in train.iterdir() if x.is_dir()) for p in _images_in(d)]

    return Dataset("imagenet", SHORT128, base, _list_train=listing, source=_IMAGENET_SOURCE)


# ---- table 3: WSOL sets in Choe et al. (2020)'s metadata layout (SHORT128)

_WSOL_SOURCE = ("clone https://github.com/clovaai/wsolevaluation into the data root as 'wsolevaluation' "
                "and run its dataset/prepare_*.sh scripts (images under wsolevaluation/dataset/{})")


def _wsol_image_ids(meta: Path) -> list[str]:
    return [ln.strip() for ln in (meta / "image_ids.txt").read_text().split("\n") if ln.strip()]


def _wsol(root: Path, name: str, subset: str, task: str, split: str = "test") -> Dataset:
    """`split`: the metadata folder scored, `test` or `val` (Choe et al.'s split for choosing
    hyper-parameters; for ILSVRC, ImageNetV2's 10,000 images under dataset/ILSVRC/val2/)."""
    source = _WSOL_SOURCE.format(subset)
    base = _find_dir(root, ["wsolevaluation"], name, source)
    data = _find_dir(base / "dataset", [subset], name, source)
    test_meta = base / "metadata" / subset / split
    for f in ("image_ids.txt", "localization.txt"):
        _need(test_meta / f, name, source, "metadata")

    def _id(image_id: str) -> str:
        return image_id.rsplit(".", 1)[0]

    def test() -> list[Item]:
        ids = _wsol_image_ids(test_meta)
        loc = [ln.split(",") for ln in (test_meta / "localization.txt").read_text().split("\n") if ln.strip()]
        if task == "boxes":
            # <path>,<x0>,<y0>,<x1>,<y1>; one line per box
            boxes: dict[str, list[tuple[int, int, int, int]]] = {}
            for image_id, *xyxy in loc:
                boxes.setdefault(image_id, []).append(tuple(int(float(v)) for v in xyxy))
            return [Item(_id(i), data / i, boxes=tuple(boxes.get(i, ()))) for i in ids]
        # <path>,<mask>,<ignore or empty>; one line per instance mask, the ignore mask on the first
        masks: dict[str, list[str]] = {}
        ignore: dict[str, str] = {}
        for image_id, mask, ign in loc:
            masks.setdefault(image_id, []).append(mask)
            if ign:
                ignore[image_id] = ign
        items = []
        for i in ids:
            ms = masks.get(i)
            if not ms:
                raise DatasetError(f"{name}: image {i} has no mask in {test_meta / 'localization.txt'}")
            items.append(Item(_id(i), data / i, data / ms[0], extra_mask_paths=tuple(data / m for m in ms[1:]),
                              ignore_path=data / ignore[i] if i in ignore else None))
        return items

    def train() -> list[Path]:
        meta = base / "metadata" / subset / "train"
        _need(meta / "image_ids.txt", name, source, "train metadata")
        return [data / i for i in _wsol_image_ids(meta)]

    return Dataset(name, SHORT128, data, task=task, _list_test=test, _list_train=train, source=source)


@_register("imagenet-wsol", "wsolevaluation/{metadata/ILSVRC/test/, dataset/ILSVRC/val/}",
           _WSOL_SOURCE.format("ILSVRC"))
def _imagenet_wsol(root: Path) -> Dataset:
    return _wsol(root, "imagenet-wsol", "ILSVRC", "boxes")


# the paper's Table 3 ImageNet set: "10,000 validation images" with "several annotated bounding boxes
# for each image", after Choe et al. Their ILSVRC splits hold 10,000 images in one place only, `val`
# (ImageNetV2, threshold 0.7, which their dataset/prepare_imagenet.sh unpacks to val2/, with boxes
# drawn for it); `test` (imagenet-wsol) is the 50,000 ILSVRC 2012 validation images
@_register("imagenet-wsol-val", "wsolevaluation/{metadata/ILSVRC/val/, dataset/ILSVRC/val2/}",
           _WSOL_SOURCE.format("ILSVRC"))
def _imagenet_wsol_val(root: Path) -> Dataset:
    return _wsol(root, "imagenet-wsol-val", "ILSVRC", "boxes", split="val")


@_register("cub-wsol", "wsolevaluation/{metadata/CUB/test/, dataset/CUB/<class>/}", _WSOL_SOURCE.format("CUB"))
def _cub_wsol(root: Path) -> Dataset:
    return _wsol(root, "cub-wsol", "CUB", "boxes")


@_register("openimages-wsol", "wsolevaluation/{metadata/OpenImages/test/, dataset/OpenImages/test/}",
           _WSOL_SOURCE.format("OpenImages"))
def _openimages_wsol(root: Path) -> Dataset:
    return _wsol(root, "openimages-wsol", "OpenImages", "pxap")


# ---- shards:SET, the validation part of a synthetic shard set, read by the `shard_sets` reader
# (shardset.open_split checks each shard against its manifest record while it streams: a changed
# shard is a DatasetError naming it)


def _shards(set_spec: str, open_split: Callable[[str], object]) -> Dataset:
    name = f"shards:{set_spec}"
    try:
        split = open_split(set_spec)
    except UserError as e:  # the spec names no readable set: the reader's own one line
        raise DatasetError(f"{name}: cannot resolve the shard set ({first_line(e)})") from None
    urls = list(split.urls)
    if not urls:
        raise DatasetError(f"{name}: the shard set has no 'val' shards; generate some with gen-synth --val-shards")

    def test() -> list[Item]:
        items = []
        for url in urls:
            try:  # keys only: listing needs no image decoding
                items += [Item(key, url, key=key) for key in split.keys(url)]
            except UserError as e:  # a shard that differs from its manifest record, or will not open
                raise DatasetError(f"{name}: {first_line(e)}") from None
        return items

    def loaded(items: list[Item]) -> Iterator[tuple[Item, np.ndarray, np.ndarray]]:
        # stream each needed shard once; yield in the order asked for
        wanted: dict[str, list[Item]] = {}
        for it in items:
            wanted.setdefault(str(it.image_path), []).append(it)
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        done_urls = set()
        for it in items:
            url = str(it.image_path)
            if it.key not in cache and url not in done_urls:
                try:
                    for key, image, mask in split.samples(url, {w.key for w in wanted[url]}):
                        cache[key] = (image, mask)
                except UserError as e:
                    raise DatasetError(f"{name}: {first_line(e)}") from None
                done_urls.add(url)
            if it.key not in cache:
                raise DatasetError(f"{name}: sample {it.key!r} is not in {url}")
            image, mask = cache.pop(it.key)
            yield it, image, mask

    # tables name the set by its manifest name (the spec is in results.json)
    display = f"shards:{split.manifest_name}" if split.manifest_name else name
    return Dataset(display, SHORT128, None, _list_test=test, _iter_loaded=loaded,
                   source="a shard set written by gen-synth",
                   info={"shardset": split.manifest_name, "fingerprint": split.fingerprint, "val_shards": len(urls)})
