"""Training-time augmentation of (image, mask) pairs with TensorFlow ops, inside the input graph.

Geometry (flip, scale, rotation, crop) is folded into one affine map per example and applied with a
single ``ImageProjectiveTransformV3`` per tensor: the image is sampled bilinearly, the mask with
nearest neighbour (so it only ever holds labels that were already there), and pixels that come from
outside the source image are 0 in the image and ``IGNORE_LABEL`` in the mask. Because image and
mask go through the same matrix they stay aligned; one resampling instead of three (resize, rotate,
crop) is also faster and blurs less. Colour jitter then changes the image only.

Every random draw is a stateless op keyed by a per-example seed, so a seeded pipeline reproduces
exactly the same augmented examples.
"""

from __future__ import annotations

import dataclasses
import math

from tfseg._keras import tf
from tfseg.data.info import IGNORE_LABEL


@dataclasses.dataclass(frozen=True)
class Augment:
    """Random scale, crop, horizontal flip, small rotation and colour jitter.

    The defaults suit road scenes: scale 0.5-2x (DeepLab's range), horizontal flip (scenes are
    left-right symmetric; vertical flips are not used: the sky stays up), rotation of at most
    10 degrees (camera roll), and mild colour jitter.

    Attributes:
      scale: (min, max) zoom factor drawn uniformly, relative to the image's own resolution;
        ``None`` or ``(1, 1)`` disables scaling.
      crop: True draws a random crop window of ``crop_size`` in the scaled image; False takes the
        centred window. Where the window leaves the image (scaled image smaller than the crop, or
        rotated corners), the image is padded with 0 and the mask with ``IGNORE_LABEL``.
      hflip: mirror left-right with probability 0.5.
      rotate_degrees: rotation drawn uniformly in [-rotate_degrees, rotate_degrees]; 0 disables.
      colour_jitter: strength ``s`` of colour jitter: brightness and contrast factors and the
        saturation factor are drawn in [1 - s, 1 + s], the hue shift in [-s/4, s/4] of a turn.
        0 disables.
      image_interpolation: ``"bilinear"`` (default) or ``"nearest"`` for the image; masks are
        always nearest-neighbour.

    Example:
      >>> aug = Augment(rotate_degrees=0)
      >>> image, mask = aug(tf.zeros([40, 50, 3]), tf.zeros([40, 50], tf.int32), (32, 32), seed=(1, 2))
      >>> image.shape, mask.shape
      (TensorShape([32, 32, 3]), TensorShape([32, 32]))
    """

    scale: tuple[float, float] | None = (0.5, 2.0)
    crop: bool = True
    hflip: bool = True
    rotate_degrees: float = 10.0
    colour_jitter: float = 0.2
    image_interpolation: str = "bilinear"

    def __post_init__(self):
        if self.scale is not None:
            lo, hi = self.scale
            if not 0 < lo <= hi:
                raise ValueError(f"Augment: scale must be (min, max) with 0 < min <= max, got {self.scale}")
        if not 0 <= self.rotate_degrees <= 180:
            raise ValueError(f"Augment: rotate_degrees must be in [0, 180], got {self.rotate_degrees}")
        if not 0 <= self.colour_jitter < 1:
            raise ValueError(f"Augment: colour_jitter must be in [0, 1), got {self.colour_jitter}")
        if self.image_interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                f"Augment: image_interpolation must be 'bilinear' or 'nearest', got {self.image_interpolation!r}"
            )

    def __call__(self, image, mask, crop_size, seed):
        """Augments one example.

        Args:
          image: float32 (H, W, 3) in [0, 255].
          mask: int32 (H, W) labels, ``IGNORE_LABEL`` for void.
          crop_size: (height, width) of the output, Python ints.
          seed: int32/int64 tensor of shape (2,): the example's seed for stateless random ops.

        Returns:
          ``(image float32 (h, w, 3) in [0, 255], mask int32 (h, w))`` with (h, w) = crop_size.
        """
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        geometry_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        matrix = self._geometry(tf.shape(image)[0], tf.shape(image)[1], crop_size, geometry_seed)
        image, mask = warp(image, mask, matrix, crop_size, self.image_interpolation)
        if self.colour_jitter > 0:
            image = self._colour(image, colour_seed)
        return image, mask

    def _geometry(self, height, width, crop_size, seed):
        """The 3x3 matrix taking output pixel centres to input pixel centres."""
        flip_seed, scale_seed, angle_seed, y_seed, x_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 5)
        )
        h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
        crop_h, crop_w = float(crop_size[0]), float(crop_size[1])

        def uniform(s, lo, hi):
            return tf.random.stateless_uniform([], s, lo, hi)

        lo, hi = self.scale or (1.0, 1.0)
        scale = uniform(scale_seed, lo, hi) if hi > lo else tf.constant(float(lo))
        angle = uniform(angle_seed, -1.0, 1.0) * math.radians(self.rotate_degrees)
        flip = uniform(flip_seed, 0.0, 1.0) < 0.5 if self.hflip else tf.constant(False)
        # Window offset in the scaled image; when the scaled image is smaller than the window, the
        # image lands at a random place inside the window instead (the rest is padding).
        slack_h, slack_w = h * scale - crop_h, w * scale - crop_w
        if self.crop:
            top = uniform(y_seed, 0.0, 1.0) * slack_h
            left = uniform(x_seed, 0.0, 1.0) * slack_w
        else:
            top, left = slack_h / 2, slack_w / 2
        # Whole-pixel offsets: without scaling or rotation a crop then copies pixels exactly.
        top, left = tf.round(top), tf.round(left)

        # Continuous coordinates where pixel i spans [i, i + 1]; compose output -> input.
        to_continuous = _translate(0.5, 0.5)
        window = _translate(left, top)
        centre_x, centre_y = w * scale / 2, h * scale / 2
        unrotate = _translate(centre_x, centre_y) @ _rotate(-angle) @ _translate(-centre_x, -centre_y)
        unscale = _scale(1.0 / scale)
        unflip = tf.where(flip, _flip(w), tf.eye(3))
        to_index = _translate(-0.5, -0.5)
        return to_index @ unflip @ unscale @ unrotate @ window @ to_continuous

    def _colour(self, image, seed):
        s = self.colour_jitter
        b_seed, c_seed, s_seed, h_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        image = image / 255.0
        image = image * tf.random.stateless_uniform([], b_seed, 1 - s, 1 + s)
        image = tf.image.stateless_random_contrast(image, 1 - s, 1 + s, c_seed)
        image = tf.clip_by_value(image, 0.0, 1.0)  # the HSV conversion expects [0, 1]
        image = tf.image.stateless_random_saturation(image, 1 - s, 1 + s, s_seed)
        image = tf.image.stateless_random_hue(image, s / 4, h_seed)
        return tf.clip_by_value(image * 255.0, 0.0, 255.0)


def warp(image, mask, matrix, output_size, image_interpolation="bilinear"):
    """Resamples an image and its mask with the same 3x3 output->input pixel matrix.

    Args:
      image: float32 (H, W, 3).
      mask: int32 (H, W).
      matrix: float32 (3, 3), mapping output pixel indices (x, y, 1) to input pixel indices.
      output_size: (height, width).
      image_interpolation: ``"bilinear"`` or ``"nearest"``; the mask is always nearest.

    Returns:
      ``(image, mask)`` of ``output_size``; outside the source: image 0, mask ``IGNORE_LABEL``.
    """
    matrix = matrix / matrix[2, 2]
    transform = tf.reshape(matrix, [9])[:8][None, :]
    size = tf.constant([int(output_size[0]), int(output_size[1])], tf.int32)
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform,
        output_shape=size,
        fill_value=0.0,
        interpolation=image_interpolation.upper(),
        fill_mode="CONSTANT",
    )[0]
    mask = tf.raw_ops.ImageProjectiveTransformV3(
        images=mask[None, :, :, None],
        transforms=transform,
        output_shape=size,
        fill_value=float(IGNORE_LABEL),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0, :, :, 0]
    image.set_shape([output_size[0], output_size[1], 3])
    mask.set_shape([output_size[0], output_size[1]])
    return image, mask


def resize_pair(image, mask, size):
    """Resizes an example to ``size``: image bilinear, mask nearest (labels are never blended)."""
    image = tf.image.resize(image, size, method="bilinear")
    mask = tf.image.resize(mask[..., None], size, method="nearest")[..., 0]
    image.set_shape([size[0], size[1], 3])
    mask.set_shape([size[0], size[1]])
    return image, tf.cast(mask, tf.int32)


def _translate(dx, dy):
    dx, dy = tf.cast(dx, tf.float32), tf.cast(dy, tf.float32)
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return tf.stack([tf.stack([one, zero, dx]), tf.stack([zero, one, dy]), tf.stack([zero, zero, one])])


def _rotate(angle):
    c, s = tf.cos(angle), tf.sin(angle)
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return tf.stack([tf.stack([c, -s, zero]), tf.stack([s, c, zero]), tf.stack([zero, zero, one])])


def _scale(factor):
    factor = tf.cast(factor, tf.float32)
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return tf.stack([tf.stack([factor, zero, zero]), tf.stack([zero, factor, zero]), tf.stack([zero, zero, one])])


def _flip(width):
    # Continuous x -> width - x mirrors the image exactly (pixel i <-> pixel width-1-i).
    one, zero = tf.constant(1.0), tf.constant(0.0)
    return tf.stack([tf.stack([-one, zero, width]), tf.stack([zero, one, zero]), tf.stack([zero, zero, one])])
