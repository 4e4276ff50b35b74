"""Evaluation at the full label resolution, with a per-class table, overlays and a confusion plot.

One loop, :func:`stream`, runs a split's images once through one or more predictors
(``tfseg.predictors``: a Keras model, a TFLite file, a SavedModel) and feeds every batch to
accumulators: :class:`ConfusionMatrix` (optionally with a per-class logit offset),
:class:`Agreement` between two predictors, :class:`Overlays`. :func:`evaluate`,
``tfseg.calibrate.fit_logit_adjustment`` and ``tfseg.export.verify`` are its users.

    predictor = as_predictor("exports/student_int8.tflite")
    confusion = ConfusionMatrix(predictor, split.info.num_classes)
    stream([predictor], split, [confusion], batch_size=4)
    confusion.scores()["miou"]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfseg import data as seg_data
from tfseg._keras import keras, tf
from tfseg.checkpoint import deployable, write_json
from tfseg.data.info import IGNORE_LABEL
from tfseg.metrics import confusion_matrix, format_scores, scores_from_confusion
from tfseg.predictors import as_predictor
from tfseg.predictors import label_size_logits as label_size_logits  # re-exported: moved to tfseg.predictors
from tfseg.predictors import model_input_size as model_input_size  # re-exported
from tfseg.report import overlay_panel, plot_confusion, save_png
from tfseg.train import progress_verbosity


class Batch:
    """One batch of the stream: its masks, and each predictor's images and predictions, computed
    once when an accumulator first asks for them.

    Attributes:
      masks: int (N, H, W) labels at their full resolution.
      label_size: (H, W).
    """

    def __init__(self, images, masks, image_size):
        self.masks = np.asarray(masks)
        self.label_size = tuple(self.masks.shape[1:3])
        self._images = {image_size: images}
        self._logits, self._labels = {}, {}

    def __len__(self):
        return len(self.masks)

    def images(self, predictor):
        """The raw images at the predictor's input size (resized here when the predictors differ)."""
        size = predictor.input_size
        if size not in self._images:
            self._images[size] = tf.image.resize(self._images[None], size, method="bilinear")
        return self._images[size]

    def logits(self, predictor) -> np.ndarray:
        """The predictor's logits at the label size."""
        if predictor not in self._logits:
            self._logits[predictor] = predictor.logits(self.images(predictor), self.label_size)
        return self._logits[predictor]

    def labels(self, predictor) -> np.ndarray:
        """The predictor's class map at the label size."""
        if predictor not in self._labels:
            self._labels[predictor] = (np.argmax(self._logits[predictor], axis=-1) if predictor in self._logits
                                       else predictor.class_map(self.images(predictor), self.label_size))
        return self._labels[predictor]


class ConfusionMatrix:
    """Accumulates a predictor's confusion matrix (rows truth, columns prediction).

    Args:
      predictor: whose predictions are counted.
      num_classes, ignore_label: of the data.
      bias: optional per-class offset added to the logits before the argmax (logit adjustment).
    """

    def __init__(self, predictor, num_classes: int, ignore_label: int = IGNORE_LABEL, bias=None):
        self.predictor, self.num_classes, self.ignore_label, self.bias = predictor, num_classes, ignore_label, bias
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, batch: Batch):
        if self.bias is None:
            labels = batch.labels(self.predictor)
        else:
            labels = np.argmax(batch.logits(self.predictor) + self.bias, axis=-1)
        self.matrix += confusion_matrix(batch.masks, labels, self.num_classes, self.ignore_label)

    def scores(self, class_names=None) -> dict:
        """``tfseg.metrics.scores_from_confusion`` of the matrix so far."""
        return scores_from_confusion(self.matrix, class_names)


class Agreement:
    """Accumulates the fraction of pixels where two predictors' class maps agree."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.same = self.total = 0
        self.per_image: list[float] = []

    def update(self, batch: Batch):
        first, second = batch.labels(self.first), batch.labels(self.second)
        same = (first == second).reshape(len(first), -1).sum(axis=1)
        self.same += int(same.sum())
        self.total += int(first.size)
        self.per_image.extend(float(count) / first[0].size for count in same)

    @property
    def fraction(self) -> float:
        return self.same / self.total if self.total else float("nan")


class Overlays:
    """Collects the first ``count`` overlay panels (image | ground truth | prediction)."""

    def __init__(self, predictor, info, count: int):
        self.predictor, self.info, self.count = predictor, info, count
        self.panels: list[np.ndarray] = []

    def update(self, batch: Batch):
        wanted = min(len(batch), self.count - len(self.panels))
        if wanted <= 0:
            return
        images, labels = np.asarray(batch.images(self.predictor)), batch.labels(self.predictor)
        for i in range(wanted):
            self.panels.append(overlay_panel(images[i], batch.masks[i], labels[i], self.info))


def _is_split(data) -> bool:
    return hasattr(data, "dataset") and hasattr(data, "info")


def _pairs(data):
    """(image float32 (H, W, 3), mask (H, W)) pairs from a ``tf.data.Dataset`` (batched or not)
    or a tuple of arrays ``(images, masks)``."""
    if isinstance(data, tf.data.Dataset):
        items = data.as_numpy_iterator()
    else:
        images, masks = data
        items = zip(np.asarray(images), np.asarray(masks))
    for image, mask in items:
        image, mask = np.asarray(image, np.float32), np.asarray(mask)
        if image.ndim == 4:  # a batched dataset
            yield from zip(image, mask)
        else:
            yield image, mask


def _batches(data, image_size, batch_size):
    """(images at ``image_size`` or their own size if ``None``, masks) batches: a split through
    ``tfseg.data.eval_pipeline``; other data one image at a time (masks may differ in size)."""
    if _is_split(data):
        yield from seg_data.eval_pipeline(data, image_size, batch_size)
        return
    for image, mask in _pairs(data):
        images = image[None]
        if image_size is not None:
            images = tf.image.resize(images, image_size, method="bilinear").numpy()
        yield images, mask[None]


def stream(predictors, data, accumulators, *, batch_size: int = 4, max_images: int | None = None,
           verbose=0) -> int:
    """Runs the images of ``data`` once through every predictor and feeds each batch to the accumulators.

    Images are resized (bilinear) to each predictor's input size; predictions are compared with
    the masks at their full resolution. When all predictors take the same size, the resizing
    happens in the input pipeline (``tfseg.data.eval_pipeline``).

    Args:
      predictors: ``tfseg.predictors.Predictor`` objects (``as_predictor`` makes them).
      data: a tfseg split, a ``tf.data.Dataset`` of ``(image, mask)`` (batched or not, run one
        image at a time), or a tuple ``(images, masks)`` of arrays; images RGB in [0, 255].
      accumulators: objects with ``update(batch: Batch)`` (:class:`ConfusionMatrix`,
        :class:`Agreement`, :class:`Overlays`, your own).
      batch_size: images per batch for a split.
      max_images: stop after this many images.
      verbose: 0 is silent; otherwise a progress bar (a final line only off a terminal).

    Returns:
      The number of images streamed.
    """
    sizes = {predictor.input_size for predictor in predictors}
    size = next(iter(sizes)) if len(sizes) == 1 else None
    target = len(data) if _is_split(data) else None
    if max_images is not None:
        target = max_images if target is None else min(target, max_images)
    progress = keras.utils.Progbar(target, unit_name="image", verbose=progress_verbosity(verbose))
    count = 0
    for images, masks in _batches(data, size, batch_size):
        if max_images is not None:
            if count >= max_images:
                break
            images, masks = images[: max_images - count], masks[: max_images - count]
        batch = Batch(images, masks, size)
        for accumulator in accumulators:
            accumulator.update(batch)
        count += len(batch)
        progress.add(len(batch))
    return count


def evaluate(model, split, *, image_size=None, batch_size: int = 4, out_dir=None, num_overlays: int = 4, verbose="auto") -> dict:
    """Scores a model on a split at the split's own label resolution.

    Images are resized to the model's input size, the logits are resized back up to each mask's
    size, and every labelled pixel of the original mask counts.

    Args:
      model: a Keras model from images in [0, 255] to logits, an exported model (a ``.tflite``
        file or a SavedModel directory) or a ``tfseg.predictors.Predictor``.
      split: a tfseg data split (``tfseg.data.load(...)``).
      image_size: (height, width) fed to the model; required when the model accepts any size.
      batch_size: evaluation batch size.
      out_dir: if given, writes ``scores.json``, ``per_class.txt``, ``confusion.png`` and
        ``overlays/*.png`` (image | ground truth | prediction) there.
      num_overlays: how many overlay pictures to write.
      verbose: 0 is silent; otherwise a progress bar (a final line only off a terminal) and the
        per-class table are printed.

    Returns:
      The scores dict of ``tfseg.metrics.scores_from_confusion`` plus ``confusion_matrix``.

    Example:
      >>> evaluate(model, tfseg.data.load("camvid", "test"), image_size=(360, 480))["miou"]
      >>> evaluate("exports/student_int8.tflite", tfseg.data.load("camvid", "test"))["miou"]
    """
    info = split.info
    predictor = as_predictor(model, image_size)
    predictor.check_classes(info.num_classes)
    confusion = ConfusionMatrix(predictor, info.num_classes, info.ignore_label)
    overlays = Overlays(predictor, info, num_overlays)
    stream([predictor], split, [confusion, overlays], batch_size=batch_size, verbose=verbose)
    scores = confusion.scores(info.class_names)
    scores["confusion_matrix"] = confusion.matrix
    if verbose:
        print(format_scores(scores, info.class_names))
    if out_dir is not None:
        write_report(out_dir, scores, info, overlays.panels)
    return scores


class LabelResolutionValidation(keras.callbacks.Callback):
    """Scores the model on a split at full label resolution after every epoch, as ``val_*`` logs.

    In-fit validation compares at the training input size, which is not the reported protocol
    when training on crops (CamVid: 288x384 crops, scored on 360x480 labels). This callback runs
    :func:`evaluate` instead and puts ``val_miou``, ``val_pixel_accuracy`` and ``val_mean_dice``
    into the epoch logs, so pass it before the checkpoint and the CSV log (``fit(...,
    epoch_scorers=[...])``).

    Args:
      split: the validation split.
      image_size: (height, width) fed to the model.
      rebuild: for models built at a fixed size other than ``image_size``, a function
        ``model -> model at image_size`` (``tfseg.models.rebuild``); it is called once, later
        epochs copy the weights into the rebuilt model.
      batch_size: evaluation batch size.
    """

    LOGGED = ("miou", "pixel_accuracy", "mean_dice")

    def __init__(self, split, image_size, rebuild=None, batch_size: int = 4):
        super().__init__()
        self.split, self.image_size, self.rebuild, self.batch_size = split, tuple(image_size), rebuild, batch_size
        self._eval_model = None

    def _model_at_size(self):
        model = deployable(self.model)  # a Distiller is scored by its student
        fixed = tuple(model.input_shape[1:3])
        if None in fixed or fixed == self.image_size:
            return model
        if self.rebuild is None:
            raise ValueError(
                f"model {model.name!r} is built for {fixed[0]}x{fixed[1]} inputs; validating at "
                f"{self.image_size[0]}x{self.image_size[1]} needs rebuild= (tfseg.models.rebuild)"
            )
        if self._eval_model is None:
            self._eval_model = self.rebuild(model)
        else:
            self._eval_model.set_weights(model.get_weights())
        return self._eval_model

    def on_epoch_end(self, epoch, logs=None):
        scores = evaluate(self._model_at_size(), self.split, image_size=self.image_size,
                          batch_size=self.batch_size, num_overlays=0, verbose=0)
        if logs is not None:
            logs.update({f"val_{key}": float(scores[key]) for key in self.LOGGED})


def write_report(out_dir: str | os.PathLike, scores: dict, info, overlays=()) -> Path:
    out = Path(out_dir)
    write_json(out / "scores.json", {k: v for k, v in scores.items()})
    (out / "per_class.txt").write_text(format_scores(scores, info.class_names) + "\n")
    plot_confusion(scores["confusion_matrix"], info.class_names, out / "confusion.png")
    for i, panel in enumerate(overlays):
        save_png(out / "overlays" / f"{i:03d}.png", panel)
    return out
