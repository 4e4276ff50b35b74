"""The one place that decides which Keras tfseg uses.

TF-MOT 0.8.1 only works with Keras 2 (``tf_keras``), and ``tf.keras`` resolves to Keras 2 or 3
depending on ``TF_USE_LEGACY_KERAS`` at import time (importing tfmot sets it as a side effect).
So the variable is set here, before TensorFlow is imported, and every other tfseg module
imports ``keras`` and ``tf`` from this module, never ``keras`` or ``tf.keras`` directly.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TF's C++ start-up chatter
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf"]
