"""Segmentation data: splits of (image, mask) examples and the tf.data pipelines over them.

An example is ``(image, mask)``: image float32 (H, W, 3) in [0, 255] (models normalise inside
their own graph), mask int32 (H, W) with class indices and ``IGNORE_LABEL`` (255) for void.

Example:
  >>> from tfseg import data
  >>> train = data.load("scenes", "train", num_images=8)
  >>> batches = data.train_pipeline(train, crop_size=64, batch_size=4, augment=True, seed=0)
"""

from tfseg.data.augment import Augment
from tfseg.data.camvid_info import CAMVID_INFO
from tfseg.data.info import IGNORE_LABEL, DatasetInfo, default_palette
from tfseg.data.pipeline import eval_pipeline, train_pipeline
from tfseg.data.registry import available, load
from tfseg.data.scenes import SCENES_INFO, ScenesSplit, scenes
from tfseg.data.splits import ArraySplit, FileSplit, Split, camvid, check, folder

__all__ = [
    "Augment",
    "ArraySplit",
    "CAMVID_INFO",
    "DatasetInfo",
    "FileSplit",
    "IGNORE_LABEL",
    "SCENES_INFO",
    "ScenesSplit",
    "Split",
    "available",
    "camvid",
    "check",
    "default_palette",
    "eval_pipeline",
    "folder",
    "load",
    "scenes",
    "train_pipeline",
]
