"""Quantization-aware training over TF-MOT for every tfseg model, and saving QAT models.

``quantize_aware(model)`` is ``tfmot.quantization.keras.quantize_model`` made to work on the zoo:
it annotates the layers TF-MOT's registry rejects with tfseg's QuantizeConfigs
(``tfseg.quantize.configs``), leaves every other layer to TF-MOT, checks the whole model first
(so an unsupported layer is named in one ``ConfigError`` rather than after seconds of graph
transforms) and applies TF-MOT's default 8-bit scheme, or the prune-preserving one for
magnitude-pruned models. The result trains with plain ``compile()`` + ``fit()`` (also as the
student of a ``Distiller``: quantization-aware distillation) and converts to int8 TFLite with
``tfseg.export.to_tflite(qat_model, path, "int8")`` without calibration data: the ranges come from
the fake-quant nodes.

Saving: a QAT model with a Conv2DTranspose cannot go through ``model.save(dir)`` /
``tf.saved_model.save`` (tf-keras#115), and a ``.keras`` file saves but does not load (STACK.md).
``save_qat`` therefore writes HDF5 and ``load_qat`` reads it back inside TF-MOT's
``quantize_scope`` with tfseg's configs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from tfseg import _tfmot
from tfseg._keras import keras, tf
from tfseg.checkpoint import atomic_write, deployable
from tfseg.errors import ConfigError
from tfseg.models.common import input_layers
from tfseg.quantize import configs
from tfseg.tflite import calibration_batches

# Activations TF-MOT's Default8BitActivationQuantizeConfig accepts in an ``Activation`` layer.
_QUANTIZABLE_ACTIVATIONS = ("relu", "relu6", "swish", "gelu", "linear", "softmax", "sigmoid", "tanh")
QAT_SUFFIXES = (".h5", ".hdf5")


def is_quantization_aware(model) -> bool:
    """Whether ``model`` holds TF-MOT quantization wrappers (a QAT model)."""
    return any(_tfmot.is_qat_layer(layer) for layer in model.layers)


def _check_flat(model):
    if not isinstance(model, keras.Model):
        raise ConfigError(f"quantize_aware takes a Keras (tf_keras) model, got {type(model).__name__}")
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise ConfigError(
            f"model {model.name!r} is a subclassed model; TF-MOT quantizes only functional or Sequential "
            "models (build it with the functional API)"
        )
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ConfigError(
            f"model {model.name!r} contains the nested model(s) {nested}; TF-MOT quantizes only flat "
            "graphs (build the model from the inner model's layers)"
        )


def _unsupported_activation(layer) -> str | None:
    """TF-MOT's config for an ``Activation`` layer raises at apply time for other activations."""
    if type(layer) is not keras.layers.Activation:
        return None
    name = getattr(layer.activation, "__name__", repr(layer.activation))
    return None if name in _QUANTIZABLE_ACTIVATIONS else name


def quantization_plan(model, preserve_sparsity: bool = False) -> dict:
    """The QuantizeConfig each layer of ``model`` will get from ``quantize_aware``.

    Args:
      model: a flat functional Keras model.
      preserve_sparsity: plan for TF-MOT's prune-preserving scheme.

    Returns:
      ``{layer name: QuantizeConfig or None}`` for every layer but the inputs; None means TF-MOT's
      registry (or its Conv/Dense + BatchNormalization fold) decides, also for the layers that
      are rewritten as a 1x1 DepthwiseConv2D first (``tfseg.quantize.configs.AFFINE_LAYERS``).

    Raises:
      ConfigError: naming every layer that cannot be quantized, and why.

    Example:
      >>> {name: type(c).__name__ for name, c in quantization_plan(lraspp).items() if c}
      {'decoder': 'OutputQuantizeConfig'}
    """
    tfmot = _tfmot.load()

    _check_flat(model)
    default_registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    scheme_registry = _scheme(preserve_sparsity).get_quantize_registry()
    plan, problems = {}, []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            config = configs.config_for(layer)
        except ConfigError as error:
            problems.append(str(error))
            continue
        kind = type(layer).__name__
        if configs.is_rewritten(layer):
            try:
                configs.affine_of(layer)
            except ConfigError as error:
                problems.append(str(error))
                continue
            config = None  # a DepthwiseConv2D once rewritten: TF-MOT's own config
        elif config is None and not (type(layer) is keras.layers.BatchNormalization and configs.folds_into_producer(layer)):
            activation = _unsupported_activation(layer)
            if activation is not None:
                problems.append(
                    f"layer {layer.name!r} (Activation) uses {activation!r}, which TF-MOT cannot quantize "
                    f"(it takes {', '.join(_QUANTIZABLE_ACTIVATIONS)})"
                )
                continue
            if not default_registry.supports(layer):
                problems.append(
                    f"layer {layer.name!r} ({kind}) is supported neither by TF-MOT's 8-bit registry nor by "
                    "tfseg.quantize.configs.LAYER_CONFIGS (add a QuantizeConfig there)"
                )
                continue
            if not scheme_registry.supports(layer):
                # The prune-preserving registry knows only Conv2D, DepthwiseConv2D and Dense among
                # weighted layers (not Conv2DTranspose): give the rest TF-MOT's default config.
                config = default_registry.get_quantize_config(layer)
        plan[layer.name] = config
    if problems:
        raise ConfigError(f"cannot make {model.name!r} quantization-aware: " + "; ".join(problems))
    return plan


def _scheme(preserve_sparsity: bool):
    # TF-MOT's schemes, with per-channel depthwise kernels.
    return configs.PrunePreserveQuantizeScheme() if preserve_sparsity else configs.QuantizeScheme()


def _warn_unpreserved_sparsity(model, plan):
    """The prune-preserving scheme keeps zeros only in Conv2D, DepthwiseConv2D and Dense kernels."""
    kept = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    for layer in model.layers:
        if plan.get(layer.name) is None or type(layer) in kept:
            continue
        for weight in layer.trainable_weights:
            values = weight.numpy()
            if values.ndim > 1 and (values == 0).mean() > 0.2:
                warnings.warn(
                    f"layer {layer.name!r} ({type(layer).__name__}) has {100 * (values == 0).mean():.0f} % zero "
                    "weights, but TF-MOT's prune-preserving QAT does not keep sparsity in this layer type: "
                    "fine-tuning will fill them in",
                    stacklevel=3,
                )
                break


def quantize_aware(model, preserve_sparsity: bool = False, input_range=(0.0, 255.0), calibration_data=None):
    """A quantization-aware (fake-quant) copy of ``model``, ready to fine-tune with ``fit()``.

    Works on every tfseg zoo model: layers TF-MOT rejects get tfseg's QuantizeConfigs
    (``tfseg.quantize.configs.LAYER_CONFIGS``); the rest is TF-MOT's default 8-bit scheme
    (per-channel int8 weights, int8 activations with learned ranges, conv + BN folding). The
    original model is left unchanged; the copy starts from its weights. The normalisation
    (``Rescaling``) and any BatchNormalization TF-MOT cannot fold become equivalent 1x1
    DepthwiseConv2Ds, so that the int8 model has no float op (``tfseg.quantize.configs``).

    Args:
      model: a flat functional tf_keras model (a ``Distiller``'s student is taken from it). A
        pruning-wrapped model is stripped first (``tfmot.sparsity.keras.strip_pruning``).
      preserve_sparsity: use TF-MOT's prune-preserving scheme (with per-channel depthwise kernels,
        ``configs.PrunePreserveQuantizeScheme``): the zeros of magnitude-pruned Conv2D / Dense
        kernels stay zero through QAT and in the int8 TFLite model (TF-MOT does not prune
        depthwise kernels). Without it, fine-tuning fills the zeros in.
      input_range: (low, high) of the model's input values, [0, 255] pixels for tfseg models:
        the input's quantization range (and that of the normalisation after it) start there
        instead of TF-MOT's [-6, 6]. None leaves them to be learned.
      calibration_data: representative images (e.g. 32 training images from
        ``tfseg.quantize.ptq.representative_images``): every activation range starts at what
        the float model produces on them (``calibrate_ranges``) instead of [-6, 6], which short
        fine-tunings barely move. Recommended.

    Returns:
      A new functional model whose layers are TF-MOT ``QuantizeWrapperV2``s (named ``quant_*``).

    Raises:
      ConfigError: the model is not a flat functional graph, is already quantization-aware, or
        holds layers that cannot be quantized (each named, with the reason).

    Example:
      >>> qat = quantize_aware(model, calibration_data=representative_images(train, (360, 480), 32))
      >>> qat.compile(keras.optimizers.Adam(1e-4), loss=SegmentationCrossEntropy(11))
      >>> qat.fit(train_data, epochs=3)
      >>> tfseg.export.to_tflite(qat, "model_int8.tflite", quantization="int8", info=info)
    """
    tfmot = _tfmot.load()

    qk = tfmot.quantization.keras
    model = deployable(model)
    _check_flat(model)
    if is_quantization_aware(model):
        raise ConfigError(f"model {model.name!r} is already quantization-aware")
    if any(_tfmot.is_pruning_wrapper(layer) for layer in model.layers):
        model = tfmot.sparsity.keras.strip_pruning(model)
    plan = quantization_plan(model, preserve_sparsity)
    if preserve_sparsity:
        _warn_unpreserved_sparsity(model, plan)
    model, rewritten = _rewrite_affine_layers(model)

    def annotate(layer):
        # QuantizeAnnotate calls layer.call, not the layer: the model gains no call nodes, and
        # quantize_apply copies the weights into its own clone.
        return qk.quantize_annotate_layer(layer, plan[layer.name]) if layer.name in plan else layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with qk.quantize_scope(configs.custom_objects()), _tfmot.inputs_kept_in_order():
        qat = qk.quantize_apply(annotated, _scheme(preserve_sparsity))
    _weights_follow_trainable(qat)
    _check_input_order(model, qat)
    _init_weight_ranges(qat)
    if calibration_data is not None:
        calibrate_ranges(qat, model, calibration_data)
    if input_range is not None:
        _set_known_ranges(qat, rewritten, input_range)
    return qat


def _input_names(layer) -> list:
    return [_tfmot.unwrapped_name(parent.name) for parent in input_layers(layer)]


def _check_input_order(model, qat):
    """Raises if a multi-input layer of the QAT model takes its inputs in another order than in ``model``."""
    quantized = {_tfmot.unwrapped_name(layer.name): layer for layer in qat.layers}
    for layer in model.layers:
        want = _input_names(layer)
        if len(want) < 2 or layer.name not in quantized:
            continue
        got = _input_names(quantized[layer.name])
        if got != want:
            raise RuntimeError(
                f"quantize_apply rewired the inputs of {layer.name!r} as {got} instead of {want} "
                "(tensorflow/model-optimization#1179); the QAT model would compute something else"
            )


def _weights_follow_trainable(qat):
    """Makes the weights of each QuantizeWrapper trainable exactly when its wrapped layer is.

    TF-MOT's ``QuantizeWrapper.build`` appends every weight it quantizes (the kernels) to the
    wrapper's own trainable list whatever the layer's ``trainable`` (Keras then drops the variable
    from the layer's lists, when the wrapper puts the fake-quant tensor in its attribute), and
    ``QuantizeWrapperV2.trainable_weights`` returns that list without checking ``trainable``: the
    kernel of a frozen layer, such as the normalisation (``configs.as_depthwise``), trains. Handed
    back to the wrapped layer's own trainable list, Keras applies the layer's ``trainable`` to them,
    also when it is changed later. ``weights`` keeps TF-MOT's order, which HDF5 files rely on.
    Needed after every construction of the wrappers (``quantize_apply``, loading).
    """
    for layer in qat.layers:
        if type(layer).__name__ not in _tfmot.QUANTIZE_WRAPPERS or not layer._trainable_weights:
            continue
        inner = layer.layer
        # In place: the lists are Keras's own (the wrapper's quantizers hold none of these).
        inner._trainable_weights[:] = inner._dedup_weights(layer._trainable_weights + inner._trainable_weights)
        del layer._trainable_weights[:]


def _init_weight_ranges(qat):
    """Sets every weight quantizer's range from the weights, as the first training step would.

    TF-MOT starts them at [-6, 6] and sets them only in training steps, so a QAT model used
    (or converted) before any step would quantize kernels of magnitude ~0.1 to a level or two.
    """
    for layer in qat.layers:
        for weight, quantizer, variables in getattr(layer, "_weight_vars", ()):
            quantizer(weight, True, variables)  # LastValueQuantizer: assigns this weight's range


def freeze_batch_norm(qat) -> int:
    """Makes every BatchNormalization of a QAT model normalise with its moving statistics, also
    inside ``fit``, and stop updating them; gamma and beta still train.

    Fine-tuning then adapts the weights and ranges to int8 around the trained statistics instead
    of re-estimating them from a few hundred small batches (Jacob et al., CVPR 2018, freeze the
    statistics late in QAT). Call before ``compile``. Returns the number of layers frozen.
    """
    count = 0
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)  # TF-MOT's QuantizeWrapper passes ``training`` on
        if isinstance(inner, keras.layers.BatchNormalization):
            # Not ``trainable = False``: TF-MOT's wrapper keeps gamma and beta in its own trainable
            # list, so they would be listed twice and the HDF5 checkpoint fails ("name already
            # exists"). A Keras BN asks this method whether it is training.
            inner._get_training_value = _inference_mode
            count += 1
    return count


def _inference_mode(training=None):
    return False


def _range_variables(layer) -> dict:
    """``{kind: (min_var, max_var)}`` of a QAT layer's activation ranges (not its weights')."""
    found = {}
    for weight in layer.weights:
        name = weight.name.split("/")[-1].split(":")[0]
        for kind in ("output", "post_activation"):
            for end in ("min", "max"):
                if name == f"{kind}_{end}":
                    found.setdefault(kind, {})[end] = weight
    return {kind: (pair["min"], pair["max"]) for kind, pair in found.items() if len(pair) == 2}


def calibrate_ranges(qat, float_model, data, max_batches: int | None = None) -> int:
    """Sets a QAT model's activation ranges from the float model's activations on real images.

    TF-MOT initialises every activation range to [-6, 6] and moves it by an exponential moving
    average with decay 0.999, so after a short fine-tuning (CamVid: ~140 steps in 3 epochs) the
    ranges are still mostly the initial guess. Starting from the ranges post-training
    calibration would use (min and max over representative images) makes the QAT model about as
    good as PTQ before its first step, and fine-tuning refines from there.

    Args:
      qat: a model from ``quantize_aware(float_model)``.
      float_model: the float model (layer names match the QAT model's wrapped layers).
      data: representative images: an array (N, H, W, 3), or a dataset / iterable of images,
        batches or ``(image, mask)`` pairs (``tfseg.quantize.ptq.representative_images``).
      max_batches: stop after this many batches of one image.

    Returns:
      The number of ranges set.

    Raises:
      ConfigError: the float model lacks a layer the QAT model quantizes.

    Example:
      >>> calibrate_ranges(qat, model, representative_images(train, (360, 480), count=32))
    """
    float_layers = {layer.name: layer for layer in float_model.layers}
    targets = {}  # float layer name -> [(min_var, max_var)]
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        for kind, pair in _range_variables(layer).items():
            if kind in ("output", "post_activation"):
                if inner.name not in float_layers:
                    raise ConfigError(f"calibrate_ranges: the float model {float_model.name!r} has no layer {inner.name!r}")
                targets.setdefault(inner.name, []).append(pair)
    names = sorted(targets)
    probe = keras.Model(float_model.inputs, [float_layers[name].output for name in names])
    shape = [(1, *float_model.input_shape[1:])]
    low = {name: np.inf for name in names}
    high = {name: -np.inf for name in names}
    for step, (batch,) in enumerate(calibration_batches(data, shape)):
        if max_batches is not None and step >= max_batches:
            break
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        for name, value in zip(names, outputs):
            low[name] = min(low[name], float(tf.reduce_min(value)))
            high[name] = max(high[name], float(tf.reduce_max(value)))
    count = 0
    for name in names:
        for min_var, max_var in targets[name]:
            min_var.assign(min(low[name], 0.0))  # int8 ranges must hold zero
            max_var.assign(max(high[name], 0.0))
            count += 1
    return count


def _rewrite_affine_layers(model):
    """``model`` with its ``AFFINE_LAYERS`` replaced by equivalent 1x1 DepthwiseConv2Ds, and their
    ``{name: (scale, offset)}``; ``model`` itself when there are none."""
    rewritten = {layer.name: configs.affine_of(layer) for layer in model.layers if configs.is_rewritten(layer)}
    if not rewritten:
        return model, rewritten
    replacements = {}

    def clone(layer):
        if layer.name in rewritten:
            new, weights = configs.as_depthwise(layer)
            replacements[layer.name] = weights
            return new
        # Fresh copies: calling the original layers again would give them a second call node in
        # the original model (and change what TF-MOT's BN-fold patterns see there).
        return layer.__class__.from_config(layer.get_config())

    new_model = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = new_model.get_layer(layer.name)
        if layer.name in replacements:
            target.set_weights(replacements[layer.name])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return new_model, rewritten


def _set_known_ranges(qat, rewritten, input_range):
    """Starts the ranges that are known exactly (not learned) at their values.

    TF-MOT initialises every range to [-6, 6] and learns it during ``fit``; the model input's is
    ``input_range`` ([0, 255] pixels for tfseg models), and a rewritten normalisation reading the
    input maps that range to a known one. Set here, they are right before the first step and
    stay so (the input's quantizer only widens to values outside [low, high]).
    """
    low, high = float(input_range[0]), float(input_range[1])
    inputs = {layer.name for layer in qat.layers if isinstance(layer, keras.layers.InputLayer)}

    def set_range(layer, prefix, lo, hi):
        for weight in layer.weights:
            name = weight.name.split("/")[-1].split(":")[0]
            if name == f"{prefix}_min":
                weight.assign(min(lo, 0.0))
            elif name == f"{prefix}_max":
                weight.assign(max(hi, 0.0))

    for layer in qat.layers:
        producers = layer.inbound_nodes[0].inbound_layers if layer.inbound_nodes else []
        producers = producers if isinstance(producers, (list, tuple)) else [producers]
        if type(layer).__name__ == "QuantizeLayer" and {p.name for p in producers} <= inputs:
            set_range(layer, layer.name, low, high)
        inner = getattr(layer, "layer", None)
        if inner is not None and inner.name in rewritten:
            scale, offset = rewritten[inner.name]
            if all(type(p).__name__ == "QuantizeLayer" for p in producers):
                ends = np.stack([low * scale + offset, high * scale + offset])
                set_range(layer, "post_activation", float(ends.min()), float(ends.max()))


def custom_objects() -> dict:
    """Everything a saved QAT model needs to load: TF-MOT's quantization objects, its
    prune-preserving quantizers and tfseg's QuantizeConfigs (use inside ``quantize_scope``)."""
    prune_preserve = _tfmot.prune_preserve_registry()
    objects = {
        name: getattr(prune_preserve, name)
        for name in ("PrunePreserveDefault8BitWeightsQuantizer", "PrunePreserveDefault8BitConvWeightsQuantizer",
                     "PrunePreserveDefaultWeightsQuantizer")
        if hasattr(prune_preserve, name)
    }
    objects.update(configs.custom_objects())
    return objects


def load_qat(path: str | os.PathLike):
    """Loads a quantization-aware model written by ``save_qat`` (not compiled).

    Raises:
      FileNotFoundError: naming the path.
      ConfigError: the suffix is not ``.h5`` (see ``save_qat``).

    Example:
      >>> qat = load_qat("runs/camvid/student-qat/qat.h5")
    """
    tfmot = _tfmot.load()

    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: no quantization-aware model there")
    with tfmot.quantization.keras.quantize_scope(custom_objects()):
        model = keras.models.load_model(path, compile=False)
    _weights_follow_trainable(model)  # loading builds TF-MOT's wrappers anew
    return model


def _check_suffix(path: Path):
    if path.suffix not in QAT_SUFFIXES:
        raise ConfigError(
            f"{path}: quantization-aware models are saved as HDF5 ({' or '.join(QAT_SUFFIXES)}); a .keras file of a "
            "QAT model with Conv2DTranspose saves but does not load, and SavedModel directories fail to save "
            "(tf-keras#115). Export for serving with tfseg.export instead"
        )


def save_qat(model, path: str | os.PathLike, check: bool = True) -> Path:
    """Saves a quantization-aware model as HDF5, atomically, and checks that it loads back.

    Args:
      model: a QAT model (from ``quantize_aware``, or a ``Distiller`` whose student is one).
      path: ``.h5`` file.
      check: load the written file (before it replaces ``path``) and compare one output with the
        model's, so that a file that cannot be restored is never reported as saved.

    Returns:
      ``path``.

    Raises:
      ConfigError: not a QAT model, or a suffix other than ``.h5`` / ``.hdf5`` (naming why).
      RuntimeError: with ``check``, the reloaded model computes something else.

    Example:
      >>> save_qat(qat, "runs/camvid/student-qat/qat.h5")
    """
    model = deployable(model)
    path = Path(path)
    _check_suffix(path)
    if not is_quantization_aware(model):
        raise ConfigError(f"model {model.name!r} is not quantization-aware: save it with tfseg.checkpoint.save_model")

    def write(tmp):
        model.save(tmp, include_optimizer=False)
        if not check:
            return
        loaded = load_qat(tmp)
        shape = [d or 32 for d in model.input_shape[1:]]
        x = np.random.default_rng(0).uniform(0, 255, (1, *shape)).astype("float32")
        expected, got = model(x, training=False).numpy(), loaded(x, training=False).numpy()
        if not np.allclose(expected, got, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(expected).max()))):
            raise RuntimeError(
                f"{path}: the reloaded QAT model differs from the saved one (max difference "
                f"{float(np.abs(expected - got).max()):.3g}); not saved"
            )

    return atomic_write(path, write)


__all__ = [
    "QAT_SUFFIXES",
    "calibrate_ranges",
    "custom_objects",
    "freeze_batch_norm",
    "is_quantization_aware",
    "load_qat",
    "quantization_plan",
    "quantize_aware",
    "save_qat",
]
