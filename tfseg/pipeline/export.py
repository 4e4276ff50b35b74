"""The export stage: a run's model as a TFLite file or a SavedModel, checked against Keras on real images.

``run(ExportConfig(run_dir, out, ...))`` loads the run's model at its evaluation size, converts it
(``tfseg.export.to_tflite`` / ``to_saved_model``: int8 calibrated on training images, or from a
quantization-aware run's own ranges), and with ``verify_split`` runs the export and the Keras model
on that split (``tfseg.export.verify``). It returns the export's report, also written to
``<out>.report.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfseg import export
from tfseg.checkpoint import write_json
from tfseg.errors import ConfigError
from tfseg.options import EXPORT_FORMATS, EXPORT_OUTPUTS
from tfseg.output_tail import find_tail
from tfseg.pipeline import diagnose
from tfseg.quantize.ptq import representative_images
from tfseg.runs import Run
from tfseg.tflite import check_layer_names


@dataclasses.dataclass
class ExportConfig:
    """What an export needs.

    Attributes:
      run_dir: a run directory (float, pruned or quantization-aware).
      out: the ``.tflite`` file or the SavedModel directory.
      format: ``tflite`` or ``saved_model``.
      quantization: ``int8``, ``float16``, ``dynamic`` or ``none`` (TFLite; a quantization-aware
        run exports as int8 only).
      io_dtype: the int8 model's input/output type (default uint8).
      image_size: input size (default the run's evaluation size).
      which: ``best`` or ``last``.
      calibration_split, calibration_images, seed: where the int8 calibration images come from.
      verify_split, verify_images: check the export against Keras on (at most that many images of) this split.
      dataset, data_options: read the splits from another dataset than the run's (same classes).
      float_fallback: post-training int8 only: Keras layers left in float (``tfseg diagnose`` names them).
      float_fallback_worst: instead, the k worst layers of ``tfseg diagnose``'s ranking with its defaults
        (measured on val images: ``tfseg.pipeline.diagnose.layer_diagnosis``).
      output: TFLite only: ``logits`` (at the input size), ``low_res_logits`` or ``class_map`` (at
        the model's stride, before its final upsampling; ``tfseg.output_tail``).
    """

    run_dir: str
    out: str
    format: str = "tflite"
    quantization: str = "int8"
    io_dtype: str | None = None
    image_size: tuple | None = None
    which: str = "best"
    calibration_split: str = "train"
    calibration_images: int = 100
    verify_split: str | None = None
    verify_images: int | None = None
    dataset: str | None = None
    data_options: dict | None = None
    seed: int = 0
    float_fallback: tuple = ()
    float_fallback_worst: int | None = None
    output: str = "logits"


def _check_float_fallback(config: ExportConfig):
    """Fails early (before loading or calibrating anything) on a fallback that cannot apply."""
    if not config.float_fallback and config.float_fallback_worst is None:
        return
    if config.float_fallback and config.float_fallback_worst is not None:
        raise ConfigError("give float_fallback (layer names) or float_fallback_worst (a count), not both")
    if config.float_fallback_worst is not None and config.float_fallback_worst < 1:
        raise ConfigError(f"float_fallback_worst must be at least 1, got {config.float_fallback_worst}")
    if config.format != "tflite" or config.quantization != "int8":
        raise ConfigError("float fallback applies to post-training int8 TFLite exports, not "
                          f"{config.format if config.format != 'tflite' else config.quantization + ' TFLite'}")
    diagnose.float_run(config.run_dir)  # a quantization-aware run: the same one-line error as tfseg diagnose


def _worst_layers(config: ExportConfig, source: Run, model, size, representative) -> list:
    """The k worst layers on val images, as ``tfseg diagnose`` ranks them with its defaults."""
    split = source.split(source.record.get("val_split", "val"), config.dataset, config.data_options)
    ranking = diagnose.layer_diagnosis(model, size, representative, split, seed=config.seed)
    return ranking.worst_layers(config.float_fallback_worst)


def run(config: ExportConfig) -> dict:
    """Exports and (with ``verify_split``) verifies a run's model; see the module docstring.

    Returns:
      ``{"path", "sidecar", "bytes" (TFLite), "verify" (with verify_split), ...}``.

    Raises:
      ConfigError: an unknown format, or a quantization-aware run asked for a float export.
    """
    if config.format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {config.format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if config.output not in EXPORT_OUTPUTS:
        raise ConfigError(f"unknown export output {config.output!r}; choose one of {', '.join(EXPORT_OUTPUTS)}")
    if config.format != "tflite" and config.output != "logits":
        raise ConfigError(f"output {config.output!r} is for TFLite exports; a SavedModel serves class_map and "
                          "probabilities at the image's size")
    _check_float_fallback(config)
    source = Run.open(config.run_dir)
    size = tuple(config.image_size or source.eval_size)
    model = source.model(config.which, size=size)
    if config.output != "logits":
        find_tail(model)  # a model without a final upsampling fails before any calibration
    common = dict(info=source.info, input_size=size, model_name=source.model_name)
    if config.format == "saved_model":
        result = export.to_saved_model(model, config.out, **common)
    else:
        if source.is_quantization_aware and config.quantization != "int8":
            raise ConfigError(f"{config.run_dir} is quantization-aware: it exports as int8 only")
        try:  # named layers are checked before calibrating: a typo should not cost a calibration
            fallback = check_layer_names(model, config.float_fallback)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        representative = None
        if config.quantization == "int8" and not source.is_quantization_aware:
            representative = representative_images(source.split(config.calibration_split, config.dataset, config.data_options), size,
                                                   config.calibration_images, seed=config.seed)
        if config.float_fallback_worst is not None:
            fallback = _worst_layers(config, source, model, size, representative)
        result = export.to_tflite(model, config.out, config.quantization, io_dtype=config.io_dtype,
                                  representative_data=representative, float_fallback=fallback,
                                  output=config.output, **common)
        if fallback:
            result["float_fallback"] = fallback
    report = {key: value for key, value in result.items() if key != "metadata"}
    report.update(run_dir=str(config.run_dir), format=config.format, quantization=config.quantization,
                  output=config.output)
    if config.verify_split:
        split = source.split(config.verify_split, config.dataset, config.data_options)
        checked = export.verify(model, config.out, split, info=source.info, image_size=size,
                                max_images=config.verify_images)
        report["verify"] = {"split": config.verify_split, "data": split.name, **{key: value for key, value in checked.items()
                                                             if key != "confusion_matrices"}}
    write_json(Path(f"{config.out}.report.json"), report)
    return report


__all__ = ["ExportConfig", "run"]
