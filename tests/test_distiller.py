"""The Distiller through plain compile()/fit(): frozen teacher, student-only gradients, logs,
adapters, validation errors, resume, classification, pruned and QAT students."""

import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras, tf
from tfseg.distill import taps
from tfseg.distill import (
    AdaptiveCrossEntropy,
    ChannelWiseKD,
    CSCLoss,
    DistillationLoss,
    Distiller,
    PairwiseKD,
    PixelKD,
)

SIZE = (64, 64)
CLASSES = 3


def segmentation_data(num=8, batch=4, seed=0, size=SIZE, classes=CLASSES):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num, *size, 3)).astype("float32")
    # Labels that depend on the image, with an ignored band, so there is something to learn.
    labels = (images[..., 0] // (256 / classes)).astype("int32")
    labels[:, :4] = 255
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


@pytest.fixture(scope="module")
def pair():
    keras.utils.set_random_seed(0)
    teacher = models.build("unet_small", (*SIZE, 3), CLASSES)
    student = models.build("fastseg_tiny", (*SIZE, 3), CLASSES)
    return teacher, student


def fresh_student():
    return models.build("fastseg_tiny", (*SIZE, 3), CLASSES)


def all_weights(model):
    return [w.numpy().copy() for w in model.weights]


def test_teacher_is_bit_identical_after_fit_and_student_learns(pair):
    teacher, _ = pair
    student = fresh_student()
    before_teacher, before_student = all_weights(teacher), all_weights(student)
    distiller = Distiller(teacher, student, [PixelKD(temperature=4.0, alpha=0.5), PairwiseKD(pool_size=2)])
    distiller.compile(keras.optimizers.Adam(1e-3))
    history = distiller.fit(segmentation_data(), validation_data=segmentation_data(seed=1), epochs=2, verbose=0)
    for old, new in zip(before_teacher, all_weights(teacher)):
        np.testing.assert_array_equal(old, new)  # includes BN moving statistics: inference mode
    changed = [not np.array_equal(old, new) for old, new in zip(before_student, all_weights(student))]
    assert sum(changed) > len(changed) // 2
    logs = history.history
    for key in ("student_loss", "pixel_kd", "pairwise_kd", "total_loss", "miou", "pixel_accuracy",
                "val_student_loss", "val_miou"):
        assert key in logs and np.isfinite(logs[key]).all(), key
    # PixelKD contains the ground-truth term, so the plain CE is weighted 0 by default:
    # total = 1 * pixel_kd + 1 * pairwise_kd.
    assert distiller.student_loss_weight == 0.0
    np.testing.assert_allclose(logs["total_loss"], np.add(logs["pixel_kd"], logs["pairwise_kd"]), rtol=1e-4)


def test_default_is_pixel_kd_and_student_is_what_gets_saved(pair, tmp_path):
    from tfseg.checkpoint import save_model

    teacher, _ = pair
    student = fresh_student()
    distiller = Distiller(teacher, student)
    assert [type(loss) for loss in distiller.distillation_losses] == [PixelKD]
    distiller.compile("adam")
    distiller.fit(segmentation_data(num=4), epochs=1, verbose=0)
    path = save_model(distiller, tmp_path / "student.keras")
    loaded = keras.models.load_model(path, compile=False)
    assert loaded.name == student.name and loaded.count_params() == student.count_params()
    x = next(iter(segmentation_data(num=2)))[0]
    np.testing.assert_allclose(loaded(x).numpy(), student(x).numpy(), rtol=1e-5, atol=1e-5)


def test_adapter_maps_student_channels_and_stays_out_of_the_student(pair):
    teacher, _ = pair
    student = fresh_student()
    # decoder: teacher 16 channels at 64x64, student 64 channels at 8x8 -> 1x1 adapter + resize.
    on_decoder = ChannelWiseKD(teacher_endpoint="decoder", student_endpoint="decoder", name="cwd_decoder")
    # CSC compares position x position matrices: any channel counts, no adapter.
    csc = CSCLoss(teacher_endpoint="decoder", student_endpoint="decoder", pool_size=8)
    distiller = Distiller(teacher, student, [on_decoder, csc, ChannelWiseKD()])
    adapters = [adapter for adapter in distiller.adapters if adapter is not None]
    assert len(adapters) == 1  # CWD on logits: same channel count, no adapter
    distiller.compile("adam")
    distiller.fit(segmentation_data(num=4), epochs=1, verbose=0)
    assert adapters[0].kernel.shape == (1, 1, 64, 16)
    assert not any(layer.name.startswith("adapter") for layer in student.layers)
    # The adapter trained (gradients reach it), the student saved without it.
    assert np.abs(adapters[0].kernel.numpy()).sum() > 0


class SquaredFeatures(DistillationLoss):
    """A user's loss: it steers the Distiller through the hooks alone, no Distiller change."""

    default_name = "squared_features"
    default_teacher_endpoint = "decoder"
    default_student_endpoint = "decoder"

    def validate(self, teacher, student):
        super().validate(teacher, student)
        self.validated = (teacher.name, student.name)

    def adapter(self, teacher_channels, student_channels, name):
        return keras.layers.Dense(teacher_channels, name=name)  # its own kind of adapter

    def default_student_loss_weight(self):
        return 0.5

    def compute(self, teacher, student, labels):
        return tf.reduce_mean(tf.square(teacher - student), axis=[1, 2, 3])


def test_the_distiller_asks_each_loss_through_its_hooks(pair):
    teacher, _ = pair
    student = fresh_student()
    loss = SquaredFeatures()
    distiller = Distiller(teacher, student, [loss])
    assert loss.validated == (teacher.name, student.name)
    adapter = distiller.adapters[0]
    assert isinstance(adapter, keras.layers.Dense) and adapter.kernel.shape == (64, 16)  # built at construction
    assert distiller.student_loss_weight == 0.5
    # The smallest weight asked for wins (PixelKD holds the ground-truth term); an explicit one overrides all.
    assert Distiller(teacher, student, [loss, PixelKD()]).student_loss_weight == 0.0
    assert Distiller(teacher, student, [loss], student_loss_weight=2.0).student_loss_weight == 2.0
    assert Distiller(teacher, student, []).student_loss_weight == 1.0
    distiller.compile("adam")
    before = adapter.kernel.numpy().copy()
    logs = distiller.fit(segmentation_data(num=4), epochs=1, verbose=0).history
    np.testing.assert_allclose(
        logs["total_loss"], 0.5 * np.asarray(logs["student_loss"]) + np.asarray(logs["squared_features"]), rtol=1e-4)
    assert not np.array_equal(before, adapter.kernel.numpy())  # the loss's adapter trains with the student


def test_only_student_and_adapter_variables_train(pair):
    teacher, _ = pair
    student = fresh_student()
    distiller = Distiller(teacher, student, [ChannelWiseKD(teacher_endpoint="decoder", student_endpoint="decoder")])
    trained = {id(v) for v in distiller._trainable_variables()}
    assert not trained & {id(v) for v in teacher.weights}
    assert {id(v) for v in student.trainable_variables} <= trained


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda t, s: Distiller(t, models.build("fastseg_tiny", (*SIZE, 3), 5)), ValueError, "outputs 3 classes"),
        (lambda t, s: Distiller(s, t), ValueError, "swapped"),
        (lambda t, s: Distiller(t, t), ValueError, "same model"),
        (lambda t, s: Distiller(t, s, [PairwiseKD(teacher_endpoint="low_level")]), ValueError, "no endpoint 'low_level'"),
        (lambda t, s: Distiller(t, s, [PixelKD(), PixelKD()]), ValueError, "two distillation losses"),
        # ReLU features cannot have the negative affinities of signed teacher logits.
        (lambda t, s: Distiller(t, s, [PairwiseKD(teacher_endpoint="logits")]), ValueError, "never negative"),
        (lambda t, s: Distiller(t, s, ["pixel_kd"]), TypeError, "tfseg.distill.losses"),
        (lambda t, s: Distiller(t, models.build("fastseg_tiny", (32, 32, 3), CLASSES)), ValueError, "fixed sizes"),
    ],
)
def test_misconfigured_distiller_raises(pair, make, error, fragment):
    teacher, student = pair
    with pytest.raises(error, match=fragment):
        make(teacher, student)


def test_sign_of_taps_is_read_through_identity_layers():
    inputs = keras.Input((8, 8, 3))
    relu_conv = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    pooled = keras.layers.MaxPooling2D()(relu_conv)
    features = keras.layers.Activation("linear", name="features")(pooled)
    decoder = keras.layers.Conv2D(4, 1, name="decoder")(features)  # a linear conv: can be negative
    model = keras.Model(inputs, keras.layers.Add(name="sum")([decoder, features]))
    assert taps.is_non_negative(model, "features")
    assert not taps.is_non_negative(model, "decoder")
    assert not taps.is_non_negative(model, "logits")
    # "logits" is the first output, read from the layer that made it (not model.layers[-1]).
    relu_out = keras.layers.ReLU(name="out")(decoder)
    aux = keras.layers.Conv2D(4, 1, name="aux")(features)
    assert taps.is_non_negative(keras.Model(inputs, [relu_out, aux]), "logits")
    assert not taps.is_non_negative(keras.Model(inputs, [aux, relu_out]), "logits")
    mobilenet = models.build("deeplabv3_mobilenet_v2", (*SIZE, 3), CLASSES)
    # MobileNetV2's linear bottleneck is signed; DeepLab's ASPP projection ends in a ReLU.
    assert not taps.is_non_negative(mobilenet, "features")
    assert taps.is_non_negative(mobilenet, "decoder")


def test_gradient_norms_weigh_each_term_and_leave_the_student_as_it_was(pair):
    teacher, _ = pair
    student = fresh_student()
    distiller = Distiller(teacher, student, [
        PairwiseKD(pool_size=2, teacher_endpoint="decoder", student_endpoint="decoder", weight=2.0),
        CSCLoss(weight=0.0),
    ])
    distiller.compile(keras.optimizers.Adam(1e-3))
    images, labels = next(iter(segmentation_data()))
    before = all_weights(student)  # includes the BN moving statistics
    norms = distiller.gradient_norms(images, labels)
    for old, new in zip(before, all_weights(student)):
        np.testing.assert_array_equal(old, new)
    assert set(norms) == {"student_loss", "pairwise_kd", "csc"}
    assert all(value == 0.0 for value in norms["csc"].values())  # weight 0
    assert sum(norms["student_loss"].values()) > 0
    # The pair-wise tap is the decoder: the classifier after it gets no pair-wise gradient.
    classifier = student.get_layer("classifier").kernel.name
    assert norms["pairwise_kd"][classifier] == 0.0 and norms["student_loss"][classifier] > 0
    doubled = Distiller(teacher, student, [PairwiseKD(pool_size=2, teacher_endpoint="decoder",
                                                      student_endpoint="decoder", weight=4.0)])
    doubled.compile(keras.optimizers.Adam(1e-3))
    fused = student.get_layer("dec_fuse_pw").kernel.name
    assert doubled.gradient_norms(images, labels)["pairwise_kd"][fused] == pytest.approx(
        2 * norms["pairwise_kd"][fused], rel=1e-4)


def test_fit_before_compile_says_so(pair):
    teacher, student = pair
    with pytest.raises(RuntimeError, match="compile"):
        Distiller(teacher, student).fit(segmentation_data(num=4), epochs=1, verbose=0)


def test_distiller_checkpoint_resumes_where_it_stopped(pair, tmp_path):
    teacher, _ = pair

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.optimizer_state = [v.numpy() for v in self.model.optimizer.variables]
                raise KeyboardInterrupt  # a kill after epoch 0 finished

    backup = str(tmp_path / "backup")
    keras.utils.set_random_seed(1)
    first = Distiller(teacher, fresh_student())
    first.compile(keras.optimizers.Adam(1e-3))
    crash = Crash()
    with pytest.raises(KeyboardInterrupt):
        first.fit(segmentation_data(), epochs=3, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), crash])
    after_epoch_0 = all_weights(first.student)

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start_weights = all_weights(self.model.student)
            self.optimizer_state = [v.numpy() for v in self.model.optimizer.variables]

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs = getattr(self, "epochs", []) + [epoch]

    record = Record()
    second = Distiller(teacher, fresh_student())
    second.compile(keras.optimizers.Adam(1e-3))
    second.fit(segmentation_data(), epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup), record])
    assert record.epochs == [1, 2]  # resumed after the finished epoch
    # The new, differently initialised student started from the weights of the killed run's epoch 0
    # (BackupAndRestore restores in on_train_begin, before the recording callback runs).
    for old, restored in zip(after_epoch_0, record.start_weights):
        np.testing.assert_array_equal(old, restored)
    # The Distiller is built at construction, so the optimizer's moments exist and are restored too.
    assert len(record.optimizer_state) == len(crash.optimizer_state) > 1
    for old, restored in zip(crash.optimizer_state, record.optimizer_state):
        np.testing.assert_array_equal(old, restored)
    assert int(second.optimizer.iterations.numpy()) == 3 * 2  # 3 epochs x 2 steps in total


def test_classification_resnet18_into_cnn5():
    keras.utils.set_random_seed(0)
    teacher = models.build("resnet18_cifar", (32, 32, 3), 10)
    student = models.build("cnn5", (32, 32, 3), 10)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    before = all_weights(teacher)
    distiller = Distiller(teacher, student, [PixelKD(temperature=4.0, alpha=0.9), AdaptiveCrossEntropy()],
                          allow_larger_student=False)
    distiller.compile(keras.optimizers.Adam(1e-3))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert {"student_loss", "pixel_kd", "ace", "total_loss", "accuracy"} <= set(logs)
    for old, new in zip(before, all_weights(teacher)):
        np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match="classifiers"):
        Distiller(teacher, student, [PairwiseKD()])


def _conv_segmenter(name, width, classes=CLASSES):
    """A flat model of layers TF-MOT prunes and quantizes as they are (no Rescaling)."""
    layers = keras.layers
    inputs = keras.Input((*SIZE, 3), name="image")
    x = layers.Conv2D(width, 3, strides=2, padding="same", name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="features")(x)
    x = layers.Conv2D(classes, 1, name="classifier")(x)
    logits = layers.UpSampling2D(2, interpolation="bilinear", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def test_pruning_wrapped_student_reaches_its_sparsity():
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    keras.utils.set_random_seed(0)
    teacher = _conv_segmenter("teacher", 32)
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    student = tfmot.sparsity.keras.prune_low_magnitude(_conv_segmenter("student", 16), pruning_schedule=schedule)
    distiller = Distiller(teacher, student, [PixelKD(), PairwiseKD(pool_size=2)])
    distiller.compile(keras.optimizers.Adam(1e-3))
    distiller.fit(segmentation_data(), epochs=2, verbose=0)  # no UpdatePruningStep passed: the Distiller drives it
    stripped = tfmot.sparsity.keras.strip_pruning(distiller.student)
    kernel = stripped.get_layer("conv1").kernel.numpy()
    assert abs(np.mean(kernel == 0) - 0.5) < 0.02


def test_quantization_aware_student_trains_inside_the_distiller():
    tfmot = pytest.importorskip("tensorflow_model_optimization")
    keras.utils.set_random_seed(0)
    teacher = _conv_segmenter("teacher", 32)
    student = tfmot.quantization.keras.quantize_model(_conv_segmenter("student", 16))
    distiller = Distiller(teacher, student, [PixelKD(), ChannelWiseKD(teacher_endpoint="features", student_endpoint="features")])
    assert distiller.adapters[1] is not None  # features: 16 student channels vs 32
    distiller.compile(keras.optimizers.Adam(1e-3))
    before = all_weights(student)
    logs = distiller.fit(segmentation_data(), epochs=1, verbose=0).history
    assert np.isfinite(logs["total_loss"]).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, all_weights(student)))
    # Fake-quant ranges were learned (moving min/max moved from their initial values).
    ranges = [w.numpy() for w in student.weights if "min" in w.name or "max" in w.name]
    assert ranges and any(np.any(r != 0) for r in ranges)
