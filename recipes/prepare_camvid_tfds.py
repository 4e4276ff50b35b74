"""Prepare the real CamVid with tfseg's TFDS builder and print the split counts, time and size.

A one-off measurement, not part of the tests. Preparing reads the SegNet folders from
``--manual-dir`` and writes PNG-encoded TFRecords under ``--data-dir/camvid/1.0.0``; nothing is
downloaded. With ``--verify`` every stored image is hashed and compared with the SHA-256 of the
decoded source pixels listed in the shared copy's ``MANIFEST.tsv`` (and every mask with the
source PNG), which proves the copy is lossless.

Example::

    python recipes/prepare_camvid_tfds.py --manual-dir ../shared/data/camvid \\
        --data-dir /tmp/tfds_camvid --verify
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tfseg.data import tfds_camvid  # registers "camvid" (and imports TF via tfseg._keras)
import tensorflow_datasets as tfds


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _verify(builder, manual_dir: Path) -> int:
    """Compares every stored example with the source files; returns the number checked."""
    manifest = manual_dir / "MANIFEST.tsv"
    hashes = {}
    if manifest.is_file():
        with manifest.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                hashes[Path(row["image"]).name] = row["sha256_of_decoded_rgb_uint8_HxWx3"]
    checked = 0
    for split, (_, mask_dir) in tfds_camvid.CAMVID_SPLITS.items():
        for ex in tfds.as_numpy(builder.as_dataset(split=split)):
            name = ex["file_name"].decode()
            image = np.ascontiguousarray(ex["image"])
            if name in hashes:
                if hashlib.sha256(image.tobytes()).hexdigest() != hashes[name]:
                    raise SystemExit(f"image {split}/{name} differs from MANIFEST.tsv")
            else:  # no manifest: compare with the decoded source file instead
                source = np.asarray(Image.open(manual_dir / split / name).convert("RGB"))
                if not np.array_equal(image, source):
                    raise SystemExit(f"image {split}/{name} differs from its source file")
            mask = np.asarray(Image.open(manual_dir / mask_dir / (Path(name).stem + ".png")))
            if not np.array_equal(ex["segmentation_mask"][..., 0], mask):
                raise SystemExit(f"mask of {split}/{name} differs from its source file")
            checked += 1
    return checked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual-dir", required=True, type=Path, help="folder with the SegNet CamVid layout")
    parser.add_argument("--data-dir", required=True, type=Path, help="TFDS data directory to write to")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing camvid/1.0.0 first")
    parser.add_argument("--verify", action="store_true", help="compare every stored example with the source")
    args = parser.parse_args(argv)

    builder = tfds.builder(tfds_camvid.TFDS_NAME, data_dir=str(args.data_dir))
    if builder.data_path.exists():
        if not args.overwrite:
            print(f"{builder.data_path} exists; pass --overwrite to time a fresh prepare", file=sys.stderr)
            return 2
        shutil.rmtree(builder.data_path)

    start, cpu_start = time.perf_counter(), time.process_time()
    builder.download_and_prepare(download_config=tfds_camvid.camvid_download_config(args.manual_dir))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    # A fresh builder reads the metadata back from disk, as any later tfds.load would.
    builder = tfds.builder(tfds_camvid.TFDS_NAME, data_dir=str(args.data_dir))
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    size = _dir_size(Path(builder.data_path))
    print(f"prepared {builder.info.full_name} in {builder.data_path}")
    print("split counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (total {sum(counts.values())})")
    # CPU time too: on a shared machine the wall time depends on what else is running.
    print(f"prepare time: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU (this process, all threads)")
    print(f"on disk: {size:,} bytes ({size / 2**20:.1f} MiB); source folder "
          f"{_dir_size(args.manual_dir) / 2**20:.1f} MiB")
    if args.verify:
        start = time.perf_counter()
        n = _verify(builder, args.manual_dir)
        print(f"verified {n} examples: images and masks identical to the source "
              f"({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
