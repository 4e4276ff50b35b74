"""Quantization: quantization-aware training over TF-MOT for every tfseg model, and post-training
quantization (full-integer int8, float16, dynamic range).

    from tfseg.quantize import quantize_aware, save_qat, representative_images
    qat = quantize_aware(model, calibration_data=representative_images(train, (360, 480), 32))
    qat.compile(optimizer, loss=loss); qat.fit(train_data, epochs=3)
    save_qat(qat, "qat.h5")
    tfseg.export.to_tflite(qat, "model_int8.tflite", "int8", info=train.info)

``tfseg.pipeline.quantize`` and ``tfseg quantize`` fine-tune a run directory (optionally with a
teacher: quantization-aware distillation); ``tfseg.export`` writes and checks the files.
``tfseg.quantize.diagnose`` ranks the layers post-training int8 hurts, for float fallback
(``tfseg diagnose``).
TF-MOT is imported only when a model is made quantization-aware or loaded.
"""

from tfseg.quantize.ptq import PTQ_MODES, representative_images
from tfseg.quantize.qat import (
    calibrate_ranges,
    freeze_batch_norm,
    is_quantization_aware,
    load_qat,
    quantization_plan,
    quantize_aware,
    save_qat,
)

__all__ = [
    "PTQ_MODES",
    "calibrate_ranges",
    "freeze_batch_norm",
    "is_quantization_aware",
    "load_qat",
    "quantization_plan",
    "quantize_aware",
    "representative_images",
    "save_qat",
]
