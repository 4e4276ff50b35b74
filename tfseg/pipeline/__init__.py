"""Stages that turn a run directory into a run directory, and the chain of them from a file.

Each stage module holds a config dataclass and ``run(config) -> Run`` (``tfseg.runs.Run``):

    train       TrainConfig      a zoo model trained on a dataset
    distill     DistillConfig    a student trained from a teacher run (knowledge distillation)
    prune       PruneConfig      iterative L1 filter pruning with fine-tuning, figures per round
    quantize    QATConfig        quantization-aware fine-tuning (with a teacher: QAT + distillation)
    calibrate   CalibrateConfig  the logit adjustment of a class-weighted run, folded into its model
    export      ExportConfig     TFLite or SavedModel, checked against Keras (returns a report)

``chain`` runs stages listed in a TOML file (``tfseg run``; the quick start's is
``chains/quickstart.toml``) and ``summary`` scores what a chain produced. The algorithms these
stages call (``tfseg.distill``, ``tfseg.prune``, ``tfseg.quantize``, ``tfseg.export``) import nothing
from here.
"""
