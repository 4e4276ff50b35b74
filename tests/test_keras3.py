"""Keras 3 users consume tfseg's SavedModel exports: in a process where ``import keras`` is Keras 3
(and tfseg is never imported, so nothing sets TF_USE_LEGACY_KERAS), ``keras.layers.TFSMLayer``
loads a ``tfseg.export.to_saved_model`` directory, alone and inside a Keras 3 functional model, and
gives the class map of the tfseg model and of the SavedModel's own signature.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from test_export import INFO, SIZE, lively

from tfseg import export, models
from tfseg._keras import tf

CHILD = r"""
import json, sys
import numpy as np
import keras

path, images_file, out_file = sys.argv[1:]
batches = np.load(images_file)
by_signature = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
# The layer inside a Keras 3 model, as an application would use it (any image size, uint8).
inputs = keras.Input((None, None, 3), dtype="uint8")
model = keras.Model(inputs, by_signature(inputs)["class_map"])
results = {}
for name in batches.files:
    results[f"{name}_layer"] = keras.ops.convert_to_numpy(by_signature(batches[name])["class_map"])
    results[f"{name}_model"] = model.predict(batches[name], verbose=0)
np.savez(out_file, **results)
print(json.dumps({"keras": keras.__version__, "tfseg_imported": "tfseg" in sys.modules,
                  "legacy_keras": "tf_keras" in sys.modules}))
"""


def _keras3_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3"}


def test_keras3_tfsmlayer_gives_the_class_map_of_a_tfseg_saved_model(tmp_path):
    model = lively(models.build("unet", (*SIZE, 3), len(INFO.class_names), depth=2, width=8))
    path = tmp_path / "unet_savedmodel"
    export.to_saved_model(model, path, info=INFO)
    rng = np.random.default_rng(0)
    # One batch at the model's size, one at another size (the signature resizes inside the graph).
    batches = {"model_size": rng.integers(0, 256, (3, *SIZE, 3), dtype=np.uint8),
               "other_size": rng.integers(0, 256, (2, SIZE[0] + 9, SIZE[1] - 7, 3), dtype=np.uint8)}
    np.savez(tmp_path / "images.npz", **batches)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / "images.npz"),
                           str(tmp_path / "keras3.npz")],
                          cwd=tmp_path, env=_keras3_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["keras"].startswith("3."), child
    assert not child["tfseg_imported"] and not child["legacy_keras"], child
    got = np.load(tmp_path / "keras3.npz")
    served = tf.saved_model.load(str(path)).signatures["serving_default"]
    for name, images in batches.items():
        expected = served(images=tf.constant(images))["class_map"].numpy()
        # The same graph run by the same TensorFlow: identical, not merely close.
        np.testing.assert_array_equal(got[f"{name}_layer"], expected, err_msg=name)
        np.testing.assert_array_equal(got[f"{name}_model"], expected, err_msg=name)
        assert len(np.unique(expected)) > 1, "a constant class map would prove nothing"
        if name == "model_size":  # no resizing: the tf_keras model's own argmax
            np.testing.assert_array_equal(expected, np.argmax(model(images.astype("float32")), axis=-1))
