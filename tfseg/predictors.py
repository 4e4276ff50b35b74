"""Predictors: one interface over the things tfseg scores — a Keras model, a TFLite file, a SavedModel.

A predictor takes a batch of raw images (float32, pixels in [0, 255]) at its ``input_size``
(the evaluation pipeline resizes them; ``None`` means each image at its own size) and returns
logits or a class map at the labels' size (``label_size``), following the evaluation protocol:
logits, not labels, are resized bilinearly to the label size, then the argmax is taken.
``tfseg.evaluate.stream`` runs a split through one or more of them once.

- ``KerasPredictor(model, image_size=None)``: the model's logits (a ``Distiller`` runs its student).
- ``TFLitePredictor(path_or_bytes, num_threads=1)``: LiteRT, batch 1, so it runs a batch image by
  image; integer inputs and outputs are (de)quantized by ``tfseg.tflite.run_tflite``. Exports
  that end before the model's final upsampling (``tfseg.output_tail``) are mapped onto the input
  pixels as their metadata's ``output.upsampling`` says: low-resolution logits bilinearly (what
  the cut layer computed), class maps with nearest; then to the label size as above.
- ``SavedModelPredictor(path)``: the ``serving_default`` signature of
  ``tfseg.export.to_saved_model`` (uint8 images of any size, resized inside the graph).

Example:
  >>> predictor = as_predictor("exports/student_int8.tflite")
  >>> predictor.input_size, predictor.num_classes
  ((360, 480), 11)
  >>> labels = predictor.class_map(images, (360, 480))   # (N, 360, 480)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfseg._keras import tf
from tfseg.checkpoint import deployable
from tfseg.errors import ConfigError
from tfseg.tflite import interpreter, read_metadata, run_tflite
from tfseg.train import check_output_classes


def model_input_size(model, image_size=None) -> tuple[int, int]:
    """The (height, width) to feed: the model's fixed input size, else ``image_size``."""
    fixed = tuple(model.input_shape[1:3])
    if None not in fixed:
        if image_size is not None and tuple(image_size) != fixed:
            raise ValueError(f"model {model.name!r} takes {fixed[0]}x{fixed[1]} inputs, not {image_size[0]}x{image_size[1]}")
        return fixed
    if image_size is None:
        raise ValueError(f"model {model.name!r} accepts any input size: pass image_size=(height, width)")
    return tuple(image_size)


def resize_to_labels(logits, label_size):
    """Logits bilinearly resized to the labels' (height, width): the evaluation protocol."""
    # Upsample logits, not labels, to the label size: argmax after bilinear is the standard protocol.
    return tf.image.resize(logits, label_size, method="bilinear")


def label_size_logits(model):
    """A function ``(images, label_hw) -> logits`` bilinearly resized to the labels' size."""

    @tf.function(reduce_retracing=True)
    def predict(images, label_hw):
        return resize_to_labels(model(images, training=False), label_hw)

    return predict


class Predictor:
    """Images in, logits or class maps at the label size out.

    Attributes:
      kind: ``"keras"``, ``"tflite"`` or ``"saved_model"``.
      name: for messages.
      input_size: (height, width) of the images it takes, or ``None`` for each image's own size.
      num_classes: output channels.
      metadata: the ``tfseg/1`` description of an exported model (``None`` if it has none).
    """

    kind = "predictor"
    metadata = None

    def __init__(self, name: str, input_size, num_classes: int):
        self.name = name
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)
        self.num_classes = int(num_classes)

    @property
    def quantization(self) -> str:
        """The export's quantization as its metadata records it (``"unknown"`` without metadata)."""
        return (self.metadata or {}).get("quantization", "unknown")

    def logits(self, images, label_size) -> np.ndarray:
        """float32 (N, *label_size, num_classes) logits (or scores with the same argmax) of raw images."""
        raise NotImplementedError

    def class_map(self, images, label_size) -> np.ndarray:
        """int (N, *label_size) class indices of raw images."""
        return np.argmax(self.logits(images, label_size), axis=-1)

    def check_classes(self, num_classes: int):
        """Raises ConfigError when the predictor's outputs are not ``num_classes`` classes."""
        if self.num_classes != num_classes:
            raise ConfigError(f"{self.name} outputs {self.num_classes} classes but the data has {num_classes}")

    def check_size(self, image_size):
        """Raises ValueError when ``image_size`` is given and is not the size the predictor takes."""
        if image_size is not None and self.input_size is not None and tuple(image_size) != self.input_size:
            raise ValueError(f"{self.name} takes {self.input_size[0]}x{self.input_size[1]} inputs, "
                             f"not {image_size[0]}x{image_size[1]}")

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r}, input_size={self.input_size}, num_classes={self.num_classes})"


class KerasPredictor(Predictor):
    """A Keras model (or a ``Distiller``'s student) from raw images to logits at input resolution.

    Args:
      model: the model.
      image_size: (height, width) to feed; required when the model accepts any size.
    """

    kind = "keras"

    def __init__(self, model, image_size=None):
        self.model = deployable(model)
        super().__init__(f"model {self.model.name!r}", model_input_size(self.model, image_size),
                         self.model.output_shape[-1])
        self._logits = label_size_logits(self.model)
        logits = self._logits

        @tf.function(reduce_retracing=True)
        def labels(images, label_hw):
            return tf.argmax(logits(images, label_hw), axis=-1, output_type=tf.int32)

        self._labels = labels

    def logits(self, images, label_size) -> np.ndarray:
        return self._logits(images, tf.constant(label_size, tf.int32)).numpy()

    def class_map(self, images, label_size) -> np.ndarray:
        return self._labels(images, tf.constant(label_size, tf.int32)).numpy()

    def check_classes(self, num_classes: int):
        check_output_classes(self.model, num_classes)


class TFLitePredictor(Predictor):
    """A TFLite model run in LiteRT, one image at a time (exports have a batch of 1).

    Args:
      path_or_bytes: a ``.tflite`` file or its bytes.
      num_threads: LiteRT threads.

    Raises:
      FileNotFoundError: no such file.
      ImportError: ai-edge-litert is not installed.
    """

    kind = "tflite"

    def __init__(self, path_or_bytes, num_threads: int = 1):
        if isinstance(path_or_bytes, (bytes, bytearray)):
            self.path, flatbuffer = None, bytes(path_or_bytes)
        else:
            self.path = Path(path_or_bytes)
            flatbuffer = self.path.read_bytes()
        self._runner = interpreter(flatbuffer, num_threads)
        self.metadata = read_metadata(flatbuffer)
        (inp,), (out,) = self._runner.get_input_details(), self._runner.get_output_details()
        name = str(self.path) if self.path else "TFLite model"
        output = (self.metadata or {}).get("output", {})
        self.output_kind = output.get("kind", "logits")
        self._upsampling = output.get("upsampling")
        if self.output_kind in ("low_res_logits", "class_map") and not self._upsampling:
            raise ConfigError(f"{name}: its {self.output_kind} output has no output.upsampling in its metadata")
        classes = len(self.metadata["classes"]) if self.output_kind == "class_map" else out["shape"][-1]
        super().__init__(name, inp["shape"][1:3], classes)

    def _outputs(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        return np.concatenate([run_tflite(self._runner, images[i : i + 1]) for i in range(len(images))])

    def _on_input_grid(self, outputs, method: str):
        """Low-resolution outputs (N, h, w, K) resized and cropped onto the input pixels, as
        ``output.upsampling`` says (half-pixel centres, like the model's own upsampling layer)."""
        if self._upsampling is None:
            return outputs
        (top, left), (height, width) = self._upsampling["offset"], self.input_size
        resized = tf.image.resize(outputs, self._upsampling["size"], method=method)
        return resized[:, top : top + height, left : left + width]

    def logits(self, images, label_size) -> np.ndarray:
        if self.output_kind == "class_map":  # one-hot scores: the same argmax
            return np.eye(self.num_classes, dtype=np.float32)[self.class_map(images, label_size)]
        logits = self._on_input_grid(self._outputs(images), "bilinear")
        return resize_to_labels(logits, label_size).numpy()

    def class_map(self, images, label_size) -> np.ndarray:
        if self.output_kind != "class_map":
            return super().class_map(images, label_size)
        ids = self._on_input_grid(self._outputs(images).astype(np.int32)[..., None], "nearest")
        return tf.image.resize(ids, label_size, method="nearest").numpy()[..., 0]


class SavedModelPredictor(Predictor):
    """The ``serving_default`` signature of a tfseg SavedModel (``tfseg.export.to_saved_model``).

    It takes uint8 images of any size (raw images are rounded to uint8) and returns the class map
    and probabilities at the image's size, so ``input_size`` is ``None``: the stream feeds each
    image at its own size. Its ``logits`` are log-probabilities (logits up to a per-pixel
    constant: the same argmax, and the same under a per-class offset).

    Raises:
      FileNotFoundError: ``path`` is not a SavedModel directory.
    """

    kind = "saved_model"

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "saved_model.pb").exists():
            raise FileNotFoundError(f"{self.path}: not a SavedModel directory")
        self._serve = tf.saved_model.load(str(self.path)).signatures["serving_default"]
        description = self.path / "assets.extra" / "tfseg.json"
        self.metadata = json.loads(description.read_text()) if description.exists() else None
        super().__init__(str(self.path), None, self._serve.structured_outputs["probabilities"].shape[-1])

    def _serving(self, images) -> dict:
        pixels = np.clip(np.round(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
        return self._serve(images=tf.constant(pixels))

    def logits(self, images, label_size) -> np.ndarray:
        log_probabilities = tf.math.log(self._serving(images)["probabilities"])
        if tuple(log_probabilities.shape[1:3]) != tuple(label_size):
            log_probabilities = resize_to_labels(log_probabilities, label_size)
        return log_probabilities.numpy()

    def class_map(self, images, label_size) -> np.ndarray:
        class_map = self._serving(images)["class_map"].numpy()
        if class_map.shape[1:3] == tuple(label_size):
            return class_map
        return tf.image.resize(class_map[..., None], label_size, method="nearest").numpy()[..., 0]

    def check_size(self, image_size):
        served = (self.metadata or {}).get("input", {})
        size = (served.get("height"), served.get("width"))
        if image_size is not None and None not in size and tuple(image_size) != size:
            raise ValueError(f"{self.name} runs its model at {size[0]}x{size[1]} (it resizes inside), "
                             f"not {image_size[0]}x{image_size[1]}")


def load_predictor(path, *, num_threads: int = 1) -> Predictor:
    """A ``TFLitePredictor`` for a file, a ``SavedModelPredictor`` for a SavedModel directory.

    Raises:
      FileNotFoundError: ``path`` is neither.
    """
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").exists():
        return SavedModelPredictor(path)
    if path.is_file():
        return TFLitePredictor(path, num_threads=num_threads)
    raise FileNotFoundError(f"{path}: neither a .tflite file nor a SavedModel directory")


def as_predictor(model, image_size=None, *, num_threads: int = 1) -> Predictor:
    """``model`` as a predictor: a predictor is returned as is, a path is loaded
    (:func:`load_predictor`), anything else is taken for a Keras model.

    Args:
      model: a ``Predictor``, a ``.tflite`` file or SavedModel directory, or a Keras model.
      image_size: (height, width) for a Keras model of any input size; for the others it must
        be the size they run at, if given.
      num_threads: LiteRT threads for a TFLite file.

    Raises:
      ValueError: ``image_size`` differs from the size the model takes, or is missing.
      FileNotFoundError: a path that is neither a TFLite file nor a SavedModel.
    """
    if isinstance(model, (str, os.PathLike)):
        model = load_predictor(model, num_threads=num_threads)
    if not isinstance(model, Predictor):
        return KerasPredictor(model, image_size)
    model.check_size(image_size)
    return model


__all__ = [
    "KerasPredictor",
    "Predictor",
    "SavedModelPredictor",
    "TFLitePredictor",
    "as_predictor",
    "label_size_logits",
    "load_predictor",
    "model_input_size",
    "resize_to_labels",
]
