"""The NAS latency table and the expected-latency model, on a tiny space with a MAC-proportional fake timer
(and one small real LiteRT measurement)."""

import json

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError
from tfseg.nas.arch_params import ArchParameters, random_architecture
from tfseg.nas.expected_latency import LatencyModel, one_hot_probabilities
from tfseg.nas.latency_table import (LatencyTable, block_model, cell_key, head_fuse_key, head_part_models, head_proj_key,
                                     is_identity, keys_for_architecture, keys_for_space, measure_blocks, parse_key,
                                     stem_key)
from tfseg.nas.space import SearchSpace, feature_sizes

SPACE = SearchSpace(num_layers=3, cell_widths=(8, 16, 32), width_ratios=(0.5, 1.0), stem_widths=(4, 8, 8), head_width=8)
SIZE = (64, 64)
CLASSES = 3


def fake_ms(key: str) -> float:
    """Roughly MAC-proportional block time (1 ms per MMAC) plus a fixed 2 us per block."""
    kind, f = parse_key(key)
    sizes = {1: SIZE, **feature_sizes(SIZE)}
    if kind == "stem":
        h, w = sizes[2 ** f["stage"]]
        macs = 9 * h * w * f["cin"] * f["cout"]
    elif kind == "cell":
        h, w = sizes[f["scale"]]
        taps = {"skip": 1, "conv3x3": 9, "conv3x3_x2": 9, "zoomed_conv": 9 / 4, "sep_conv3x3": 1}[f["op"]]
        macs = taps * h * w * f["cin"] * f["cout"] + (9 * h * w * f["cout"] ** 2 if f["op"] == "conv3x3_x2" else 0)
        macs += 9 * h * w * f["cin"] if f["op"] == "sep_conv3x3" else 0
    elif kind == "head_proj":
        h, w = sizes[f["scale"]]
        macs = h * w * f["cin"] * f["cout"]
    else:
        h, w = sizes[f["scale"]]
        macs = 9 * h * w * f["width"] ** 2 + h * w * f["width"] * f["classes"]
    return 0.002 + macs * 1e-6


class FakeMeasure:
    """Records each batch it is asked to measure."""

    def __init__(self):
        self.batches = []

    def __call__(self, keys):
        self.batches.append(list(keys))
        return {key: {1: fake_ms(key), 2: 0.6 * fake_ms(key)} for key in keys}


def fake_table(path=None, **kwargs):
    return LatencyTable(SIZE, CLASSES, "int8", (1, 2), space=SPACE, path=path, measure=FakeMeasure(), **kwargs)


def randomized_parameters(seed=0) -> ArchParameters:
    params = ArchParameters(SPACE)
    rng = np.random.default_rng(seed)
    for variable in params.variables:
        variable.assign(rng.normal(0.0, 1.0, variable.shape).astype(np.float32))
    return params


def test_keys_parse_and_cover_every_derived_net():
    assert cell_key("conv3x3", 16, 2, 32, 64) == "cell|op=conv3x3|scale=16|stride=2|cin=32|cout=64"
    assert stem_key(1, 3, 16) == "stem|stage=1|cin=3|cout=16"
    assert head_proj_key(32, 16, 128, 64) == "head_proj|scale=32|to=16|cin=128|cout=64"
    assert parse_key(head_fuse_key(16, 2, 64, 11)) == ("head_fuse", {"scale": 16, "branches": 2, "width": 64, "classes": 11})
    for bad in ("cell|op=conv3x3|scale=8|stride=2|cin=4|cout=4", "stem|stage=1|cin=4|cout=4", "cell|op=pool|scale=8",
                "head_fuse|scale=32|branches=2|width=8|classes=3", "stem|stage=x|cin=3|cout=4"):
        with pytest.raises(ConfigError, match="latency-table key"):
            parse_key(bad)
    assert is_identity(cell_key("skip", 8, 1, 8, 8)) and not is_identity(cell_key("skip", 16, 2, 8, 8))
    keys = keys_for_space(SPACE, CLASSES)
    assert len(keys) == len(set(keys)) and not any(is_identity(key) for key in keys)
    rng = np.random.default_rng(1)
    for _ in range(20):
        arch = random_architecture(SPACE, rng)
        assert set(keys_for_architecture(arch, CLASSES)) <= set(keys)
    table = fake_table()
    assert table.lookup(cell_key("skip", 8, 1, 8, 8)) == 0.0 and table._measure.batches == []


def test_block_models_have_their_shapes_and_the_head_parts_add_up():
    model = block_model(cell_key("zoomed_conv", 16, 2, 8, 16), SIZE)
    assert tuple(model.input_shape) == (None, 8, 8, 8) and tuple(model.output_shape) == (None, 4, 4, 16)
    model = block_model(stem_key(1, 3, 4), SIZE)
    assert [layer.name for layer in model.layers][:2] == ["image", "normalize"] and model.output_shape == (None, 32, 32, 4)
    assert block_model(head_fuse_key(8, 2, 8, CLASSES), SIZE).output_shape == (None, *SIZE, CLASSES)
    assert block_model(head_proj_key(32, 8, 32, 8), SIZE).output_shape == (None, 8, 8, 8)
    for scales in ((32, 16), (32, 8), (32,)):
        full, projections, fuse = head_part_models(scales, (32, 16)[: len(scales)], 8, CLASSES, SIZE)
        named = lambda m: [layer.name for layer in m.layers if not isinstance(layer, keras.layers.InputLayer)]  # noqa: E731
        parts = [name for part in (*projections, fuse) for name in named(part)]
        assert sorted(parts) == sorted(named(full)), scales  # every layer of head() in exactly one part


def test_one_hot_expected_equals_predict():
    table = fake_table()
    model = LatencyModel(table, SPACE, CLASSES)
    assert len(table._measure.batches) == 1  # the whole space in one batch
    rng = np.random.default_rng(0)
    archs = [random_architecture(SPACE, rng) for _ in range(12)]
    for arch in archs:
        expected = float(model.expected(one_hot_probabilities(arch)))
        assert expected == pytest.approx(model.predict(arch, corrected=False), rel=1e-5)
    assert len(table._measure.batches) == 1  # nothing measured on demand
    assert model.predict(archs[0], corrected=False) == pytest.approx(sum(fake_ms(k) for k in keys_for_architecture(archs[0], CLASSES)))

    # a correction fitted on "measured" nets applies to both
    record = model.fit_correction([(arch, 1.1 * model.predict(arch) + 0.3) for arch in archs])
    assert (record["a"], record["b"], record["nets"]) == (pytest.approx(1.1), pytest.approx(0.3), 12)
    assert table.correction(1)["a"] == pytest.approx(1.1) and model.correction == pytest.approx((1.1, 0.3))
    for arch in archs[:3]:
        assert float(model.expected(one_hot_probabilities(arch))) == pytest.approx(model.predict(arch), rel=1e-5)
    with pytest.raises(ConfigError, match="at least two nets"):
        model.fit_correction([(archs[0], 1.0)])


def test_gradients_match_finite_differences():
    model = LatencyModel(fake_table(), SPACE, CLASSES)
    params = randomized_parameters()
    with tf.GradientTape() as tape:
        value = model.expected(params.probabilities())
    grads = dict(zip([v.name for v in params.variables], tape.gradient(value, params.variables)))
    step = 1e-2
    # (variable, index): beta at layer 2, 1/16, where both input edges exist
    for variable, index in ((params.alpha, (2, 1, 3)), (params.beta, (2, 1, 0)), (params.gamma, (1, 0, 1)),
                            (params.gamma, (2, 2, 0)), (params.gamma_stem, (2, 0)), (params.gamma_head, (1,)),
                            (params.delta, (0,))):
        original = variable.numpy()
        values = []
        for sign in (1, -1):
            shifted = original.copy()
            shifted[index] += sign * step
            variable.assign(shifted)
            values.append(float(model.expected(params.probabilities())))
        variable.assign(original)
        numeric = (values[0] - values[1]) / (2 * step)
        analytic = float(grads[variable.name][index])
        assert abs(analytic) > 1e-5, (variable.name, index)
        assert analytic == pytest.approx(numeric, rel=2e-2, abs=2e-6), (variable.name, index)


def test_decoupled_terms_route_gradients_to_their_own_parameters():
    model = LatencyModel(fake_table(), SPACE, CLASSES)
    params = randomized_parameters(seed=3)
    owners = {"ops": {"alpha"}, "path": {"beta", "delta"}, "widths": {"gamma", "gamma_stem", "gamma_head"},
              "total": {"alpha", "beta", "delta", "gamma", "gamma_stem", "gamma_head"}}
    with tf.GradientTape(persistent=True) as tape:
        terms = model.decoupled(params.probabilities())
    names = [v.name.split(":")[0].removeprefix("arch_") for v in params.variables]
    for term, value in terms.items():
        assert float(value) == pytest.approx(float(terms["total"]), rel=1e-6)
        for name, grad in zip(names, tape.gradient(value, params.variables)):
            moving = grad is not None and np.any(grad.numpy() != 0)
            assert moving == (name in owners[term]), (term, name)


def test_save_load_compatibility_and_read_only(tmp_path):
    path = tmp_path / "table.json"
    table = fake_table(path)
    model = LatencyModel(table, SPACE, CLASSES)  # measures the space, then saves
    arch = random_architecture(SPACE, np.random.default_rng(5))
    model.fit_correction([(arch, 2.0), (random_architecture(SPACE, np.random.default_rng(6)), 3.0)])
    document = json.loads(path.read_text())
    assert document["meta"]["space"] == SPACE.to_dict() and document["meta"]["input_size"] == list(SIZE)
    assert set(document["meta"]) >= {"dtype", "threads", "num_classes", "runtime", "machine", "date", "corrections"}

    loaded = LatencyTable.load(path, read_only=True)
    assert loaded.entries == table.entries and loaded.meta == table.meta and not list(path.parent.glob("*.tmp"))
    reloaded = LatencyModel(loaded, SPACE, CLASSES)  # complete: no measuring needed
    assert reloaded.predict(arch) == pytest.approx(model.predict(arch))
    assert loaded.check_compatible(SIZE, "int8", num_classes=CLASSES, space=SPACE, threads=(1,)) == []

    with pytest.raises(ConfigError, match=rf"{path}.*measured at 64x64 int8 .*deploys at 96x128 int8"):
        loaded.check_compatible((96, 128))
    version = table.meta["runtime"]["version"]
    with pytest.raises(ConfigError, match=rf"{path}.*on ai-edge-litert {version}; .* on 0\.0\.1"):
        loaded.check_compatible(SIZE, "int8", "0.0.1")
    with pytest.raises(ConfigError, match=rf"{path}.*float32"):
        loaded.check_compatible(SIZE, "float32")
    with pytest.raises(ConfigError, match="not at \\[4\\]"):
        loaded.check_compatible(SIZE, threads=(4,))

    missing = cell_key("conv3x3", 16, 1, 16, 64)
    with pytest.raises(ConfigError, match=r"read-only .* 1 block.*cell\|op=conv3x3.*tfseg latency-table .*--key"):
        loaded.lookup(missing)
    wider = SearchSpace(**{**SPACE.to_dict(), "head_width": 16})
    with pytest.raises(ConfigError, match=r"read-only .*--space .*--num-classes 3"):
        LatencyModel(loaded, wider, CLASSES)
    with pytest.raises(ConfigError, match="not a tfseg latency table"):
        (tmp_path / "other.json").write_text("{}")
        LatencyTable.load(tmp_path / "other.json")

    writable = LatencyTable.load(path, measure=FakeMeasure())
    assert writable.lookup(missing) == pytest.approx(fake_ms(missing))
    assert missing in json.loads(path.read_text())["entries"]  # saved after measuring


def test_real_litert_blocks_are_timed_as_one_partition():
    table = LatencyTable(SIZE, CLASSES, "int8", (1,), runs=3, warmup=1, verbose=0)
    keys = [stem_key(1, 3, 4), cell_key("sep_conv3x3", 16, 2, 8, 16), head_fuse_key(16, 2, 8, CLASSES)]
    table.ensure(keys)
    assert table.rejected() == {}
    for key in keys:
        assert set(table.entries[key]) == {"ms"} and table.lookup(key, 1) > 0


def test_a_block_that_splits_xnnpack_is_rejected(tmp_path):
    """int8 AVERAGE_POOL_2D is not taken by XNNPACK (ai-edge-litert 2.3.0): the block runs in two partitions."""
    key = cell_key("conv3x3", 8, 1, 4, 8)

    def pooled(key, input_size):
        block = block_model(key, input_size)
        x = keras.layers.AveragePooling2D(2, name="pool")(block.output)
        return keras.Model(block.input, keras.layers.Conv2D(4, 1, name="after")(x))

    def measure(keys):
        return measure_blocks(keys, SIZE, "int8", (1,), 2, 1, build=pooled, verbose=0)

    table = LatencyTable(SIZE, CLASSES, "int8", (1,), path=tmp_path / "t.json", measure=measure)
    with pytest.raises(ConfigError, match=r"block cell\|op=conv3x3\|scale=8.* rejected: not one XNNPACK partition "
                                          r"\(partitions: 2: AVERAGE_POOL_2D \(pool\)\)"):
        table.lookup(key)
    assert list(LatencyTable.load(tmp_path / "t.json").rejected()) == [key]


def test_latency_table_command_extends_a_table_and_names_mismatches(tmp_path, capsys):
    from tfseg.cli import main

    path = tmp_path / "table.json"
    LatencyModel(fake_table(path), SPACE, CLASSES)  # complete for SPACE: the command has nothing to measure
    assert main(["latency-table", str(path), "--verbose", "0"]) == 0
    assert "entries (0 rejected)" in capsys.readouterr().out
    assert main(["latency-table", str(path), "--input-size", "96x128"]) == 2
    assert "deploys at 96x128" in capsys.readouterr().err
    assert main(["latency-table", str(tmp_path / "new.json")]) == 2
    assert "needs --input-size and --num-classes" in capsys.readouterr().err


def test_the_blocks_of_an_architecture_add_up_to_its_net():
    """Same MACs and elementwise work in the net and in its table blocks summed (identity skips add none)."""
    from tfseg.models.profiling import layer_table
    from tfseg.models.searched import build_searched_net

    arch = random_architecture(SPACE, np.random.default_rng(2))

    def cost(model):
        rows = layer_table(model)
        return sum(row["macs"] for row in rows), sum(row["elementwise"] for row in rows)

    parts = [cost(block_model(key, SIZE)) for key in keys_for_architecture(arch, CLASSES)]
    assert tuple(map(sum, zip(*parts))) == cost(build_searched_net((*SIZE, 3), CLASSES, arch))
