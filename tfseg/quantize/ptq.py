"""Post-training quantization: full-integer int8 calibrated on training images, float16, dynamic range.

Full-integer int8 needs the range of every activation, measured by running the float model on a
*representative dataset*. It should look like what the model will see: random images of the
training split, resized to the model's input size the way evaluation resizes them. A hundred is
the usual amount; the choice is seeded, so two exports of one model are the same file.

Example:
  >>> from tfseg.quantize.ptq import post_training_quantize
  >>> post_training_quantize(model, "teacher_int8.tflite", "int8", calibration_split=train, info=train.info)
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import tf
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
    from tfseg.data.pipeline import _unbatched

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


def post_training_quantize(
    model,
    path,
    mode: str = "int8",
    *,
    calibration_split=None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    input_size=None,
    **export_options,
):
    """Quantizes a float model after training and writes it as TFLite (``tfseg.export.to_tflite``).

    Args:
      model: a float Keras model (or Distiller).
      path: the ``.tflite`` file.
      mode: ``"int8"`` (full integer, calibrated on ``calibration_split``), ``"float16"`` or
        ``"dynamic"`` (int8 weights, float activations; no calibration).
      calibration_split: for int8: the training split to draw representative images from.
      calibration_images: how many.
      seed: which ones (see ``representative_images``).
      input_size: (height, width), for models of unknown input size.
      **export_options: passed to ``to_tflite`` (``info``, ``io_dtype``, ``model_name``,
        ``verify_data``).

    Returns:
      ``to_tflite``'s result dict.

    Raises:
      ConfigError: unknown mode, int8 without a calibration split, a layer that cannot be converted.

    Example:
      >>> post_training_quantize(model, "student_int8.tflite", calibration_split=train, info=train.info,
      ...                        verify_data=test)["verify"]["agreement"]
    """
    from tfseg.checkpoint import deployable
    from tfseg.export import input_size_of, to_tflite

    if mode not in PTQ_MODES:
        raise ConfigError(f"post-training quantization mode must be one of {PTQ_MODES}, got {mode!r}")
    model = deployable(model)
    representative = None
    if mode == "int8":
        if calibration_split is None:
            raise ConfigError("int8 post-training quantization needs calibration_split (e.g. the training split)")
        size = input_size_of(model, input_size)
        representative = representative_images(calibration_split, size, calibration_images, seed)
    return to_tflite(model, path, mode, representative_data=representative, input_size=input_size, **export_options)


__all__ = ["DEFAULT_CALIBRATION_IMAGES", "PTQ_MODES", "post_training_quantize", "representative_images"]
