"""Magnitude (unstructured) pruning over TF-MOT, on every zoo model.

TF-MOT's whole-model ``prune_low_magnitude`` rejects layers it has no pruning rule for, such as
the ``Rescaling`` layer that normalises pixels inside every tfseg model. ``prune_magnitude``
wraps only the layers that carry prunable kernels (Conv2D, Conv2DTranspose, SeparableConv2D's
pointwise kernel, Dense) and leaves the rest as they are. Depthwise kernels stay dense: TF-MOT's
registry prunes none of their weights (they are a small, sensitive share of a MobileNet).

Sparsity only pays off compressed: the zeros still take space in a float TFLite file, but gzip
(or any entropy coder) squeezes them; ``compressed_sizes`` measures that.
"""

from __future__ import annotations

import gzip

import numpy as np

from tfseg import _tfmot
from tfseg._keras import keras
from tfseg.errors import ConfigError
from tfseg.tflite import to_tflite_bytes

layers = keras.layers
PRUNABLE = (layers.Conv2D, layers.Conv2DTranspose, layers.SeparableConv2D, layers.Dense)


def pruning_schedule(target_sparsity: float, end_step: int, *, begin_step: int = 0, initial_sparsity: float = 0.0,
                     frequency: int | None = None):
    """TF-MOT's polynomial schedule with a frequency that lets a short run really reach the target.

    TF-MOT updates the masks every ``frequency`` steps (default 100) between ``begin_step`` and
    ``end_step``; a 300-step fine-tune with the default ends well short of its target, silently.
    Here the frequency defaults to a tenth of the pruning span, and ``end_step`` is moved back to
    the last update step so that the final update uses the target sparsity.

    Raises:
      ConfigError: sparsities outside [0, 1), ``end_step <= begin_step``.
    """
    if not 0.0 <= initial_sparsity <= target_sparsity < 1.0:
        raise ConfigError(f"need 0 <= initial_sparsity <= target_sparsity < 1, got {initial_sparsity}, {target_sparsity}")
    if end_step <= begin_step:
        raise ConfigError(f"end_step ({end_step}) must be after begin_step ({begin_step})")
    span = end_step - begin_step
    frequency = frequency or max(1, span // 10)
    end_step = begin_step + (span // frequency) * frequency
    return _tfmot.load().sparsity.keras.PolynomialDecay(
        initial_sparsity=initial_sparsity, final_sparsity=target_sparsity,
        begin_step=begin_step, end_step=end_step, frequency=frequency,
    )


def prune_magnitude(model, target_sparsity: float = 0.8, *, end_step: int, begin_step: int = 0,
                    initial_sparsity: float = 0.0, frequency: int | None = None, skip=()):
    """Wraps every prunable layer of ``model`` for magnitude pruning up to ``target_sparsity``.

    Train the result with ``fit(..., callbacks=pruning_callbacks())`` (a ``tfseg.Distiller``
    drives the pruning step of its student by itself), then ``strip`` it.

    Args:
      model: a functional model (any tfseg zoo model).
      target_sparsity: share of zero weights in each pruned kernel at ``end_step``.
      end_step: training step at which the target is reached; at most the number of steps the
        fine-tune runs (epochs x steps per epoch).
      begin_step, initial_sparsity, frequency: see :func:`pruning_schedule`.
      skip: names of layers to leave dense (e.g. the classifier).

    Returns:
      A new model (``model`` is left untouched) whose prunable layers are ``PruneLowMagnitude``
      wrappers (named ``prune_low_magnitude_<name>``).

    Example:
      >>> pruned = prune_magnitude(model, 0.8, end_step=epochs * steps_per_epoch)
      >>> pruned.compile(...); pruned.fit(data, epochs=epochs, callbacks=pruning_callbacks())
      >>> small = strip(pruned); print(format_sparsity(sparsity_report(small)))
    """
    tfmot = _tfmot.load()
    schedule = pruning_schedule(target_sparsity, end_step, begin_step=begin_step,
                                initial_sparsity=initial_sparsity, frequency=frequency)
    unknown = set(skip) - {layer.name for layer in model.layers}
    if unknown:
        raise ConfigError(f"skip names layers that {model.name!r} does not have: {sorted(unknown)}")

    def wrap(layer):
        if isinstance(layer, PRUNABLE) and not isinstance(layer, layers.DepthwiseConv2D) and layer.name not in skip:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # TF-MOT wraps the layer objects it is given and the clone shares the others: work on a private
    # copy, or training the pruned model would also sparsify the caller's model.
    private = keras.models.clone_model(model)
    private.set_weights(model.get_weights())
    return keras.models.clone_model(private, clone_function=wrap)


def pruning_callbacks() -> list:
    """The callbacks ``fit`` needs for a magnitude-pruned model (TF-MOT's step update)."""
    return [_tfmot.load().sparsity.keras.UpdatePruningStep()]


def strip(model):
    """The pruned model without its wrappers: plain layers whose kernels hold the zeros."""
    return _tfmot.load().sparsity.keras.strip_pruning(model)


def sparsity_report(model) -> list[dict]:
    """Per weighted layer: kernel name, number of weights and the fraction that is exactly zero."""
    rows = []
    for layer in model.layers:
        kernels = [w for w in layer.weights if "kernel" in w.name and "mask" not in w.name]
        for kernel in kernels:
            values = kernel.numpy()
            rows.append({"layer": layer.name, "weights": int(values.size), "sparsity": float(np.mean(values == 0))})
    return rows


def format_sparsity(rows: list[dict]) -> str:
    """A table of ``sparsity_report`` rows plus the weighted total."""
    total = sum(r["weights"] for r in rows)
    zeros = sum(r["weights"] * r["sparsity"] for r in rows)
    width = max([len(r["layer"]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'weights':>10}  sparsity"]
    lines += [f"{r['layer']:<{width}}  {r['weights']:>10,}  {100 * r['sparsity']:7.1f}%" for r in rows]
    lines.append(f"{'total':<{width}}  {total:>10,}  {100 * zeros / max(total, 1):7.1f}%")
    return "\n".join(lines)


def compressed_sizes(model) -> dict:
    """Float32 TFLite size of ``model``, raw and gzip-compressed (level 9), in bytes."""
    flat = to_tflite_bytes(model)
    return {"tflite_bytes": len(flat), "gzip_bytes": len(gzip.compress(flat, compresslevel=9))}
