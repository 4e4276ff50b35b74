"""Per-segment LiteRT profiles (tfseg.latency_profile, tfseg.litert_profiler, tfseg.litert_peak): structure,
not timings (tiny models, 2 runs)."""

from __future__ import annotations

import numpy as np
import pytest

from tfseg._keras import keras
from tfseg.latency_profile import _block_name, format_layer_profile, prefix_models, profile_layers, segments
from tfseg.litert_peak import format_peak, litert_peak, peak_gmacs
from tfseg.litert_profiler import _align
from tfseg.models.profiling import layer_table

pytest.importorskip("ai_edge_litert")
layers = keras.layers


def tiny_model():
    """stem (conv, BN, ReLU) -> block_1 (depthwise, pointwise, residual add) -> head (1x1 conv)."""
    inputs = keras.Input((32, 48, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="block_1_dw")(x)
    y = layers.Conv2D(8, 1, name="block_1_pw")(y)
    x = layers.Add(name="block_1_add")([x, y])
    return keras.Model(inputs, layers.Conv2D(4, 1, name="head")(x), name="tiny")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


LAYERS = ["stem_conv", "stem_bn", "stem_relu", "block_1_dw", "block_1_pw", "block_1_add", "head"]


@pytest.mark.parametrize("cut", ["blocks", "live", "layers", ["stem_relu"]])
@pytest.mark.parametrize("contiguous", [False, True])
def test_segments_cover_every_layer_once(model, cut, contiguous):
    found = segments(model, cut, contiguous=contiguous)
    assert [name for segment in found for name in segment["layers"]] == LAYERS


def test_blocks_group_by_name_and_attach_batch_norms():
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, name="Conv1")(inputs)
    x = layers.BatchNormalization(name="bn_Conv1")(x)  # another name, joins the conv it follows
    x = layers.ReLU(name="Conv1_relu")(x)
    x = layers.Conv2D(4, 1, name="block_3_expand")(x)
    x = layers.Conv2D(4, 1, name="s16_block2_pw")(x)
    model = keras.Model(inputs, x)
    assert [(s["segment"], s["layers"]) for s in segments(model)] == [
        ("Conv1", ["Conv1", "bn_Conv1", "Conv1_relu"]), ("block_3", ["block_3_expand"]),
        ("s16_block2", ["s16_block2_pw"])]
    assert [s["segment"] for s in segments(model, ["Conv1_relu"])] == ["Conv1..Conv1_relu", "block_3_expand..s16_block2_pw"]
    assert [_block_name(n) for n in ("quant_block_3_expand", "expanded_conv_project", "logits")] == [
        "block_3", "expanded", "logits"]  # a quantization-aware model's wrappers are named quant_*


def test_prefix_models_end_at_the_cuts_and_the_last_is_the_model(model):
    prefixes = prefix_models(model, ["stem_relu", "block_1_dw"])
    assert prefixes[-1] is model
    assert [p.output_names for p in prefixes[:-1]] == [["stem_relu"], ["stem_relu", "block_1_dw"]]  # the skip is live
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 48, 3)).astype(np.float32)
    relu = keras.Model(model.inputs, model.get_layer("stem_relu").output)(x)
    np.testing.assert_allclose(prefixes[1](x)[0], relu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prefixes[-1](x), model(x), rtol=1e-6)


def test_profiler_profile_int8(model):
    result = profile_layers(model, "int8", num_threads=1, runs=2, warmup=1)
    names = [row["segment"] for row in result["rows"]]
    assert names == ["[input]", "stem", "block_1", "head", "[output]"]  # the uint8 <-> int8 conversions apart
    assert sum(row["macs"] for row in result["rows"]) == result["macs"] == sum(r["macs"] for r in layer_table(model))
    assert all(row["macs"] >= 0 and row["ms"] >= 0 for row in result["rows"])
    assert result["rows"][1]["layers"] == ["stem_conv", "stem_bn", "stem_relu"]
    assert result["rows"][-2]["output_shape"] == (32, 48, 4)
    assert result["unaligned"] == 0 and result["total_ms"] > 0
    assert result["sum_ms"] == pytest.approx(sum(row["ms"] for row in result["rows"]))
    conv = [op for op in result["ops"] if op["op"] == "CONV_2D"]
    assert [op["segment"] for op in conv] == ["stem", "block_1", "head"]
    assert all(op["kernels"][0].startswith(("Convolution", "Fully Connected")) for op in conv)
    table = format_layer_profile(result)
    assert "| stem | stem_conv..stem_relu (3) | Conv2D | 32x48x8 |" in table


def test_prefix_profile_float_increments(model):
    result = profile_layers(model, None, runs=2, warmup=1, method="prefix", peak_gmacs=10.0)
    assert [row["segment"] for row in result["rows"]] == ["stem_conv..stem_relu", "block_1_dw..block_1_add", "head"]
    assert result["rows"][-1]["prefix_ms"] == result["total_ms"]
    assert result["sum_ms"] == pytest.approx(result["total_ms"])  # the increments telescope
    assert result["noise_ms"] >= 0 and result["ratio"] == pytest.approx(result["total_ms"] / result["mac_bound_ms"])


def test_not_flat_models_are_named():
    inner = tiny_model()
    inputs = keras.Input((32, 48, 3))
    nested = keras.Model(inputs, inner(inputs), name="outer")
    with pytest.raises(ValueError, match="'outer' is not a flat functional model: its layer 'tiny' is a nested"):
        segments(nested)
    shared = layers.Conv2D(3, 1, name="shared")
    twice = keras.Model(inputs, shared(shared(inputs)), name="twice")
    with pytest.raises(ValueError, match="'twice' is not a flat functional model: its layer 'shared' is called 2"):
        profile_layers(twice)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="'sub' is not a flat functional model"):
        segments(Subclassed(name="sub"))
    with pytest.raises(ValueError, match="cut must be one of"):
        segments(tiny_model(), "rows")


def test_align_xnnpack_operators_to_tflite_operators():
    # ADD with a fused ReLU runs as Add + Clamp; MUL + ADD fused into one operator of an unknown name
    assert _align(["Add (ND)", "Clamp (NC)", "Fully Connected (NC, F32) GEMM"], ["ADD", "CONV_2D"]) == ([0, 0, 1], 0)
    positions, wrong = _align(["Invalid Unary Op", "Constant Pad (ND, X8)", "Convolution (NHWC, QC8) IGEMM"],
                              ["MUL", "ADD", "PAD", "CONV_2D"])
    assert positions[0] in (0, 1) and positions[1:] == [2, 3] and wrong == 0
    assert _align(["Sigmoid (NC)"], ["CONV_2D"]) == ([0], 1)


def test_peak_on_small_kernels(tmp_path):
    kernels = (("conv", (8, 8, 8), lambda: layers.Conv2D(8, 1), True),
               ("depthwise", (8, 8, 8), lambda: layers.DepthwiseConv2D(3, padding="same"), False))
    rows = litert_peak(num_threads=(1,), runs=2, warmup=1, kernels=kernels)
    assert [(r["kernel"], r["quantization"]) for r in rows] == [
        ("conv", "float32"), ("conv", "int8"), ("depthwise", "float32"), ("depthwise", "int8")]
    assert rows[0]["macs"] == 8 * 8 * 8 * 8 and all(r["gmacs_per_s"] > 0 for r in rows)
    peaks = peak_gmacs(rows)
    assert peaks == {"float32": {1: rows[0]["gmacs_per_s"]}, "int8": {1: rows[1]["gmacs_per_s"]}}
    assert "| depthwise (memory-bound) | int8 | 1 |" in format_peak(rows)


def test_grouped_bars_figure(tmp_path):
    from tfseg.report import plot_grouped_bars

    path = plot_grouped_bars(["stem", "[output]"], {"float32": [1.0, None], "int8": [0.5, 0.2]}, tmp_path / "p.png",
                             xlabel="ms")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
