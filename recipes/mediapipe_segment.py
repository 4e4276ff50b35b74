"""Runs MediaPipe Tasks' ImageSegmenter on images and reads the model's metadata with MediaPipe's
own code. Runs in an interpreter that has ``mediapipe`` (it imports neither tfseg nor TensorFlow);
``recipes/mediapipe_check.py`` and tests/test_mediapipe_slow.py call it in a subprocess.

    python recipes/mediapipe_segment.py MODEL.tflite OUT.npz IMAGE.png [IMAGE.png ...]

Writes ``OUT.npz`` with ``category_masks`` (N, H, W) uint8 and ``confidence_sums`` (N, H, W)
float32 (the sum of the confidence masks: 1 where softmax was applied), and prints one JSON line:
``{"mediapipe", "labels", "metadata"}``, where ``metadata`` is the model's TFLite Model Metadata
as MediaPipe's generated FlatBuffer classes read it (an independent check of tfseg's writer).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np


def _generated(name):
    """One of MediaPipe's generated FlatBuffer modules, loaded by path (importing the package
    ``mediapipe.tasks.metadata`` pulls in modules some wheels lack)."""
    import mediapipe

    path = os.path.join(os.path.dirname(mediapipe.__file__), "tasks", "metadata", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def read_metadata(model_bytes: bytes) -> dict | None:
    """The fields of TFLITE_METADATA an image segmenter uses, read with MediaPipe's generated classes."""
    schema = _generated("schema_py_generated")
    metadata_fb = _generated("metadata_schema_py_generated")
    segmenter_fb = _generated("image_segmenter_metadata_schema_py_generated")
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    entries = {_text(entry.name): entry.buffer for entry in (model.metadata or [])}
    if "TFLITE_METADATA" not in entries:
        return None
    raw = bytes(np.asarray(model.buffers[entries["TFLITE_METADATA"]].data, np.uint8))
    meta = metadata_fb.ModelMetadataT.InitFromPackedBuf(bytearray(raw), 0)
    graph = meta.subgraphMetadata[0]
    (inp,), outputs = graph.inputTensorMetadata, graph.outputTensorMetadata
    norm = [unit.options for unit in (inp.processUnits or [])
            if unit.optionsType == metadata_fb.ProcessUnitOptions.NormalizationOptions]
    image = inp.content.contentProperties if inp.content is not None else None
    customs = {}
    for custom in graph.customMetadata or []:
        data = bytearray(np.asarray(custom.data, np.uint8))
        options = segmenter_fb.ImageSegmenterOptionsT.InitFromPackedBuf(data, 0)
        customs[_text(custom.name)] = {"identifier": bytes(data[4:8]).decode(), "activation": options.activation}
    return {
        "identifier": raw[4:8].decode(),
        "name": _text(meta.name),
        "min_parser_version": _text(meta.minParserVersion),
        "input": {
            "content_type": inp.content.contentPropertiesType if inp.content is not None else None,
            "color_space": getattr(image, "colorSpace", None),
            "mean": [float(v) for v in norm[0].mean] if norm else None,
            "std": [float(v) for v in norm[0].std] if norm else None,
        },
        "outputs": len(outputs),
        "label_files": [{"name": _text(f.name), "type": f.type} for f in (outputs[-1].associatedFiles or [])],
        "custom_metadata": customs,
    }


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    model_path, out_path, image_paths = args[0], args[1], args[2:]
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=model_path),
                                           output_category_mask=True, output_confidence_masks=True)
    masks, sums = [], []
    with vision.ImageSegmenter.create_from_options(options) as segmenter:
        labels = list(segmenter.labels)
        for image_path in image_paths:
            result = segmenter.segment(mp.Image.create_from_file(image_path))
            masks.append(np.array(result.category_mask.numpy_view()).reshape(result.category_mask.height,
                                                                             result.category_mask.width))
            sums.append(np.sum([np.array(m.numpy_view()) for m in result.confidence_masks], axis=0).reshape(masks[-1].shape))
    np.savez(out_path, category_masks=np.stack(masks).astype(np.uint8), confidence_sums=np.stack(sums).astype(np.float32))
    with open(model_path, "rb") as f:
        metadata = read_metadata(f.read())
    print(json.dumps({"mediapipe": mp.__version__, "labels": labels, "metadata": metadata}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
