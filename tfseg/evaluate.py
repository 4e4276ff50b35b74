"""Evaluation at the full label resolution, with a per-class table, overlays and a confusion plot."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfseg import data as seg_data
from tfseg._keras import keras, tf
from tfseg.checkpoint import deployable, write_json
from tfseg.metrics import confusion_matrix, format_scores, scores_from_confusion
from tfseg.report import overlay_panel, plot_confusion, save_png
from tfseg.train import check_output_classes, progress_verbosity


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


def label_size_logits(model):
    """A function ``(images, label_hw) -> logits`` bilinearly resized to the labels' size."""

    @tf.function(reduce_retracing=True)
    def predict(images, label_hw):
        # Upsample logits, not labels, to the label size: argmax after bilinear is the standard protocol.
        return tf.image.resize(model(images, training=False), label_hw, method="bilinear")

    return predict


def _label_predictor(model):
    logits = label_size_logits(model)

    @tf.function(reduce_retracing=True)
    def predict(images, label_hw):
        return tf.argmax(logits(images, label_hw), axis=-1, output_type=tf.int32)

    return predict


def evaluate(model, split, *, image_size=None, batch_size: int = 4, out_dir=None, num_overlays: int = 4, verbose="auto") -> dict:
    """Scores a model on a split at the split's own label resolution.

    Images are resized to the model's input size, the logits are resized back up to each mask's
    size, and every labelled pixel of the original mask counts.

    Args:
      model: a Keras model from images in [0, 255] to logits.
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
    """
    info = split.info
    check_output_classes(model, info.num_classes)
    size = model_input_size(model, image_size)
    predict = _label_predictor(model)
    cm = np.zeros((info.num_classes, info.num_classes), dtype=np.int64)
    progress = keras.utils.Progbar(len(split), unit_name="image", verbose=progress_verbosity(verbose))
    overlays = []
    for images, masks in seg_data.eval_pipeline(split, size, batch_size):
        labels = predict(images, tf.shape(masks)[1:3]).numpy()
        masks = masks.numpy()
        cm += confusion_matrix(masks, labels, info.num_classes, info.ignore_label)
        for i in range(min(len(masks), num_overlays - len(overlays))):
            overlays.append(overlay_panel(images[i].numpy(), masks[i], labels[i], info))
        progress.add(len(masks))
    scores = scores_from_confusion(cm, info.class_names)
    scores["confusion_matrix"] = cm
    if verbose:
        print(format_scores(scores, info.class_names))
    if out_dir is not None:
        write_report(out_dir, scores, info, overlays)
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
