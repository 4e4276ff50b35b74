"""The search space, the architecture document, the architecture parameters and the derived network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tfseg import models
from tfseg.errors import ConfigError
from tfseg.nas.arch_params import ArchParameters, beta_mask, most_probable_path, path_probabilities, random_architecture
from tfseg.nas.architecture import Architecture, Cell, reference_architecture
from tfseg.nas.space import SearchSpace, feature_sizes, space_document

TINY = SearchSpace(num_layers=3, cell_widths=(8, 16, 32), width_ratios=(0.5, 1.0), stem_widths=(4, 8, 8), head_width=8)


def tiny_architecture(ops=("conv3x3", "zoomed_conv", "sep_conv3x3")):
    coarse = (Cell(8, ops[0], 8), Cell(16, ops[1], 16), Cell(32, ops[2], 16))
    fine = (Cell(8, "skip", 4), Cell(8, "conv3x3_x2", 8), Cell(16, "skip", 16))
    return Architecture(TINY, (4, 8, 8), 4, (coarse, fine))


def test_feature_sizes_halve_with_ceiling_so_360x480_needs_no_padding():
    assert feature_sizes((360, 480)) == {2: (180, 240), 4: (90, 120), 8: (45, 60), 16: (23, 30), 32: (12, 15)}


def test_architecture_round_trips_through_json(tmp_path):
    arch = tiny_architecture()
    path = tmp_path / "arch.json"
    arch.save(path)
    assert Architecture.load(path) == arch
    assert json.loads(path.read_text())["format"] == "tfseg-nas-architecture/1"
    assert Architecture.from_dict(reference_architecture().to_dict()) == reference_architecture()


@pytest.mark.parametrize("change, message", [
    (dict(ops=("conv3x3", "conv5x5")), "unknown op 'conv5x5'"),
    (dict(cell_widths=(8, 16, 30), width_ratios=(0.25, 1.0)), "does not divide by the width ratio 0.25: 30 x 0.25 = 7.5"),
    (dict(head_width=6, width_ratios=(0.25, 1.0)), "head width 6 does not divide"),
    (dict(num_layers=2), "num_layers must be an integer >= 3"),
    (dict(width_ratios=(0.5, 1.5)), "width_ratios must be fractions in (0, 1]"),
])
def test_bad_search_spaces_are_named(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        SearchSpace(**{**TINY.to_dict(), **change})


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["branches"][0].__setitem__(1, {"scale": 32, "op": "conv3x3", "width": 16}),
     "branch 0, layer 1: no cell at scale 1/32"),
    (lambda d: d["branches"][0].__setitem__(2, {"scale": 32, "op": "dilated", "width": 16}),
     "branch 0, layer 2: op 'dilated' is not in the space"),
    (lambda d: d["branches"][0].__setitem__(2, {"scale": 32, "op": "conv3x3", "width": 12}),
     "branch 0, layer 2: width 12 is not a choice at 1/32"),
    (lambda d: d.__setitem__("stem_widths", [4, 8, 5]), "stem stage 3 width 5"),
    (lambda d: d.__setitem__("format", "other/1"), "not a tfseg architecture"),
    (lambda d: d["branches"].reverse(), "coarsest first"),
    (lambda d: d.pop("head_width"), "malformed architecture"),
])
def test_bad_architectures_are_named_with_their_file(tmp_path, edit, message):
    document = tiny_architecture().to_dict()
    edit(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message) as error:
        Architecture.load(path)
    assert str(path) in str(error.value)


def test_searched_net_builds_any_size_and_refuses_too_small_inputs():
    model = models.build("searched", (45, 70, 3), 5, architecture=tiny_architecture().to_dict())
    assert model.output_shape == (None, 45, 70, 5)
    assert {"low_level", "features", "decoder", "logits"} <= set(models.endpoints(model))
    with pytest.raises(ConfigError, match=r"input size \(20, 64\) is too small"):
        models.build("searched", (20, 64, 3), 5, architecture=tiny_architecture().to_dict())
    with pytest.raises(ConfigError, match="architecture file .*missing.json does not exist"):
        models.build("searched", (64, 64, 3), 5, architecture="missing.json")


def test_one_hot_parameters_derive_their_architecture_and_paths():
    params = ArchParameters(TINY)
    rng = np.random.default_rng(0)
    for variable in params.variables:
        variable.assign(rng.normal(size=variable.shape))
    arch = params.derive()
    assert arch.branch_scales[0] == 32 and arch.branch_scales[1] in (16, 8)
    probs = params.probabilities()
    for end in range(3):
        through = path_probabilities(probs["beta"], end).numpy()
        assert np.allclose(through.sum(axis=1), 1.0)  # a path crosses each layer exactly once
        assert through[0, 0] == pytest.approx(1.0)  # and starts at 1/8 from the stem
    # A strongly preferred edge decides the path.
    beta = np.where(beta_mask(TINY), 0.0, 0.0)
    beta[..., 1] = 1.0  # every cell that can, takes its input from the finer scale
    params.beta.assign(beta * 20)
    assert most_probable_path(params.probabilities()["beta"].numpy(), 2) == [0, 1, 2]
    assert most_probable_path(params.probabilities()["beta"].numpy(), 0) == [0, 0, 0]


def test_tilted_random_nets_lean_to_the_cheap_or_the_costly_choices():
    space = SearchSpace(num_layers=6)
    costs = {"skip": 0.0, "sep_conv3x3": 1.0, "zoomed_conv": 2.0, "conv3x3": 3.0, "conv3x3_x2": 4.0}

    def mean_cost_and_width(tilt):
        rng = np.random.default_rng(0)
        cells = [cell for _ in range(20) for branch in random_architecture(space, rng, tilt, costs).branches
                 for cell in branch]
        return np.mean([costs[c.op] for c in cells]), np.mean([c.width / max(space.cell_width_choices(c.scale))
                                                                for c in cells])
    cheap, uniform, costly = (mean_cost_and_width(t) for t in (-1.0, 0.0, 1.0))
    assert cheap[0] < 0.5 < uniform[0] - 1.0 < costly[0] - 2.0  # op cost: ~0, ~2, ~4
    assert cheap[1] < uniform[1] < costly[1]
    with pytest.raises(ValueError, match="tilt"):
        random_architecture(space, np.random.default_rng(0), tilt=1.5)


def test_space_option_reads_json_text_or_a_file_and_names_bad_input(tmp_path):
    assert space_document("") == {}
    assert SearchSpace.from_dict(space_document('{"num_layers": 4}')).num_layers == 4
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"cell_widths": [16, 32, 64]}))
    assert space_document(str(path)) == {"cell_widths": [16, 32, 64]}
    with pytest.raises(ConfigError, match="neither a JSON file nor JSON text"):
        space_document("{num_layers: 4")
    with pytest.raises(ConfigError, match="JSON object"):
        space_document("[4]")
