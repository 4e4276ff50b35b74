"""L1 filter pruning that rebuilds a smaller model, on every zoo family: parameter counts, exact
equality with the original where the removed filters were zeroed, channel dependencies, int8."""

import numpy as np
import pytest
from test_zoo import HEAVY, small_model

from tfseg import models
from tfseg._keras import keras
from tfseg.errors import ConfigError
from tfseg.prune import analyse, apply_plan, plan_filter_pruning, prune_filters, zero_pruned_channels
from tfseg.tflite import to_tflite_bytes

layers = keras.layers
SEGMENTATION = [
    pytest.param(name, marks=pytest.mark.slow) if HEAVY.search(name) else name
    for name in models.available("segmentation")
]


def copy_with_lively_batch_norms(model, seed=0):
    """A copy whose batch norms have non-trivial statistics and no all-zero kernel (FCN score
    layers start at zero), so every channel matters."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    rng = np.random.default_rng(seed)
    for layer in clone.layers:
        weights = layer.get_weights()
        if weights and weights[0].ndim >= 2 and not np.any(weights[0]):
            weights[0] = rng.normal(0, 0.05, weights[0].shape).astype("float32")
            layer.set_weights(weights)
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return clone


def expected_params(model, plan):
    """Parameter count of the pruned model, from the kept channel counts and each layer's formula."""
    graph = plan.graph
    total = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        n_in = len(plan.kept(graph.input_layouts[layer.name][0]))
        n_out = len(plan.kept(graph.output_layouts[layer.name]))
        bias = int(getattr(layer, "use_bias", False))
        if isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += kh * kw * n_in + bias * n_in
        elif isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose)):
            kh, kw = layer.kernel_size
            total += kh * kw * n_in * n_out + bias * n_out
        elif isinstance(layer, layers.Dense):
            total += n_in * n_out + bias * n_out
        elif isinstance(layer, layers.BatchNormalization):
            total += len(layer.weights) * n_in
        else:
            raise AssertionError(f"no parameter formula for {type(layer).__name__}")
    return total


@pytest.mark.parametrize("name", SEGMENTATION)
def test_pruned_model_is_smaller_exact_where_zeroed_and_converts_to_int8(name):
    model = copy_with_lively_batch_norms(small_model(name))
    x = np.random.default_rng(1).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    original = model(x, training=False).numpy()
    plan = plan_filter_pruning(model, 0.5)
    pruned = apply_plan(model, plan)

    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]
    assert pruned.output_shape == model.output_shape  # classes never pruned
    assert pruned.count_params() == expected_params(model, plan)
    assert pruned.count_params() < 0.45 * model.count_params()
    assert abs(plan.removed_fraction - 0.5) < 0.05

    zero_pruned_channels(model, plan)
    zeroed = model(x, training=False).numpy()
    scale = np.abs(zeroed).max()
    assert np.abs(original - zeroed).max() > 1e-2 * scale, "zeroing half the filters must change the output"
    np.testing.assert_allclose(pruned(x, training=False).numpy(), zeroed, atol=1e-4 * scale, rtol=1e-4)

    tflite = to_tflite_bytes(pruned, quantization="int8", representative_data=x)
    assert tflite[4:8] == b"TFL3"


def _kept_counts(plan, model, names):
    return {name: len(plan.kept(plan.graph.output_layouts[name])) for name in names}


def test_residual_groups_are_pruned_jointly():
    model = small_model("fcn_resnet18")
    plan = plan_filter_pruning(model, 0.5)
    graph = plan.graph
    adds = [layer for layer in model.layers if isinstance(layer, layers.Add)]
    assert adds
    for add in adds:
        a, b = graph.input_layouts[add.name]
        assert a == b  # both branches are the same channel group
    # The group of the first stage's residual chain has several producing convolutions.
    chain = graph.groups[graph.output_layouts[adds[0].name][0][0]]
    assert len(chain.sources) >= 2 and chain.prunable
    pruned = apply_plan(model, plan)
    for name in chain.sources:
        assert pruned.get_layer(name).filters == len(plan.keep[chain.id])


def test_kept_residual_groups_stay_whole_and_the_iterative_target_is_still_reached():
    from tfseg.prune.iterative import _prunable_filter_counts, prune_filters_iteratively

    model = small_model("fcn_resnet18")
    plan = plan_filter_pruning(model, 0.5, prune_residual=False)
    residual = [g for g in plan.graph.groups.values() if g.prunable and len(g.sources) > 1]
    inner = [g for g in plan.graph.groups.values() if g.prunable and len(g.sources) == 1]
    assert residual and inner
    assert all(len(plan.keep[g.id]) == g.size for g in residual)
    assert all(len(plan.keep[g.id]) == g.size - g.size // 2 for g in inner)

    # 40 % of all prunable filters (residual ones counted) come from the inner layers alone.
    producers = [name for g in residual + inner for name in g.sources]
    pruned, rounds = prune_filters_iteratively(
        model, None, step=0.2, target=0.4, fine_tune_epochs=0, compile_model=None, score=lambda m: {},
        bn_batches=0, prune_residual=False)
    assert abs(rounds[-1].removed - 0.4) < 0.03
    assert 1 - _prunable_filter_counts(pruned, producers) / _prunable_filter_counts(model, producers) == rounds[-1].removed
    for g in residual:
        assert all(pruned.get_layer(name).filters == g.size for name in g.sources)
    with pytest.raises(ConfigError, match="residual groups kept whole"):
        prune_filters_iteratively(model, None, step=0.5, target=0.95, fine_tune_epochs=0, compile_model=None,
                                  score=lambda m: {}, bn_batches=0, prune_residual=False)


def test_concatenate_offsets_and_transpose_convolutions_in_unet():
    model = copy_with_lively_batch_norms(models.build("unet", (64, 64, 3), 3, depth=3, width=8))
    concats = [layer for layer in model.layers if isinstance(layer, layers.Concatenate)]
    transposed = [layer for layer in model.layers if isinstance(layer, layers.Conv2DTranspose)]
    assert concats and transposed
    plan = plan_filter_pruning(model, 0.5)
    pruned = apply_plan(model, plan)
    for concat in concats:
        parts = plan.graph.input_layouts[concat.name]
        assert len(plan.graph.output_layouts[concat.name]) == sum(len(p) for p in parts)
        assert pruned.get_layer(concat.name).output_shape[-1] == sum(len(plan.kept(p)) for p in parts)
    for layer in transposed:
        assert pruned.get_layer(layer.name).filters == len(plan.kept(plan.graph.output_layouts[layer.name]))


def test_depthwise_follows_its_input_and_classifier_is_kept():
    model = small_model("mobilenet_v2_lraspp")
    plan = plan_filter_pruning(model, 0.5)
    pruned = apply_plan(model, plan)
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            assert plan.graph.input_layouts[layer.name][0] == plan.graph.output_layouts[layer.name]
            kernel = pruned.get_layer(layer.name).depthwise_kernel
            assert kernel.shape[2] == len(plan.kept(plan.graph.input_layouts[layer.name][0]))
    unprunable = plan.unprunable()
    assert any("classifier" in row and "model output" in row for row in unprunable)


def test_l1_keeps_the_largest_filters_and_layers_it_cannot_follow_are_listed():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 1, use_bias=False, name="conv")(inputs)
    y = layers.Conv2D(4, 1, name="head")(x)
    flat = layers.Flatten(name="flatten")(layers.Conv2D(2, 1, name="side")(x))
    model = keras.Model(inputs, [y, layers.Dense(3, name="dense")(flat)])
    kernel = np.zeros((1, 1, 3, 8), "float32")
    kernel[..., :] = np.array([5, 1, 7, 2, 8, 3, 6, 4], "float32")  # filter k has L1 norm 3 * value
    model.get_layer("conv").set_weights([kernel])
    plan = plan_filter_pruning(model, 0.5)
    assert list(plan.keep[plan.graph.output_layouts["conv"][0][0]]) == [0, 2, 4, 6]  # values 5, 7, 8, 6
    rows = plan.unprunable()
    assert any(row.startswith("side") and "flatten" in row.lower() for row in rows), rows
    pruned = apply_plan(model, plan)
    assert pruned.get_layer("side").filters == 2 and pruned.get_layer("conv").filters == 4


@pytest.mark.parametrize("criterion", ["l2", "bn_gamma"])
def test_other_criteria_and_global_scope(criterion):
    model = copy_with_lively_batch_norms(small_model("fastseg_tiny"))
    pruned, plan = prune_filters(model, 0.6, criterion=criterion, scope="global")
    assert abs(plan.removed_fraction - 0.6) < 0.02
    sizes = [len(plan.keep[g.id]) / g.size for g in plan.graph.groups.values() if g.prunable]
    assert min(sizes) < max(sizes)  # global ranking prunes groups unevenly
    assert pruned.count_params() < model.count_params()


def test_bad_arguments_raise():
    model = small_model("fastseg_tiny")
    with pytest.raises(ValueError, match="fraction"):
        plan_filter_pruning(model, 1.0)
    with pytest.raises(ValueError, match="criterion"):
        plan_filter_pruning(model, 0.5, criterion="taylor")
    with pytest.raises(ValueError, match="scope"):
        plan_filter_pruning(model, 0.5, scope="block")
    assert analyse(model).groups


def test_a_killed_iterative_run_goes_on_after_its_last_finished_round(tmp_path):
    import json

    from tfseg.prune.iterative import prune_filters_iteratively

    model = small_model("unet")
    scored = []
    common = dict(step=0.25, target=0.5, fine_tune_epochs=0, compile_model=None, bn_batches=0,
                  score=lambda m: scored.append(m.count_params()) or {"params_seen": m.count_params()})
    whole, whole_rounds = prune_filters_iteratively(model, None, out_dir=tmp_path / "whole", **common)
    # As if killed after round 1: its model and rows are there, round 2's are not.
    killed = tmp_path / "killed"
    prune_filters_iteratively(model, None, out_dir=killed, step=0.25, target=0.25, fine_tune_epochs=0,
                              compile_model=None, bn_batches=0, score=lambda m: {"params_seen": m.count_params()})
    scored.clear()
    resumed, rounds = prune_filters_iteratively(model, None, out_dir=killed, **common)
    assert scored == [whole_rounds[-1].params]  # only the missing round ran
    assert [r.as_row() for r in rounds] == [r.as_row() for r in whole_rounds]
    assert resumed.count_params() == whole.count_params()
    assert len(json.loads((killed / "rounds.json").read_text())) == 3
    with pytest.raises(ConfigError, match="another schedule"):
        prune_filters_iteratively(model, None, out_dir=killed, **{**common, "target": 0.25})
