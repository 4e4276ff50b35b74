"""Runs two Distiller steps in a fresh process, under a given distribution setup, and saves the
student's weights: ``python distill_worker.py MODE OUT.npz`` with MODE single | mirrored | worker.

Used by tests/test_distill_distributed.py. ``worker`` expects TF_CONFIG in the environment
(MultiWorkerMirroredStrategy, one CPU device per process).
"""

import sys

import numpy as np


def main(mode: str, out: str):
    from tfseg._keras import keras, tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    from tfseg.distill import Distiller, PairwiseKD, PixelKD

    layers = keras.layers

    def segmenter(name, width, batch_norm):
        # The student has no BatchNormalization: per-replica batch statistics would make the
        # distributed step differ from the single-device one for a reason unrelated to the Distiller.
        inputs = keras.Input((32, 32, 3), name="image")
        x = layers.Conv2D(width, 3, strides=2, padding="same", name="conv1")(inputs)
        if batch_norm:
            x = layers.BatchNormalization(name="bn1")(x)
        x = layers.ReLU(name="features")(x)
        x = layers.Conv2D(3, 1, name="classifier")(x)
        return keras.Model(inputs, layers.UpSampling2D(2, interpolation="bilinear", name="logits")(x), name=name)

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    labels = (images[..., 1] // 86).astype("int32")
    labels[:, :3] = 255
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)

    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = segmenter("teacher", 16, batch_norm=True)
        student = segmenter("student", 8, batch_norm=False)
        distiller = Distiller(teacher, student, [PixelKD(temperature=2.0, alpha=0.7), PairwiseKD(pool_size=2)])
        distiller.compile(keras.optimizers.SGD(0.05))
    history = distiller.fit(data, epochs=1, verbose=0)
    np.savez(out, *[w.numpy() for w in student.weights], total_loss=history.history["total_loss"][-1],
             replicas=strategy.num_replicas_in_sync)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
