"""Pretrained-weight loading: the shared TF-Slim MobileNetV2 arrays and Keras .h5 files made here."""

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tfseg._keras import keras
from tfseg.models import common
from tfseg.models.lite import build_mobilenet_v2_lraspp
from tfseg.models.mobilenet_v2 import mobilenet_v2_backbone
from tfseg.models.pretrained import (
    load_keras_h5,
    load_tfslim_mobilenet_v2,
    tfslim_mobilenet_v2_table,
    verify_sha256sums,
)

# shared/ beside the checkout (not in the repository; these checks are skipped without it)
SHARED = Path(__file__).resolve().parents[2] / "shared"
NPY_DIR = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_tfslim_npy"
CAMVID_TRAIN = Path(os.environ.get("TFSEG_CAMVID_DIR") or SHARED / "data" / "camvid") / "train"
needs_npy = pytest.mark.skipif(not NPY_DIR.is_dir(), reason=f"no TF-Slim arrays at {NPY_DIR}")
needs_camvid = pytest.mark.skipif(not CAMVID_TRAIN.is_dir(), reason=f"no CamVid images at {CAMVID_TRAIN}")
SIZE = (180, 240)  # odd sizes further down (45, 23): exercises the stride-2 padding too


def camvid_images(n=4):
    files = sorted(CAMVID_TRAIN.glob("*.webp"))[::90][:n]
    assert len(files) == n, f"CamVid train images missing in {CAMVID_TRAIN}"
    return np.stack([
        np.asarray(Image.open(f).convert("RGB").resize(SIZE[::-1], Image.BILINEAR), np.float32) for f in files
    ])


@pytest.fixture(scope="module")
def loaded_backbone():
    """Our full backbone (with Conv_1) on [0, 255] input, with the TF-Slim arrays loaded."""
    inputs = common.image_input(SIZE + (3,))
    feats = mobilenet_v2_backbone(common.normalize(inputs), alpha=1.0, include_last_conv=True)
    model = keras.Model(inputs, feats["features"])
    summary = load_tfslim_mobilenet_v2(model, NPY_DIR, verify_checksums=True)
    return model, summary


@needs_npy
def test_every_tfslim_array_is_used_exactly_once(loaded_backbone):
    model, summary = loaded_backbone
    on_disk = sorted(p.name for p in NPY_DIR.glob("*.npy"))
    assert len(on_disk) == 261
    assert len(summary["files"]) == len(set(summary["files"])) == 260
    assert sorted(summary["files"] + summary["unused_files"]) == on_disk
    assert summary["unused_files"] == ["Logits_Conv2d_1c_1x1_biases.npy"] and summary["absent_layers"] == []
    assert summary["parameters"] == 2_257_984 == model.count_params()
    # every variable of the model holds exactly the array the table names for it
    table = tfslim_mobilenet_v2_table()
    checked = 0
    for layer in model.layers:
        for weight in layer.weights:
            variable = weight.name.split("/")[-1].split(":")[0]
            np.testing.assert_array_equal(weight.numpy(), np.load(NPY_DIR / table[layer.name][variable]))
            checked += 1
    assert checked == 260


@needs_npy
@needs_camvid
def test_arrays_give_the_same_network_in_our_backbone_and_keras_applications(loaded_backbone):
    ours, _ = loaded_backbone
    ref = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=SIZE + (3,))
    assert [(layer.name, [w.shape for w in layer.weights]) for layer in ours.layers if layer.weights] == [
        (layer.name, [w.shape for w in layer.weights]) for layer in ref.layers if layer.weights
    ]
    summary = load_tfslim_mobilenet_v2(ref, NPY_DIR)
    assert len(summary["files"]) == 260
    images = camvid_images(2)
    expected = ref(images / 127.5 - 1.0).numpy()  # keras.applications takes preprocessed input
    assert expected.shape == (2, 6, 8, 1280) and expected.std() > 0.1
    np.testing.assert_allclose(ours(images).numpy(), expected, rtol=1e-4, atol=1e-4)


@needs_npy
@needs_camvid
def test_bn_statistics_agree_with_real_activations_so_the_weights_are_trained(loaded_backbone):
    # A trained network's BN moving mean is the mean of its conv output over the training data.
    # On real road images the per-channel batch means correlate with it; shapes alone would not.
    model, _ = loaded_backbone
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52
    taps = keras.Model(model.inputs, [layer.input for layer in bns])
    outputs = taps(camvid_images(4), training=False)
    means = {layer.name: out.numpy().reshape(-1, out.shape[-1]).mean(0) for layer, out in zip(bns, outputs)}
    logvars = {layer.name: np.log(out.numpy().reshape(-1, out.shape[-1]).var(0) + 1e-3) for layer, out in zip(bns, outputs)}

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    mean_corr = [corr(means[layer.name], layer.moving_mean.numpy()) for layer in bns]
    var_corr = [corr(logvars[layer.name], np.log(layer.moving_variance.numpy() + 1e-3)) for layer in bns]
    assert np.median(mean_corr) > 0.9  # measured 0.97
    assert np.median(var_corr) > 0.8  # measured 0.88
    depthwise = {name: c for name, c in zip([b.name for b in bns], mean_corr) if "depthwise_BN" in name}
    assert min(depthwise.values()) > 0.85  # measured >= 0.90 at every block
    # Mis-mapped controls. (1) BN groups of blocks 14 and 15 swapped (same shapes, so a wrong name
    # table would load silently): the statistics no longer match the activations.
    swapped = model.get_layer("block_15_depthwise_BN").moving_mean.numpy()
    assert depthwise["block_14_depthwise_BN"] > 0.85 and abs(corr(means["block_14_depthwise_BN"], swapped)) < 0.3
    # (2) BN arrays in the wrong order (gamma or beta taken for the moving mean): no agreement either.
    for wrong in ("gamma", "beta"):
        wrong_corr = [corr(means[layer.name], getattr(layer, wrong).numpy()) for layer in bns]
        assert abs(np.median(wrong_corr)) < 0.3


def tiny_stem(filters=32, extra=()):
    """A model holding only MobileNetV2's first two layers (plus ``extra`` layers)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(filters, 3, use_bias=False, name="Conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn_Conv1")(x)
    for layer in extra:
        x = layer(x)
    return keras.Model(inputs, x)


def link_dir(tmp_path, skip=(), sums=None):
    """A copy of the array directory made of symlinks, without ``skip``; optional SHA256SUMS text."""
    tmp_path.mkdir(exist_ok=True)
    for path in NPY_DIR.glob("*.npy"):
        if path.name not in skip:
            (tmp_path / path.name).symlink_to(path)
    if sums is not None:
        (tmp_path / "SHA256SUMS").write_text(sums)
    return tmp_path


@needs_npy
def test_tfslim_loader_loads_a_prefix_and_names_what_is_wrong(tmp_path):
    model = tiny_stem()
    summary = load_tfslim_mobilenet_v2(model, NPY_DIR)
    assert summary["loaded_layers"] == ["Conv1", "bn_Conv1"] and len(summary["files"]) == 5
    assert summary["absent_layers"][0] == "expanded_conv_depthwise" and "Conv_1_bn" in summary["absent_layers"]
    np.testing.assert_array_equal(model.get_layer("bn_Conv1").moving_variance.numpy(),
                                  np.load(NPY_DIR / "Conv_BatchNorm_moving_variance.npy"))

    with pytest.raises(FileNotFoundError, match=r"Conv_BatchNorm_beta\.npy: missing.*'beta' of layer 'bn_Conv1'"):
        load_tfslim_mobilenet_v2(tiny_stem(), link_dir(tmp_path / "a", skip={"Conv_BatchNorm_beta.npy"}))
    with pytest.raises(ValueError, match=r"layer 'Conv1' kernel has shape \(3, 3, 3, 16\) but Conv_weights\.npy has "
                                         r"\(3, 3, 3, 32\); the arrays are MobileNetV2 with alpha 1\.0"):
        load_tfslim_mobilenet_v2(tiny_stem(16), NPY_DIR)  # alpha 0.35's stem
    unknown = tiny_stem(extra=[keras.layers.Conv2D(4, 1, name="block_17_expand")])
    with pytest.raises(ValueError, match=r"\['block_17_expand'\] have MobileNetV2 names but no TF-Slim arrays"):
        load_tfslim_mobilenet_v2(unknown, NPY_DIR)
    misspelt = tiny_stem(extra=[keras.layers.DepthwiseConv2D(3, use_bias=False, name="expanded_conv_depthwise"),
                                keras.layers.BatchNormalization(name="expanded_conv_depthwise_bn")])
    with pytest.raises(ValueError, match=r"\['expanded_conv_depthwise_bn'\] have MobileNetV2 names but no TF-Slim"):
        load_tfslim_mobilenet_v2(misspelt, NPY_DIR)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(32, 3, use_bias=False, name="Conv1")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)  # renamed: bn_Conv1 would stay random
    x = keras.layers.DepthwiseConv2D(3, use_bias=False, name="expanded_conv_depthwise")(x)
    with pytest.raises(ValueError, match=r"lacks MobileNetV2 layers \['bn_Conv1'\] but has later ones"):
        load_tfslim_mobilenet_v2(keras.Model(inputs, x), NPY_DIR)
    with pytest.raises(ValueError, match="none of MobileNetV2's layers"):
        load_tfslim_mobilenet_v2(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), NPY_DIR)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_tfslim_mobilenet_v2(tiny_stem(), tmp_path / "nowhere")


@needs_npy
def test_checksums_catch_a_replaced_array(tmp_path):
    sums = (NPY_DIR / "SHA256SUMS").read_text()
    assert verify_sha256sums(NPY_DIR) == 261
    bad = link_dir(tmp_path / "bad", skip={"Conv_weights.npy"}, sums=sums)
    np.save(bad / "Conv_weights.npy", np.zeros((3, 3, 3, 32), np.float32))  # right shape, wrong values
    model = tiny_stem()
    before = model.get_layer("Conv1").kernel.numpy()
    with pytest.raises(ValueError, match=r"Conv_weights\.npy: SHA-256 differs"):
        load_tfslim_mobilenet_v2(model, bad)
    np.testing.assert_array_equal(model.get_layer("Conv1").kernel.numpy(), before)  # nothing assigned
    assert load_tfslim_mobilenet_v2(model, bad, verify_checksums=False)["parameters"] == 864 + 4 * 32
    with pytest.raises(FileNotFoundError, match="no checksum file"):
        load_tfslim_mobilenet_v2(tiny_stem(), link_dir(tmp_path / "nosums"), verify_checksums=True)


@pytest.fixture(scope="module")
def mobilenet_h5(tmp_path_factory):
    """A keras-applications MobileNetV2 alpha 0.35 no-top weights file (random weights: no download here)."""
    ref = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(96, 96, 3))
    path = tmp_path_factory.mktemp("h5") / "mobilenet_v2_0.35_96_no_top.h5"
    ref.save_weights(str(path))
    return path, {layer.name: layer.get_weights() for layer in ref.layers if layer.weights}


def test_keras_h5_loads_by_name_and_reports_the_head(mobilenet_h5):
    path, expected = mobilenet_h5
    model = build_mobilenet_v2_lraspp((64, 64, 3), num_classes=3, alpha=0.35, weights=str(path))
    for name, arrays in expected.items():
        if name not in ("Conv_1", "Conv_1_bn"):
            for got, want in zip(model.get_layer(name).get_weights(), arrays):
                np.testing.assert_array_equal(got, want)
    summary = load_keras_h5(model, path, ignore_layers=("Conv_1", "Conv_1_bn"))
    assert summary["ignored_layers"] == ["Conv_1", "Conv_1_bn"] and len(summary["loaded_layers"]) == 102
    assert summary["not_in_file"] == ["head_conv", "head_bn", "head_gate_conv", "head_classifier", "low_classifier"]
    with pytest.raises(ValueError, match=r"layer 'Conv_1' \(weights \['Conv_1/kernel:0'\]\) has no layer of that name"):
        load_keras_h5(model, path)


def test_keras_h5_errors_name_the_layer(mobilenet_h5, tmp_path):
    path, _ = mobilenet_h5
    inputs = keras.Input((32, 32, 3))
    wider = keras.Model(inputs, mobilenet_v2_backbone(inputs, alpha=0.5, include_last_conv=True)["features"])
    before = wider.get_layer("Conv1").kernel.numpy()
    with pytest.raises(ValueError, match=r"layer 'block_1_project' kernel has shape \(1, 1, 48, 8\) in the file "
                                         r"but \(1, 1, 48, 16\) in the model"):
        load_keras_h5(wider, path)
    np.testing.assert_array_equal(wider.get_layer("Conv1").kernel.numpy(), before)  # all or nothing
    with pytest.raises(FileNotFoundError, match="no such Keras weights file"):
        load_keras_h5(wider, tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a Keras HDF5 weights file"):
        load_keras_h5(wider, tmp_path / "other.h5")


def test_keras_h5_flips_caffe_bgr_kernels_for_rgb_input(tmp_path):
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.h5"
    vgg.save_weights(str(path))
    inputs = keras.Input((32, 32, 3))
    body = keras.applications.VGG16(include_top=False, weights=None, input_tensor=inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(body.output))  # flat: VGG layers + head
    summary = load_keras_h5(model, path, input_channel_flip="block1_conv1")
    assert summary["flipped"] == "block1_conv1" and summary["not_in_file"] == ["head"]
    assert summary["parameters"] == vgg.count_params() == 14_714_688
    kernel = vgg.get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(model.get_layer("block1_conv1").kernel.numpy(), kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(model.get_layer("block1_conv1").bias.numpy(), vgg.get_layer("block1_conv1").bias.numpy())
    np.testing.assert_array_equal(model.get_layer("block5_conv3").kernel.numpy(), vgg.get_layer("block5_conv3").kernel.numpy())
    with pytest.raises(ValueError, match="input_channel_flip='block1_conv2': needs a conv kernel with 3 input channels"):
        load_keras_h5(model, path, input_channel_flip="block1_conv2")
    with pytest.raises(ValueError, match="input_channel_flip='conv1_conv': no layer of that name"):
        load_keras_h5(model, path, input_channel_flip="conv1_conv")
