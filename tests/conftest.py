"""Shared fixtures: tiny image/mask folders written with Pillow into tmp_path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, array: np.ndarray) -> Path:
    """Writes a uint8 (H, W, 3) image; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def write_mask(path: Path, labels: np.ndarray) -> Path:
    """Writes a uint8 (H, W) index mask as a single-channel PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, np.uint8)).save(path)  # 2-D uint8 -> mode "L"
    return path


def random_example(rng, size=(24, 32), num_classes=3, ignore_fraction=0.05, void_value=255):
    """A random image and a blocky label map (with some pixels set to ``void_value``)."""
    h, w = size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    coarse = rng.integers(0, num_classes, (h // 4 + 1, w // 4 + 1))
    labels = np.kron(coarse, np.ones((4, 4), int))[:h, :w]
    labels[rng.random((h, w)) < ignore_fraction] = void_value
    return image, labels.astype(np.uint8)


@pytest.fixture
def make_folder(tmp_path):
    """Factory: ``make_folder(n=3, size=(24, 32), num_classes=3, ...) -> (image_dir, mask_dir, examples)``.

    ``examples`` is the list of ``(image, labels)`` arrays written, in file-name order. Images are
    lossless PNG unless ``image_suffix`` says otherwise.
    """
    counter = iter(range(1000))

    def make(n=3, size=(24, 32), num_classes=3, image_suffix=".png", seed=0, void_value=255, sizes=None):
        root = tmp_path / f"set{next(counter)}"
        image_dir, mask_dir = root / "train", root / "trainannot"
        image_dir.mkdir(parents=True)
        mask_dir.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        examples = []
        for i in range(n):
            image, labels = random_example(
                rng, sizes[i] if sizes else size, num_classes=num_classes, void_value=void_value
            )
            write_image(image_dir / f"img{i:02d}{image_suffix}", image)
            write_mask(mask_dir / f"img{i:02d}.png", labels)
            examples.append((image, labels))
        return image_dir, mask_dir, examples

    return make


@pytest.fixture
def folder_split(make_folder):
    """A tiny 3-class folder split of 4 images of 24x32 and the arrays that were written."""
    from tfseg import data

    image_dir, mask_dir, examples = make_folder(n=4)
    return data.folder(image_dir, mask_dir, num_classes=3), examples


def tiny_scenes_options(num_images: int) -> list[str]:
    """CLI data options for a tiny built-in scenes split of 32x32 images."""
    return ["--data-option", f"num_images={num_images}", "--data-option", "image_size=32x32"]


def train_tiny_run(run_dir: Path, num_images: int) -> Path:
    """Trains unet_small for one epoch on tiny scenes through the CLI; returns the run directory."""
    from tfseg.cli import main

    assert main(["train", "--model", "unet_small", "--crop-size", "32", "--epochs", "1", "--batch-size", "8",
                 "--no-augment", "--out", str(run_dir), *tiny_scenes_options(num_images)]) == 0
    return run_dir


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on loopback right now (for local multi-worker TF_CONFIGs)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def load_recipe(name: str):
    """A script of recipes/ imported as a module (recipes are not a package)."""
    path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
