"""MediaPipe Tasks' ImageSegmenter loads tfseg's float32, float16 and int8 exports, takes their
class names, and its category mask equals LiteRT's argmax (run with: pytest -m slow).

mediapipe is not a tfseg dependency: the check runs it in a subprocess with the interpreter named
by TFSEG_MEDIAPIPE_PYTHON (a venv of its own: python3 -m venv ~/venv-mp && ~/venv-mp/bin/pip
install mediapipe), or this interpreter if it has mediapipe. Neither: the test fails and says so.

The model is unet_small trained one epoch on synthetic scenes, exported through ``tfseg export``;
the images are scenes at the model's input size, so MediaPipe resizes nothing and the masks must be
equal pixel for pixel (MediaPipe's category mask is a plain argmax over the dequantized output,
first index on ties, as NumPy's).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_recipe, tiny_scenes_options, train_tiny_run

pytestmark = pytest.mark.slow

check = load_recipe("mediapipe_check")


@pytest.fixture(scope="module")
def mediapipe_python():
    try:
        return check.mediapipe_python()
    except RuntimeError as error:
        pytest.fail(f"this check needs MediaPipe: {error}", pytrace=False)


@pytest.fixture(scope="module")
def run_exports(tmp_path_factory):
    from tfseg.cli import main

    root = tmp_path_factory.mktemp("mediapipe")
    run = train_tiny_run(root / "run", 32)
    paths = {}
    for quantization in ("none", "float16", "int8"):
        paths[quantization] = root / f"unet_small_{quantization}.tflite"
        assert main(["export", str(run), "--out", str(paths[quantization]), "--quantization", quantization,
                     "--calibration-images", "32", *tiny_scenes_options(32)]) == 0
    return paths


@pytest.fixture(scope="module")
def images():
    from tfseg import data

    split = data.scenes("val", num_images=6, image_size=(32, 32))
    return [np.clip(np.rint(image), 0, 255).astype(np.uint8) for image, _ in split.dataset().as_numpy_iterator()]


@pytest.mark.parametrize("quantization", ["none", "float16", "int8"])
def test_mediapipe_segments_like_litert_and_names_the_classes(mediapipe_python, run_exports, images, quantization):
    from tfseg.data.scenes import SCENES_INFO

    report = check.compare(run_exports[quantization], images, mediapipe_python)
    assert report["labels"] == list(SCENES_INFO.class_names) and report["labels_match"]
    assert report["agreement"] == 1.0, report
    # More than one class in the masks, or equality would prove little.
    assert len(np.unique(check.litert_class_maps(run_exports[quantization], images))) > 1
    # Softmax applied (SEGMENTER_METADATA): the confidence masks sum to 1.
    low, high = report["confidence_sum_range"]
    assert 0.999 < low <= high < 1.001
    # The metadata as MediaPipe's own generated FlatBuffer classes read it.
    metadata = report["metadata"]
    assert metadata["identifier"] == "M001" and metadata["min_parser_version"] == "1.5.0"
    assert metadata["input"] == {"content_type": 2, "color_space": 1, "mean": [0.0], "std": [1.0]}  # ImageProperties, RGB
    assert metadata["outputs"] == 1
    assert metadata["label_files"] == [{"name": "labels.txt", "type": 2}]  # TENSOR_AXIS_LABELS
    assert metadata["custom_metadata"] == {"SEGMENTER_METADATA": {"identifier": "V001", "activation": 2}}  # SOFTMAX
