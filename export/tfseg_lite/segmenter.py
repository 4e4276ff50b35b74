"""Runs a tfseg TFLite model on images of any size and mode and returns class maps.

The pipeline follows the model's own description (``tfseg_lite.metadata``):

1. the image (path, PIL image or numpy array; RGB, RGBA, grayscale, palette, 16-bit) becomes
   8-bit RGB (or grayscale for 1-channel models);
2. it is resized to the model's input size with bilinear filtering (Pillow's, on the 8-bit image)
   if its size differs;
3. pixels 0..255 are mapped onto the model's ``pixel_range`` and, for int8/uint8 inputs,
   quantized with the input tensor's own scale and zero point (normalisation is inside the
   model: the runner never normalises);
4. after ``invoke()`` the argmax over the class axis gives the class map, resized back to the
   image's own size with nearest-neighbour sampling if its size differs.

A camera frame, an (H, W, 3) uint8 RGB array of the model's input size, takes the shortest path:
no Pillow image, and for a uint8 input tensor taking raw pixels (tfseg's int8 exports) no copy
but the one ``set_tensor`` makes.

Models exported with ``tfseg export --output low_res_logits`` or ``class_map`` end before their
final upsampling: their output is at the model's own stride (e.g. 46x60 for 360x480 at stride 8,
the input padded to 368 rows inside the model). ``output.upsampling`` in their description says
how those pixels line up with the input (``tfseg_lite.metadata.Upsampling``), and step 4 becomes:

- ``low_res_logits``: the logits are upsampled bilinearly with half-pixel centres (what the
  model's own final layer computed) onto the input pixels, then the argmax, then nearest to the
  image's size (``tfseg_lite.postprocess.BilinearArgmax`` gives that class map while upsampling
  only the pixels near class boundaries); or, with ``Segmenter(..., logits_upsampling="nearest")``,
  the argmax at the low resolution and the class ids resized with nearest (a little cheaper, a
  little less accurate);
- ``class_map``: the class ids are resized with nearest straight to the image's size.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfseg_lite import metadata as _metadata
from tfseg_lite import runtime as _runtime
from tfseg_lite.metadata import ModelError, TfsegLiteError
from tfseg_lite.postprocess import BilinearArgmax, resize_low_res_nearest, resize_nearest, upsample_bilinear


# How Segmenter maps low-resolution logits onto the image (see the module docstring).
LOGITS_UPSAMPLING = ("bilinear", "nearest")


class ImageError(TfsegLiteError, ValueError):
    """An image cannot be read or has an unsupported shape or type."""


def load_image(image) -> Image.Image:
    """Opens or wraps an image as a PIL image, without changing its mode.

    Files are decoded fully here (so a truncated file fails now, naming the file), and their EXIF
    orientation is applied, so the class map lines up with the picture as viewers show it.

    Args:
      image: a path (str or Path), a PIL image, or a numpy array (H, W), (H, W, 1), (H, W, 3) or
        (H, W, 4) of pixel values 0..255 (floats are rounded and clipped).

    Returns:
      A PIL image.

    Raises:
      FileNotFoundError: a path that does not exist.
      ImageError: a file Pillow cannot decode, or an array of an unsupported shape or type.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                return ImageOps.exif_transpose(opened)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            # Pillow reports damaged files with any of these, depending on the codec.
            raise ImageError(f"cannot read image {path}: {err}") from err
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
            raise ImageError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
            raise ImageError(f"image arrays must hold pixel values 0..255, got dtype {array.dtype}")
        if array.dtype != np.uint8:
            array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(array))
    raise ImageError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale modes (I;16, I, F) scaled down to 8-bit "L"."""
    if image.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        return image
    array = np.asarray(image).astype(np.float64)
    # Values above 255 mean a 16-bit image (0..65535); smaller ones are taken as 8-bit already.
    if array.size and array.max() > 255:
        array = array / 257.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def to_rgb(image) -> Image.Image:
    """Any image (see ``load_image``) as an 8-bit RGB PIL image; alpha is dropped."""
    image = _to_8bit(load_image(image))
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageError(f"cannot convert an image of mode {image.mode!r} to RGB: {err}") from err


def colorize(class_map: np.ndarray, palette) -> np.ndarray:
    """Colours a class map.

    Args:
      class_map: (H, W) integer class ids.
      palette: (K, 3) colours, one per class.

    Returns:
      (H, W, 3) uint8 RGB; ids outside the palette are black.
    """
    palette = np.asarray(palette, np.uint8).reshape(-1, 3)
    lut = np.zeros((max(len(palette), int(class_map.max(initial=0)) + 1), 3), np.uint8)
    lut[: len(palette)] = palette
    return lut[np.asarray(class_map, np.int64).clip(0)]


def overlay(image, class_map: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """Blends the coloured class map over the image.

    Args:
      image: anything ``load_image`` takes, of the class map's size.
      class_map: (H, W) class ids.
      palette: (K, 3) colours.
      alpha: weight of the colours (0 = image only, 1 = mask only).

    Returns:
      (H, W, 3) uint8 RGB.

    Raises:
      ValueError: alpha outside [0, 1], or the image and class map sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(to_rgb(image), np.float32)
    if rgb.shape[:2] != class_map.shape:
        raise ValueError(f"image size {rgb.shape[1]}x{rgb.shape[0]} differs from the class map's {class_map.shape[1]}x{class_map.shape[0]}")
    mixed = (1.0 - alpha) * rgb + alpha * colorize(class_map, palette).astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _is_rgb_frame(image) -> bool:
    """An (H, W, 3) uint8 array: a camera frame, taken as RGB as it is."""
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 \
        and image.shape[0] > 0 and image.shape[1] > 0


class Segmenter:
    """A tfseg TFLite segmentation model, ready to run.

    Args:
      model_path: the ``.tflite`` file (its description embedded, or in ``<file>.json``; TFLite Model
        Metadata as MediaPipe reads it is enough too, see ``tfseg_lite.metadata.load``).
      num_threads: interpreter threads (default: all CPU cores, 4 on a Raspberry Pi 4/5).
      runtime: ``litert``, ``tflite-runtime`` or ``auto``/None (see ``tfseg_lite.runtime.load``).
      reference_kernels: run TFLite's portable reference kernels instead of the optimised ones
        (much slower): the bit-exact baseline when two machines' int8 outputs differ.
      logits_upsampling: for ``low_res_logits`` models: ``bilinear`` (the logits upsampled onto
        the input pixels, then the argmax: the model's own computation) or ``nearest`` (the argmax
        at low resolution, then the class ids resized).

    Raises:
      FileNotFoundError: no such model file.
      ModelError: not a TFLite model, or one this runner cannot use (several inputs, a shape
        that contradicts its description, ...).
      MetadataError: no valid tfseg description.
      ImportError: no TFLite runtime is installed (the message says how to install one).

    Example:
      >>> seg = Segmenter("student_int8.tflite", num_threads=4)
      >>> class_map = seg.predict("street.jpg")          # (H, W) at the photo's own size
      >>> Image.fromarray(seg.overlay("street.jpg", class_map)).save("street_overlay.png")
    """

    def __init__(self, model_path, num_threads: int | None = None, runtime: str | None = None,
                 reference_kernels: bool = False, logits_upsampling: str = "bilinear"):
        if logits_upsampling not in LOGITS_UPSAMPLING:
            raise ValueError(f"logits_upsampling must be one of {LOGITS_UPSAMPLING}, got {logits_upsampling!r}")
        self.logits_upsampling = logits_upsampling
        self.model_path = Path(model_path)
        self.metadata = _metadata.load(self.model_path)  # fails first on missing / non-TFLite files
        self.runtime = _runtime.load(runtime)
        self.num_threads = int(num_threads) if num_threads else (os.cpu_count() or 1)
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        options = {}
        if reference_kernels:
            options["experimental_op_resolver_type"] = self.runtime.op_resolver_type.BUILTIN_REF
        try:
            self.interpreter = self.runtime.interpreter_class(
                model_path=str(self.model_path), num_threads=self.num_threads, **options)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise ModelError(f"{self.model_path}: {self.runtime.label} cannot load this model: {err}") from err
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.model_path}: expected one input and one output tensor, found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        meta = self.metadata
        expected = (1, meta.height, meta.width, meta.channels)
        if tuple(int(d) for d in self._input["shape"]) != expected:
            raise ModelError(
                f"{self.model_path}: the input tensor has shape {tuple(self._input['shape'])}, "
                f"but its description says {expected}"
            )
        if np.dtype(self._input["dtype"]).name != meta.input_dtype:
            raise ModelError(
                f"{self.model_path}: the input tensor is {np.dtype(self._input['dtype']).name}, "
                f"but its description says {meta.input_dtype}"
            )
        out_shape = tuple(int(d) for d in self._output["shape"])
        if meta.upsampling is None:
            if len(out_shape) != 4 or out_shape[0] != 1 or out_shape[-1] != meta.num_classes:
                raise ModelError(
                    f"{self.model_path}: expected an output of shape (1, H, W, {meta.num_classes}), got {out_shape}"
                )
        else:
            expected = (1, *meta.upsampling.output_size) + ((meta.num_classes,) if meta.output_kind != "class_map" else ())
            if out_shape != expected:
                raise ModelError(f"{self.model_path}: the {meta.output_kind} output has shape {out_shape}, "
                                 f"but its description says {expected}")
        if meta.output_kind == "class_map" and not np.issubdtype(np.dtype(self._output["dtype"]), np.integer):
            raise ModelError(f"{self.model_path}: a class_map output must hold integer class ids, "
                             f"not {np.dtype(self._output['dtype']).name}")
        self._lut = self._pixel_table()
        self._map_pixels = self._pixel_mapping()
        self._bilinear = None  # the low_res_logits upsampling and argmax, with its tables
        if meta.output_kind == "low_res_logits" and logits_upsampling == "bilinear":
            self._bilinear = BilinearArgmax(meta.upsampling.output_size, meta.upsampling, meta.height, meta.width)
        self.last_invoke_ms = None
        # Of the last predict(): preprocess_ms (from the image, incl. reading a file, to set_tensor),
        # invoke_ms, postprocess_ms (output to class map at the image's size) and end_to_end_ms.
        self.last_times = {}

    # Properties used by reports and the CLI.
    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model runs at."""
        return self.metadata.height, self.metadata.width

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._input["dtype"]).name

    @property
    def output_dtype(self) -> str:
        return np.dtype(self._output["dtype"]).name

    @property
    def palette(self) -> np.ndarray:
        """(K, 3) uint8 class colours from the model's description."""
        return np.asarray(self.metadata.palette, np.uint8)

    def preprocess(self, image) -> np.ndarray:
        """The exact input tensor for an image: resized, range-mapped and quantized as the model needs.

        Args:
          image: a path, PIL image or numpy array (see ``load_image``).

        Returns:
          An array of the input tensor's shape (1, H, W, C) and dtype. For an (H, W, 3) uint8 array
          of the model's size and a uint8 input of raw pixels, a view of that array (no copy).

        Raises:
          FileNotFoundError, ImageError: the image cannot be read.
        """
        return self._map_pixels(self._pixels(image))[None]

    def _pixels(self, image) -> np.ndarray:
        """The image as (H, W, C) uint8 pixels of the model's input size."""
        meta = self.metadata
        if _is_rgb_frame(image) and meta.channels == 3:
            if image.shape[:2] == (meta.height, meta.width):
                return image  # a camera frame of the model's size: nothing to do
            picture = Image.fromarray(np.ascontiguousarray(image))
        else:
            picture = to_rgb(image)
            if meta.channels == 1:
                picture = picture.convert("L")
        if picture.size != (meta.width, meta.height):
            picture = picture.resize((meta.width, meta.height), Image.BILINEAR)
        return np.asarray(picture).reshape(meta.height, meta.width, meta.channels)

    def _pixel_mapping(self):
        """The fastest function mapping uint8 pixels through ``_lut``: one of a few vectorised
        shortcuts if it gives the table's values for all 256 pixel values, else the lookup."""
        lut = self._lut
        low, high = self.metadata.pixel_range
        shortcuts = (
            lambda pixels: pixels,  # raw pixels into a uint8 input (tfseg's int8 exports)
            lambda pixels: (pixels ^ np.uint8(0x80)).view(np.int8),  # pixel - 128 into an int8 input
            lambda pixels: pixels.astype(np.float32),  # raw pixels into a float input
            lambda pixels: low + pixels.astype(np.float32) * ((high - low) / 255.0),  # the table's own operations
        )
        values = np.arange(256, dtype=np.uint8)
        for shortcut in shortcuts:
            mapped = shortcut(values)
            if mapped.dtype == lut.dtype and np.array_equal(mapped, lut):
                return shortcut
        return lambda pixels: np.take(lut, pixels)

    def _pixel_table(self) -> np.ndarray:
        """The model input value for each 8-bit pixel value 0..255.

        Pixels reach the model only as 8-bit values (after the 8-bit resize), so mapping them to
        ``pixel_range`` and quantizing once per value, then indexing, gives exactly what doing it
        per pixel would, several times faster (it matters on a Pi's CPU).
        """
        x = np.arange(256, dtype=np.float32)
        low, high = self.metadata.pixel_range
        if (low, high) != (0, 255):
            x = low + x * ((high - low) / 255.0)
        dtype = np.dtype(self._input["dtype"])
        if np.issubdtype(dtype, np.integer):
            scale, zero_point = self._input["quantization"]
            if scale:  # (0, 0) means "not quantized": raw integers go in as they are
                x = np.rint(x / scale + zero_point)
            info = np.iinfo(dtype)
            x = np.clip(x, info.min, info.max)
        return x.astype(dtype)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Invokes the model on a preprocessed tensor; returns the raw output (1, h, w, K).

        The time of ``invoke()`` alone is kept in ``last_invoke_ms``.
        """
        self.interpreter.set_tensor(self._input["index"], tensor)
        start = time.perf_counter()
        self.interpreter.invoke()
        self.last_invoke_ms = (time.perf_counter() - start) * 1000.0
        return self.interpreter.get_tensor(self._output["index"])

    def predict(self, image) -> np.ndarray:
        """The class map of an image, at the image's own size.

        The times of its steps are kept in ``last_times`` (and of ``invoke()`` in ``last_invoke_ms``).

        Args:
          image: a path, PIL image or numpy array of any size and mode (see ``load_image``).

        Returns:
          (H, W) class ids: uint8 for up to 256 classes, else int32. For a path, (H, W) is the
          size after applying EXIF orientation.

        Raises:
          FileNotFoundError, ImageError: the image cannot be read.
        """
        start = time.perf_counter()
        if _is_rgb_frame(image):
            height, width = image.shape[:2]
        else:
            image = load_image(image)
            width, height = image.size
        self.interpreter.set_tensor(self._input["index"], self.preprocess(image))
        ready = time.perf_counter()
        self.interpreter.invoke()
        done = time.perf_counter()
        # A view of the output tensor rather than get_tensor's copy (a 1.9 MB one for full-size
        # logits). postprocess makes a new array, and the view is gone before the next invoke(),
        # which refuses to run while one exists.
        output = self.interpreter.tensor(self._output["index"])()[0]
        try:
            class_map = self.postprocess(output, height, width)
        finally:
            del output
        end = time.perf_counter()
        self.last_invoke_ms = (done - ready) * 1000.0
        self.last_times = {"preprocess_ms": (ready - start) * 1000.0, "invoke_ms": self.last_invoke_ms,
                           "postprocess_ms": (end - done) * 1000.0, "end_to_end_ms": (end - start) * 1000.0}
        return class_map

    def postprocess(self, output: np.ndarray, height: int, width: int) -> np.ndarray:
        """The class map of an image of (height, width) from the model's raw output (``run(...)[0]``).

        Logits at the input size: the argmax, resized with nearest. Low-resolution outputs are
        first mapped onto the input pixels as the description's ``output.upsampling`` says (see
        the module docstring).

        Returns:
          (height, width) class ids: uint8 for up to 256 classes, else int32 (a new array).
        """
        meta = self.metadata
        # Argmax straight on int8/uint8 outputs: dequantization (positive scale) keeps the order.
        if self._bilinear is not None:
            return resize_nearest(self._bilinear(output), height, width)
        dtype = np.uint8 if meta.num_classes <= 256 else np.int32
        # np.argmax over the short class axis works pixel by pixel, but it is still numpy's fastest
        # here: a running maximum over class planes would first need a transposed copy of the output.
        class_map = (output if meta.output_kind == "class_map" else np.argmax(output, axis=-1)).astype(dtype)
        if meta.upsampling is None:
            return resize_nearest(class_map, height, width)
        return resize_low_res_nearest(class_map, meta.upsampling, self.input_size, height, width)

    def colorize(self, class_map: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 colours of a class map, from the model's palette."""
        return colorize(class_map, self.palette)

    def overlay(self, image, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """The image with the coloured class map blended over it (see ``overlay``)."""
        return overlay(image, class_map, self.palette, alpha)

    def describe(self) -> dict:
        """A summary for reports: model, runtime, threads, sizes, dtypes, quantization."""
        meta = self.metadata
        return {
            "model_file": str(self.model_path),
            "model": meta.model,
            "dataset": meta.dataset,
            "classes": meta.num_classes,
            "quantization": meta.quantization,
            "input": f"{meta.height}x{meta.width}x{meta.channels} {self.input_dtype}",
            "pixel_range": list(meta.pixel_range),
            "normalization": meta.normalization or "inside the model",
            "output": "x".join(str(int(d)) for d in self._output["shape"][1:]) + f" {self.output_dtype}" + (
                f" {meta.output_kind} at stride {'x'.join(f'{v:g}' for v in meta.upsampling.stride or ())}, "
                f"upsampled {self.logits_upsampling if meta.output_kind == 'low_res_logits' else 'nearest'} "
                "by the runner" if meta.upsampling else ""),
            "runtime": self.runtime.label,
            "threads": self.num_threads,
            "file_kb": round(self.model_path.stat().st_size / 1024, 1),
            # Where the description came from, and whether TFLite Model Metadata (MediaPipe's) is there too.
            "metadata": meta.source + (" + TFLITE_METADATA" if meta.tflite_metadata and meta.source != "TFLITE_METADATA" else ""),
        }


__all__ = ["ImageError", "LOGITS_UPSAMPLING", "Segmenter", "colorize", "load_image", "overlay", "resize_low_res_nearest",
           "resize_nearest", "to_rgb", "upsample_bilinear"]
