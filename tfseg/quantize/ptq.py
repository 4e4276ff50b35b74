"""Post-training quantization: full-integer int8 calibrated on training images, float16, dynamic range.

Full-integer int8 needs the range of every activation, measured by running the float model on a
*representative dataset*. It should look like what the model will see: random images of the
training split, resized to the model's input size the way evaluation resizes them. A hundred is
the usual amount; the choice is seeded, so two exports of one model are the same file.

Example (the export itself is ``tfseg.export.post_training_quantize`` / ``to_tflite``):
  >>> calibration = representative_images(train, (360, 480), count=100)
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import tf
from tfseg.data.pipeline import _unbatched
from tfseg.errors import ConfigError
from tfseg.options import PTQ_MODES

DEFAULT_CALIBRATION_IMAGES = 100


def representative_images(split, image_size, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """``count`` random images of ``split`` (without repeats), resized to ``image_size``.

    Args:
      split: a tfseg split (``tfseg.data.load(name, "train")``); masks are not read for anything.
      image_size: (height, width) of the model's input; images are resized bilinearly, as in
        ``tfseg.data.eval_pipeline``.
      count: how many images (all of them if the split is smaller).
      seed: which images: the same seed gives the same images in the same order.

    Returns:
      float32 array (N, height, width, 3), pixels in [0, 255].

    Raises:
      ConfigError: ``count`` < 1 or a bad size.

    Example:
      >>> calibration = representative_images(tfseg.data.load("camvid", "train"), (360, 480))
      >>> calibration.shape
      (100, 360, 480, 3)
    """
    if count < 1:
        raise ConfigError(f"count must be >= 1 calibration image, got {count}")
    height, width = (int(v) for v in image_size)
    if min(height, width) < 1:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    # Shuffled over indices before decoding (tfseg splits), so only the chosen images are read.
    images = (
        _unbatched(split, shuffle=True, seed=seed)
        .take(count)
        .map(lambda image, mask: tf.image.resize(image, (height, width), method="bilinear"))
        .batch(min(count, 16))
    )
    return np.concatenate([batch for batch in images.as_numpy_iterator()]).astype(np.float32)


__all__ = ["DEFAULT_CALIBRATION_IMAGES", "PTQ_MODES", "representative_images"]
