"""benchdata: the benchmark datasets and their input sizing, shared by the generator (train
images for the embeddings), the trainer (--eval-dataset) and the evaluator.

numpy + OpenCV only; it imports `core` and no other package of this project (a shard set's val
split is read through the `shard_sets` reader its callers pass: shardset.open_split).

    io.py           DatasetError, ImageSkipped, read_image, read_gt (core.images' reader, pixel limit)
    sizing.py       Sizing: crop or short at a size (CROP128 / SHORT128: the paper's); prepare_image,
                    prepare_gt, eval_shape, full_size_map, saved_map; restore_map
    datasets.py     Item, Dataset, the registry of named layouts, get_dataset, folder:PATH, shards:SET
    predictions.py  iter_model_maps: a model's maps over a dataset under its sizing
"""
from .datasets import DATASETS, ENV_ROOT, Dataset, Item, dataset_names, get_dataset
from .io import IMAGE_EXTS, DatasetError, ImageSkipped, read_gt, read_image
from .sizing import CROP128, INPUT_SIZE, SHORT128, Sizing, restore_map

__all__ = ["DATASETS", "ENV_ROOT", "Dataset", "Item", "dataset_names", "get_dataset", "IMAGE_EXTS", "DatasetError",
           "ImageSkipped", "read_gt", "read_image", "INPUT_SIZE", "CROP128", "SHORT128", "Sizing", "restore_map"]
