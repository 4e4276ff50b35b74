"""Knowledge distillation for segmentation (and classification) through plain ``fit()``.

    from tfseg.distill import Distiller, PixelKD, PairwiseKD
    distiller = Distiller(teacher, student, [PixelKD(temperature=4.0, alpha=0.5), PairwiseKD()])
    distiller.compile(optimizer)
    distiller.fit(train_data, validation_data=val_data, epochs=30)
    distiller.student.save("student.keras")

``tfseg.pipeline.distill`` and ``tfseg distill`` do the same from a teacher's run directory.
"""

from tfseg.distill.distiller import Distiller
from tfseg.distill.losses import (
    AdaptiveCrossEntropy,
    ChannelWiseKD,
    CSCLoss,
    DistillationLoss,
    PairwiseKD,
    PixelKD,
)

__all__ = [
    "AdaptiveCrossEntropy",
    "CSCLoss",
    "ChannelWiseKD",
    "DistillationLoss",
    "Distiller",
    "PairwiseKD",
    "PixelKD",
]
