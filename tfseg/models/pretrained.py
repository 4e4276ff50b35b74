"""Loading pretrained backbone weights from local files only (nothing is downloaded).

Two sources:

- ``load_tfslim_mobilenet_v2``: the ImageNet MobileNetV2 (alpha 1.0) TF-Slim checkpoint read out
  as one ``.npy`` per variable (the directory ``mobilenet_v2_1.0_224_imagenet_tfslim_npy``; its
  README gives provenance and the name table that ``tfslim_mobilenet_v2_table`` encodes).
- ``load_keras_h5``: keras-applications weight files (``*_notop.h5``: VGG16, ResNet50/101,
  MobileNetV2, ...) matched by layer name, with errors where Keras' own
  ``load_weights(by_name=True)`` stays silent.

Both check every array before assigning any, so a failed load leaves the model unchanged, and
both raise naming the layer and the file (or the shapes) at fault.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

TFSLIM_SHA256SUMS = "SHA256SUMS"
_BN_VARIABLES = ("gamma", "beta", "moving_mean", "moving_variance")

# Keras layer names of MobileNetV2's feature extractor. A model layer with weights whose name
# looks like this (in any letter case) must get weights from the table: otherwise a renamed or
# extra backbone layer would keep its random initialisation without anyone noticing.
_MOBILENET_V2_LAYER = re.compile(
    r"Conv1|bn_Conv1|Conv_1|Conv_1_bn|expanded_conv_(depthwise|project)(_BN)?|block_\d+_(expand|depthwise|project)(_BN)?",
    re.IGNORECASE,  # "block_3_expand_bn" is a misspelt backbone layer, not a head layer
)


def tfslim_mobilenet_v2_table() -> dict:
    """The TF-Slim -> Keras name table of the arrays' README, in network order.

    Returns:
      ``{keras layer name: {keras variable name: npy file name}}`` with 54 layers and 260 files;
      variable names are the last part of a Keras weight name without ``:0`` (``kernel``,
      ``depthwise_kernel``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``).
    """
    table = {}

    def conv(layer, stem, variable="kernel"):
        table[layer] = {variable: f"{stem}.npy"}

    def bn(layer, stem):
        table[layer] = {v: f"{stem}_BatchNorm_{v}.npy" for v in _BN_VARIABLES}

    conv("Conv1", "Conv_weights")
    bn("bn_Conv1", "Conv")
    conv("expanded_conv_depthwise", "expanded_conv_depthwise_depthwise_weights", "depthwise_kernel")
    bn("expanded_conv_depthwise_BN", "expanded_conv_depthwise")
    conv("expanded_conv_project", "expanded_conv_project_weights")
    bn("expanded_conv_project_BN", "expanded_conv_project")
    for n in range(1, 17):
        slim = f"expanded_conv_{n}"
        conv(f"block_{n}_expand", f"{slim}_expand_weights")
        bn(f"block_{n}_expand_BN", f"{slim}_expand")
        conv(f"block_{n}_depthwise", f"{slim}_depthwise_depthwise_weights", "depthwise_kernel")
        bn(f"block_{n}_depthwise_BN", f"{slim}_depthwise")
        conv(f"block_{n}_project", f"{slim}_project_weights")
        bn(f"block_{n}_project_BN", f"{slim}_project")
    conv("Conv_1", "Conv_1_weights")
    bn("Conv_1_bn", "Conv_1")
    return table


def _variable_name(weight) -> str:
    """``block_1_expand/kernel:0`` -> ``kernel`` (robust to outer name scopes)."""
    return weight.name.split("/")[-1].split(":")[0]


def _layer_variables(layer, source: str) -> dict:
    """``{variable name: tf.Variable}`` of a layer; refuses wrapped (pruning/QAT) layers."""
    variables = {}
    for weight in layer.weights:
        name = _variable_name(weight)
        if name in variables:
            raise ValueError(
                f"layer {layer.name!r} has two variables named {name!r} (a pruning or quantization "
                f"wrapper?); load {source} into the plain model before wrapping it"
            )
        variables[name] = weight
    return variables


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256sums(directory, files=None) -> int:
    """Checks files of ``directory`` against its ``SHA256SUMS`` (``sha256sum`` format).

    Args:
      directory: folder holding ``SHA256SUMS`` and the files.
      files: names to check (default: every file listed).

    Returns:
      The number of files checked.

    Raises:
      FileNotFoundError: no ``SHA256SUMS``, or a listed file is missing.
      ValueError: a file is not listed, or its digest differs (the message names the file).
    """
    directory = Path(directory)
    sums_path = directory / TFSLIM_SHA256SUMS
    if not sums_path.is_file():
        raise FileNotFoundError(f"{sums_path}: no checksum file")
    expected = {}
    for line in sums_path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.lstrip("*").strip()] = digest.lower()
    for name in expected if files is None else files:
        if name not in expected:
            raise ValueError(f"{directory / name}: not listed in {sums_path}")
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (listed in {sums_path})")
        if _sha256(path) != expected[name]:
            raise ValueError(f"{path}: SHA-256 differs from {sums_path} (corrupted or replaced file)")
    return len(expected) if files is None else len(files)


def load_tfslim_mobilenet_v2(model, npy_dir, verify_checksums=None) -> dict:
    """Loads the TF-Slim ImageNet MobileNetV2 (alpha 1.0) arrays into ``model`` by Keras layer name.

    Works on any model with keras.applications' MobileNetV2 layer names: our
    ``mobilenet_v2_backbone`` (any ``output_stride``) and ``keras.applications.MobileNetV2``. The
    model may end early (e.g. without ``Conv_1``/``Conv_1_bn``, or cut after some block): table
    layers missing from the end are reported, not loaded. The inputs must be scaled with
    ``x / 127.5 - 1`` (``common.normalize``); other scalings degrade results quietly.

    Args:
      model: a tf_keras model (not wrapped for pruning or QAT yet).
      npy_dir: the directory of ``.npy`` files (e.g. ``mobilenet_v2_1.0_224_imagenet_tfslim_npy``).
      verify_checksums: True: check the used files against ``SHA256SUMS`` (which must exist);
        None (default): check when ``SHA256SUMS`` exists; False: do not check.

    Returns:
      A summary dict: ``loaded_layers`` (names), ``files`` (the npy files used, each once),
      ``parameters`` (values set), ``absent_layers`` (table layers the model does not have) and
      ``unused_files`` (their files, plus the directory's files outside the table).

    Raises:
      FileNotFoundError: ``npy_dir`` or a needed file is missing (named with its layer).
      ValueError: a shape mismatch (e.g. a model with alpha != 1.0; the layer, file and both
        shapes are named), a model layer with a MobileNetV2 name that the table does not cover, a
        gap (a table layer missing before later ones that exist: a renamed layer), a model without
        any MobileNetV2 layer, or a checksum mismatch.

    Example:
      >>> model = build_mobilenet_v2_lraspp((224, 224, 3), num_classes=11, alpha=1.0)
      >>> summary = load_tfslim_mobilenet_v2(model, "shared/weights/mobilenet_v2_1.0_224_imagenet_tfslim_npy")
      >>> summary["parameters"]  # 2,257,984 minus Conv_1/Conv_1_bn, which this model has not
    """
    npy_dir = Path(npy_dir)
    if not npy_dir.is_dir():
        raise FileNotFoundError(f"{npy_dir}: no such directory of MobileNetV2 .npy arrays")
    table = tfslim_mobilenet_v2_table()
    order = list(table)
    model_layers = {layer.name: layer for layer in model.layers}

    unknown = [
        layer.name for layer in model.layers
        if layer.weights and _MOBILENET_V2_LAYER.fullmatch(layer.name) and layer.name not in table
    ]
    if unknown:
        raise ValueError(f"model layers {unknown} have MobileNetV2 names but no TF-Slim arrays")
    present = [name for name in order if name in model_layers]
    if not present:
        raise ValueError(f"model {model.name!r} has none of MobileNetV2's layers (Conv1, block_1_expand, ...)")
    last = order.index(present[-1])
    gaps = [name for name in order[:last] if name not in model_layers]
    if gaps:
        raise ValueError(
            f"model {model.name!r} lacks MobileNetV2 layers {gaps[:4]}{' ...' if len(gaps) > 4 else ''} "
            f"but has later ones (up to {order[last]!r}); a renamed layer would not get its weights"
        )

    plan = []  # (variable, array, file): everything is checked before anything is assigned
    for name in present:
        layer = model_layers[name]
        variables = _layer_variables(layer, "the TF-Slim arrays")
        if set(variables) != set(table[name]):
            raise ValueError(
                f"layer {name!r} has variables {sorted(variables)}, the table gives {sorted(table[name])} "
                f"(a conv with bias or a BN without center/scale cannot take these weights)"
            )
        for variable_name, file_name in table[name].items():
            path = npy_dir / file_name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; it holds {variable_name!r} of layer {name!r}")
            array = np.load(path, allow_pickle=False)
            variable = variables[variable_name]
            if array.shape != tuple(variable.shape):
                raise ValueError(
                    f"layer {name!r} {variable_name} has shape {tuple(variable.shape)} but {path.name} has "
                    f"{array.shape}; the arrays are MobileNetV2 with alpha 1.0"
                )
            plan.append((variable, array, file_name))

    files = [file_name for _, _, file_name in plan]
    if verify_checksums or (verify_checksums is None and (npy_dir / TFSLIM_SHA256SUMS).is_file()):
        verify_sha256sums(npy_dir, files)
    for variable, array, _ in plan:
        variable.assign(array.astype(variable.dtype.as_numpy_dtype, copy=False))

    absent = order[last + 1:]
    table_files = {f for entries in table.values() for f in entries.values()}
    extra = sorted(p.name for p in npy_dir.glob("*.npy") if p.name not in table_files)
    return {
        "loaded_layers": present,
        "files": files,
        "parameters": int(sum(array.size for _, array, _ in plan)),
        "absent_layers": absent,
        "unused_files": [f for name in absent for f in table[name].values()] + extra,
    }


def _decode(names) -> list:
    return [n.decode("utf8") if isinstance(n, bytes) else str(n) for n in names]


def load_keras_h5(model, h5_path, input_channel_flip=None, ignore_layers=()) -> dict:
    """Loads a Keras HDF5 weights file (e.g. keras-applications ``*_notop.h5``) by layer name.

    Every layer of the file that holds weights must exist in the model with the same variables
    and shapes; model layers the file does not cover (the segmentation head) are left as they
    are and listed in the summary. Unlike ``model.load_weights(by_name=True)``, nothing is skipped
    silently.

    Caffe-style weights: keras-applications' VGG16 and ResNet50/101/152 (v1) weights were
    trained on BGR images with the ImageNet mean subtracted (``preprocess_input`` mode "caffe").
    Our models take RGB in [0, 255]; to use those weights, pass the first conv's name as
    ``input_channel_flip`` (e.g. ``"block1_conv1"`` for VGG16, ``"conv1_conv"`` for ResNet50), which
    reverses its kernel's input-channel axis so that it reads RGB, and make the model subtract
    the RGB mean (123.68, 116.779, 103.939) instead of applying ``common.normalize``.
    MobileNetV2 weights need neither: they expect RGB scaled by ``x / 127.5 - 1``.

    Args:
      model: a tf_keras model (not wrapped for pruning or QAT yet).
      h5_path: a weights file written by ``save_weights(...h5)`` or a full ``model.save(...h5)``.
      input_channel_flip: name of a layer whose kernel (first variable, 4-D, 3 input channels)
        gets its input-channel axis reversed (BGR -> RGB), or None.
      ignore_layers: file layers that may be absent from the model (e.g. ``("Conv_1", "Conv_1_bn")``
        for a MobileNetV2 backbone that ends at ``block_16_project_BN``); reported, not loaded.

    Returns:
      A summary dict: ``loaded_layers``, ``parameters`` (values set), ``not_in_file`` (model layers
      with weights that the file does not cover, e.g. the head), ``ignored_layers`` (file layers
      skipped because of ``ignore_layers``) and ``flipped`` (the flipped layer or None).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a Keras weights file; a file layer with weights that the model lacks (not
        in ``ignore_layers``); different variables or shapes (layer, variable and both shapes are
        named); a bad ``input_channel_flip``.

    Example:
      >>> summary = load_keras_h5(model, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
      ...                         input_channel_flip="block1_conv1")
      >>> summary["not_in_file"]  # the head: ['fcn_score', ...]
    """
    import h5py  # a TensorFlow dependency; imported here to keep the package import light

    path = Path(h5_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such Keras weights file")
    model_layers = {layer.name: layer for layer in model.layers}
    ignore_layers = set(ignore_layers)
    plan, loaded, ignored = [], [], []
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path}: not a Keras HDF5 weights file (no 'layer_names' attribute)")
        for layer_name in _decode(group.attrs["layer_names"]):
            layer_group = group[layer_name]
            weight_names = _decode(layer_group.attrs.get("weight_names", []))
            if not weight_names:
                continue
            if layer_name not in model_layers:
                if layer_name in ignore_layers:
                    ignored.append(layer_name)
                    continue
                raise ValueError(
                    f"{path}: layer {layer_name!r} (weights {weight_names}) has no layer of that name in "
                    f"model {model.name!r}; pass ignore_layers=[{layer_name!r}] if that is intended"
                )
            layer = model_layers[layer_name]
            variables = _layer_variables(layer, str(path))
            file_variables = {name.split("/")[-1].split(":")[0]: name for name in weight_names}
            if set(file_variables) != set(variables) or len(file_variables) != len(weight_names):
                raise ValueError(
                    f"{path}: layer {layer_name!r} has variables {sorted(file_variables)} in the file but "
                    f"{sorted(variables)} in the model"
                )
            for variable_name, weight_name in file_variables.items():
                array = np.asarray(layer_group[weight_name])
                variable = variables[variable_name]
                if array.shape != tuple(variable.shape):
                    raise ValueError(
                        f"{path}: layer {layer_name!r} {variable_name} has shape {array.shape} in the file "
                        f"but {tuple(variable.shape)} in the model"
                    )
                plan.append([layer_name, variable_name, variable, array])
            loaded.append(layer_name)

    flipped = None
    if input_channel_flip is not None:
        kernels = [entry for entry in plan if entry[0] == input_channel_flip]
        if not kernels:
            raise ValueError(
                f"input_channel_flip={input_channel_flip!r}: no layer of that name gets weights from {path}"
            )
        entry = next((e for e in kernels if e[1] in ("kernel", "depthwise_kernel")), None)
        if entry is None or entry[3].ndim != 4 or entry[3].shape[2] != 3:
            shape = None if entry is None else entry[3].shape
            raise ValueError(
                f"input_channel_flip={input_channel_flip!r}: needs a conv kernel with 3 input channels, "
                f"got {shape}"
            )
        entry[3] = entry[3][:, :, ::-1, :]
        flipped = input_channel_flip

    for _, _, variable, array in plan:
        variable.assign(np.ascontiguousarray(array, dtype=variable.dtype.as_numpy_dtype))
    return {
        "loaded_layers": loaded,
        "parameters": int(sum(entry[3].size for entry in plan)),
        "not_in_file": [layer.name for layer in model.layers if layer.weights and layer.name not in loaded],
        "ignored_layers": ignored,
        "flipped": flipped,
    }
