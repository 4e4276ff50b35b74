"""Model profiling (parameters, MACs per layer, TFLite sizes) and the small TFLite helpers."""

import sys

import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras, tf
from tfseg.models.profiling import format_profile, layer_table, profile
from tfseg.tflite import interpreter, litert_latency, random_images, run_tflite, to_tflite_bytes

layers = keras.layers

# MACs of hand_net, counted by hand (output positions x taps x input channels x filters).
HAND_MACS = {
    "conv_s2": 8 * 8 * 8 * (3 * 3 * 3),  # 16x16 -> 8x8 by stride 2: 13,824
    "dilated": 4 * 4 * 8 * (3 * 3 * 8),  # 3x3 dilation 2 'valid' spans 5x5: 8 -> 4; taps stay 9: 9,216
    "grouped": 4 * 4 * 8 * (1 * 1 * 4),  # 2 groups: each filter sees 8 / 2 channels: 512
    "depthwise": 4 * 4 * 16 * (3 * 3),  # depth multiplier 2: 16 outputs, each from 1 channel: 2,304
    "separable": 4 * 4 * 16 * 9 + 4 * 4 * 16 * 8,  # depthwise (multiplier 1) + pointwise 16 -> 8: 4,352
    "bn": 0,  # folds into the conv before it
    "up": 4 * 4 * 8 * (3 * 3) * 4,  # every input value through the 3x3 kernel into 4 filters: 4,608
    "pool": 0,
    "bilinear": 0,
    "add": 0,
    "gap": 0,
    "dense": 4 * 10,
}


def hand_net():
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv_s2")(inputs)
    x = layers.Conv2D(8, 3, dilation_rate=2, use_bias=False, name="dilated")(x)
    x = layers.Conv2D(8, 1, groups=2, use_bias=False, name="grouped")(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False, name="depthwise")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", use_bias=False, name="separable")(x)
    x = layers.BatchNormalization(name="bn")(x)
    up = layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(x)
    x = layers.MaxPooling2D(2, name="pool")(up)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="bilinear")(x)
    x = layers.Add(name="add")([x, up])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="dense")(x), name="hand_net")


def test_macs_equal_the_hand_count_layer_by_layer():
    model = hand_net()
    result = profile(model, tflite=False)
    assert {row["name"]: row["macs"] for row in result["layers"]} == HAND_MACS
    assert result["macs"] == sum(HAND_MACS.values()) == 34_856
    assert result["params"] == model.count_params() == sum(row["params"] for row in result["layers"])
    assert result["non_trainable_params"] == 16  # BN moving mean and variance
    assert result["uncounted"] == []
    shapes = {row["name"]: row["output_shape"] for row in result["layers"]}
    assert shapes["dilated"] == (4, 4, 8) and shapes["up"] == (8, 8, 4) and shapes["gap"] == (4,)


def test_elementwise_operations_are_reported_apart_from_macs():
    rows = {row["name"]: row["elementwise"] for row in layer_table(hand_net())}
    assert rows["conv_s2"] == 8 * 8 * 8  # bias add
    assert rows["dilated"] == 0  # no bias, no activation
    assert rows["bn"] == 4 * 4 * 8
    assert rows["pool"] == 4 * 4 * 4 * (2 * 2)  # one per window element
    assert rows["bilinear"] == 8 * 8 * 4 and rows["add"] == 8 * 8 * 4
    assert rows["gap"] == 8 * 8 * 4  # reads every input value
    assert rows["dense"] == 10


def test_nearest_upsampling_and_concatenation_are_copies():
    inputs = keras.Input((4, 4, 2))
    x = layers.UpSampling2D(2, name="nearest")(inputs)
    x = layers.Concatenate(name="concat")([x, x])
    rows = {row["name"]: (row["macs"], row["elementwise"]) for row in layer_table(keras.Model(inputs, x))}
    assert rows == {"nearest": (0, 0), "concat": (0, 0)}


def test_dense_on_a_feature_map_counts_as_a_1x1_conv():
    inputs = keras.Input((5, 6, 8))
    model = keras.Model(inputs, layers.Dense(3, use_bias=False, name="fc")(inputs))
    assert layer_table(model)[0]["macs"] == 5 * 6 * 8 * 3


def test_unknown_input_size_needs_input_shape_and_leaves_the_model_alone():
    dynamic = models.build("unet", (None, None, 3), 3, depth=2, width=4)
    with pytest.raises(ValueError, match="input_shape"):
        profile(dynamic, tflite=False)
    at_64x96 = profile(dynamic, input_shape=(64, 96, 3), tflite=False)
    fixed = models.build("unet", (64, 96, 3), 3, depth=2, width=4)
    assert at_64x96["layers"] == profile(fixed, tflite=False)["layers"]
    # every layer is convolutional with 'same' padding: MACs scale with the pixel count
    assert profile(dynamic, input_shape=(32, 48), tflite=False)["macs"] * 4 == at_64x96["macs"]
    with pytest.raises(ValueError, match=r"does not run at input shape \(34, 48, 3\)"):
        profile(dynamic, input_shape=(34, 48, 3), tflite=False)  # 34 / 2 / 2: the skips misalign
    assert dynamic.input_shape == (None, None, None, 3)
    assert all(len(layer.inbound_nodes) == 1 for layer in dynamic.layers)  # the clone added no calls


def test_wrapped_and_nested_layers_count_as_the_layers_they_hold():
    import tensorflow_model_optimization as tfmot

    pruned = tfmot.sparsity.keras.prune_low_magnitude(hand_net())
    rows = layer_table(pruned)
    assert sum(row["macs"] for row in rows) == sum(HAND_MACS.values())
    assert {row["type"] for row in rows} >= {"PruneLowMagnitude(Conv2DTranspose)", "PruneLowMagnitude(Dense)"}

    inputs = keras.Input((16, 16, 3))
    outer = keras.Model(inputs, layers.Softmax(name="probs")(hand_net()(inputs)))
    rows = {row["name"]: row["macs"] for row in layer_table(outer)}
    assert rows == {**{f"hand_net/{name}": macs for name, macs in HAND_MACS.items()}, "probs": 0}


def test_a_layer_without_a_mac_rule_is_listed_not_counted_as_zero():
    inputs = keras.Input((6, 4))
    x = layers.LSTM(5, name="lstm")(inputs)
    result = profile(keras.Model(inputs, layers.Dense(2, name="fc")(x)), tflite=False)
    assert result["uncounted"] == ["lstm"]
    assert result["macs"] == 5 * 2
    assert "NOT COUNTED (weights but no MAC rule): lstm" in format_profile(result)


def test_tflite_sizes_follow_the_parameter_count():
    model = models.build("unet_small", (None, None, 3), 3)
    result = profile(model, input_shape=(32, 32, 3))
    assert result["tflite_errors"] == {}
    float_bytes, int8_bytes = result["tflite_float32_bytes"], result["tflite_int8_bytes"]
    # 4 bytes per weight (BN folds away) plus a little graph; int8 stores 1 byte per weight
    assert abs(float_bytes - 4 * result["params"]) < 0.05 * 4 * result["params"]
    assert int8_bytes < 0.3 * float_bytes
    text = format_profile(result)
    assert f"TFLite float32: {float_bytes:,} bytes" in text and f"TFLite int8: {int8_bytes:,} bytes" in text


def test_format_profile_lists_layers_and_totals():
    result = profile(hand_net(), tflite=False)
    text = format_profile(result)
    for name in HAND_MACS:
        assert f"\n{name} " in text
    assert "MACs per image: 34.86 K (34,856)" in text
    assert "BatchNormalization counts 0 MACs" in text
    top = format_profile(result, max_rows=2)
    assert "conv_s2" in top and "dilated" in top and "separable" not in top
    assert "TFLite" not in text  # not asked for


# --- tfseg.tflite -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_unet():
    """A 2-level U-Net of unknown input size (transpose convs: the dynamic-batch trap)."""
    return models.build("unet", (None, None, 3), 3, depth=2, width=4)


def _op_names(tflite_bytes):
    return {op["op_name"] for op in interpreter(tflite_bytes)._get_ops_details()}


def test_float_tflite_has_batch_1_no_shape_ops_and_keras_outputs(small_unet):
    tflite_bytes = to_tflite_bytes(small_unet, input_shape=(32, 48, 3))
    (detail,) = interpreter(tflite_bytes).get_input_details()
    assert list(detail["shape"]) == [1, 32, 48, 3] and detail["dtype"] == np.float32
    ops = _op_names(tflite_bytes)
    assert "TRANSPOSE_CONV" in ops and not ops & {"SHAPE", "STRIDED_SLICE", "PACK"}
    x = random_images((32, 48, 3), count=1, seed=3)
    np.testing.assert_allclose(run_tflite(tflite_bytes, x), small_unet(x).numpy(), rtol=0, atol=1e-4)


def test_dynamic_batch_keeps_the_shape_ops(small_unet):
    ops = _op_names(to_tflite_bytes(small_unet, fixed_batch=None, input_shape=(32, 48, 3)))
    assert "SHAPE" in ops  # what fixed_batch=1 removes


@pytest.mark.parametrize("io_dtype", ["int8", "uint8", "float32"])
def test_int8_tflite_io_types_and_agreement_with_keras(small_unet, io_dtype):
    images = random_images((32, 48, 3), count=6, seed=4)
    # a tfseg-style dataset: batches of (image, mask) pairs, split into batch-1 calibration steps
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros((6, 32, 48), np.int32))).batch(3)
    tflite_bytes = to_tflite_bytes(small_unet, "int8", dataset, input_shape=(32, 48, 3), io_dtype=io_dtype)
    runner = interpreter(tflite_bytes)
    assert runner.get_input_details()[0]["dtype"] == np.dtype(io_dtype)
    assert runner.get_output_details()[0]["dtype"] == np.dtype(io_dtype)
    ops = _op_names(tflite_bytes)
    assert "CONV_2D" in ops
    if io_dtype != "float32":  # float I/O adds a QUANTIZE at the input and a DEQUANTIZE at the output
        assert "DEQUANTIZE" not in ops
    expected = small_unet(images[:1]).numpy()
    got = run_tflite(tflite_bytes, images[:1])
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


def test_float16_halves_the_weights():
    model = models.build("unet", (None, None, 3), 3, depth=2, width=16)  # ~100 K weights: they dominate the file
    float32 = len(to_tflite_bytes(model, input_shape=(32, 32)))
    float16 = len(to_tflite_bytes(model, "float16", input_shape=(32, 32)))
    assert 0.4 * float32 < float16 < 0.65 * float32


def test_conversion_arguments_are_checked(small_unet):
    with pytest.raises(ValueError, match="input_shape"):
        to_tflite_bytes(small_unet)
    with pytest.raises(ValueError, match="representative_data"):
        to_tflite_bytes(small_unet, "int8", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="quantization"):
        to_tflite_bytes(small_unet, "int4", input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="io_dtype"):
        to_tflite_bytes(small_unet, "int8", random_images((32, 32, 3)), input_shape=(32, 32, 3), io_dtype="int16")
    with pytest.raises(ValueError, match="does not fit"):
        to_tflite_bytes(small_unet, input_shape=(32, 32, 4))
    with pytest.raises(ValueError, match=r"representative data of shape \(16, 16, 3\)"):
        to_tflite_bytes(small_unet, "int8", random_images((16, 16, 3)), input_shape=(32, 32, 3))


def test_litert_latency_reports_ordered_statistics(small_unet):
    stats = litert_latency(to_tflite_bytes(small_unet, input_shape=(32, 32)), num_threads=2, runs=7, warmup=1)
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"] <= stats["max_ms"]
    assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"]
    assert (stats["runs"], stats["warmup"], stats["num_threads"]) == (7, 1, 2)
    with pytest.raises(ValueError, match="runs"):
        litert_latency(b"", runs=0)


def test_missing_litert_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import now fails
    with pytest.raises(ImportError, match="pip install ai-edge-litert"):
        litert_latency(b"not a model")


# --- recipes/model_table.py ---------------------------------------------------------------------


def test_model_table_recipe_writes_a_row_per_model_and_names_failures(tmp_path, capsys, monkeypatch):
    from conftest import load_recipe

    recipe = load_recipe("model_table")
    out = tmp_path / "models.md"
    # a builder that fails must give a visible row and footnote, not stop the table
    def broken_builder(input_shape, num_classes):
        raise ValueError(f"cannot build at {input_shape[0]}x{input_shape[1]}")

    monkeypatch.setitem(models._REGISTRY, "broken", models.ModelEntry(broken_builder, {}))
    recipe.main(["--models", "unet_small,broken", "--size", "72x72", "--classes", "4", "--runs", "2",
                 "--warmup", "0", "--threads", "1", "--calibration", "2", "--out", str(out)])
    text = out.read_text()
    printed = capsys.readouterr().out
    assert printed.startswith("| model |") and text.endswith(printed)  # stdout: the table; file: header + table
    assert text.startswith("# Model zoo at 72x72, 4 classes\n")
    assert "Command: `python recipes/model_table.py --models unet_small,broken --size 72x72" in text
    expected = profile(models.build("unet_small", (72, 72, 3), 4), tflite=False)
    row = next(line for line in text.splitlines() if line.startswith("| unet_small |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["unet_small", "segmentation", f"{expected['params'] / 1e6:.2f}", f"{expected['macs'] / 1e9:.2f}"]
    assert all(float(cell) > 0 for cell in cells[4:])  # two sizes and one latency
    assert "| broken [1] | – |" in text
    assert "[1] build: ConfigError: model 'broken': cannot build at 72x72" in text  # build() names the model
