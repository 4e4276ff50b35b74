"""tfseg-lite: runs tfseg's exported TFLite segmentation models on a device, without TensorFlow.

Needs numpy, Pillow and one TFLite runtime (ai-edge-litert, else tflite-runtime). The model's
classes, palette, input size and dtype come from the description tfseg writes into the model.

Example:
  >>> from tfseg_lite import Segmenter
  >>> seg = Segmenter("student_int8.tflite", num_threads=4)
  >>> class_map = seg.predict("street.jpg")   # (H, W) class ids at the photo's size
"""

from tfseg_lite.metadata import Metadata, MetadataError, ModelError, TfsegLiteError
from tfseg_lite.metadata import load as load_metadata
from tfseg_lite.runtime import Runtime
from tfseg_lite.runtime import load as load_runtime
from tfseg_lite.segmenter import ImageError, Segmenter, colorize, load_image, overlay

__version__ = "0.1.0"

__all__ = [
    "ImageError",
    "Metadata",
    "MetadataError",
    "ModelError",
    "Runtime",
    "Segmenter",
    "TfsegLiteError",
    "__version__",
    "colorize",
    "load_image",
    "load_metadata",
    "load_runtime",
    "overlay",
]
