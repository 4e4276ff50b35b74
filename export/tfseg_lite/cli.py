"""``tfseg-lite``: run, inspect and time tfseg models on a device.

    tfseg-lite info MODEL
    tfseg-lite predict MODEL IMAGES... --out DIR [--overlay] [--threads N]
    tfseg-lite bench MODEL [--threads 1 2 4] [--runs 50] [--warmup 5] [--frame-size H W] [--image PHOTO]
    tfseg-lite camera MODEL [--source 0|video.mp4|picamera2] [--out overlay.mp4] [--max-frames N]

``--runtime litert|tflite-runtime`` (or ``TFSEG_LITE_RUNTIME``) forces a TFLite runtime.
Exit status: 0 on success, 1 if some images failed, 2 on a usage, model or runtime error (or when
no image could be segmented). An error is one line on stderr, ``tfseg-lite COMMAND: error: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tfseg_lite import __version__
from tfseg_lite.metadata import TfsegLiteError
from tfseg_lite.segmenter import Segmenter, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


class CliError(Exception):
    """A problem to report in one line and exit with status 2."""


def _number(convert, accepts, rule: str):
    """An argparse ``type``: ``convert(text)`` that ``accepts``; otherwise a usage error (exit 2)
    that says the ``rule``."""
    kind = "int" if convert is int else "number"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind} value: {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value

    return parse


def _int_at_least(minimum: int):
    return _number(int, lambda value: value >= minimum, f">= {minimum}")


_fraction = _number(float, lambda value: 0.0 <= value <= 1.0, "in [0, 1]")
_positive_float = _number(float, lambda value: value > 0, "> 0")


def _segmenter(args, threads=None) -> Segmenter:
    return Segmenter(args.model, num_threads=threads if threads is not None else args.threads, runtime=args.runtime)


def expand_images(items) -> list[Path]:
    """Image paths from the command line; a directory stands for the images directly inside it."""
    paths = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CliError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in directory {path}")
            paths.extend(found)
        else:
            paths.append(path)  # a missing file is reported by predict, with the others still done
    return paths


def _summary(class_map: np.ndarray, classes) -> str:
    """'road 41%, sky 22%, car 9%': the three largest classes."""
    counts = np.bincount(class_map.ravel(), minlength=len(classes))
    top = np.argsort(-counts, kind="stable")[:3]
    return ", ".join(f"{classes[i] if i < len(classes) else i} {100.0 * counts[i] / class_map.size:.0f}%" for i in top if counts[i])


def cmd_info(args) -> int:
    seg = _segmenter(args)
    info = seg.describe()
    info["class_names"] = list(seg.metadata.classes)
    print(json.dumps(info, indent=2))
    return 0


def cmd_predict(args) -> int:
    seg = _segmenter(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a directory for the masks")
    images = expand_images(args.images)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{seg.model_path.name}: {seg.metadata.model}, {seg.runtime.label}, {seg.num_threads} threads -> {out}")
    used, errors = set(), []
    for path in images:
        stem = path.stem
        for n in range(2, 10**6):  # two inputs named alike (a/x.jpg, b/x.png) must not overwrite each other
            if stem not in used:
                break
            stem = f"{path.stem}_{n}"
        used.add(stem)
        try:
            picture = load_image(path)
            start = time.perf_counter()
            class_map = seg.predict(picture)
            total_ms = (time.perf_counter() - start) * 1000.0
        except (FileNotFoundError, TfsegLiteError) as err:
            errors.append(str(err))
            if len(images) > 1:  # the others are still done; a single image is reported by main()
                print(f"tfseg-lite predict: error: {err}", file=sys.stderr)
            continue
        # The class-id mask is what other tools read; the colour one is for people.
        mode = "L" if class_map.dtype == np.uint8 else "I"
        Image.fromarray(class_map.astype(np.uint8 if mode == "L" else np.int32), mode).save(out / f"{stem}_classes.png")
        Image.fromarray(seg.colorize(class_map)).save(out / f"{stem}_color.png")
        if args.overlay:
            Image.fromarray(seg.overlay(picture, class_map, args.alpha)).save(out / f"{stem}_overlay.png")
        print(
            f"{path}: {class_map.shape[1]}x{class_map.shape[0]}, invoke {seg.last_invoke_ms:.1f} ms, "
            f"total {total_ms:.1f} ms: {_summary(class_map, seg.metadata.classes)}"
        )
    if len(errors) == len(images):  # nothing segmented: as much a usage error as a missing model
        if len(images) == 1:
            raise CliError(errors[0])
        raise CliError(f"none of the {len(images)} images could be segmented")
    if errors:
        print(f"tfseg-lite predict: error: {len(errors)} of {len(images)} images failed", file=sys.stderr)
    return 1 if errors else 0


def cmd_bench(args) -> int:
    from tfseg_lite.bench import TABLE_HEADER, benchmark, format_report, table_row

    rows = []
    for i, threads in enumerate(args.threads):
        result = benchmark(_segmenter(args, threads), runs=args.runs, warmup=args.warmup,
                           frame_size=args.frame_size, image=args.image)
        if i:
            print()
        print(format_report(result))
        rows.append(table_row(result))
    print()
    print(TABLE_HEADER)
    print("\n".join(rows))
    return 0


def _frames_opencv(source, cv2):
    """RGB frames from a camera index or a video file, via OpenCV."""
    capture = cv2.VideoCapture(int(source) if str(source).isdigit() else str(source))
    if not capture.isOpened():
        raise CliError(f"OpenCV cannot open video source {source!r}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def _frames_picamera2(size):
    """RGB frames from the Raspberry Pi camera, via picamera2."""
    from picamera2 import Picamera2

    camera = Picamera2()
    # picamera2's "RGB888" is stored B, G, R in memory, hence the channel flip below.
    camera.configure(camera.create_video_configuration(main={"size": size, "format": "RGB888"}))
    camera.start()
    try:
        while True:
            yield camera.capture_array()[..., ::-1]
    finally:
        camera.stop()


def camera_loop(segmenter: Segmenter, frames, alpha: float = 0.5, max_frames=None, on_frame=None, report_every: int = 30):
    """Segments a stream of frames; returns the number of frames and the mean FPS.

    Args:
      segmenter: the model.
      frames: an iterable of (H, W, 3) uint8 RGB frames.
      alpha: overlay strength.
      max_frames: stop after this many frames (None: until the stream ends).
      on_frame: called with each overlay (H, W, 3) uint8 RGB, e.g. to show or record it.
      report_every: print the running FPS every this many frames (0: never).

    Returns:
      (frames processed, mean frames per second).
    """
    count, start = 0, time.perf_counter()
    for frame in frames:
        class_map = segmenter.predict(frame)
        if on_frame is not None:
            on_frame(segmenter.overlay(frame, class_map, alpha))
        count += 1
        if report_every and count % report_every == 0:
            print(f"{count} frames, {count / (time.perf_counter() - start):.1f} FPS, last invoke {segmenter.last_invoke_ms:.1f} ms")
        if max_frames is not None and count >= max_frames:
            break
    elapsed = time.perf_counter() - start
    return count, (count / elapsed if elapsed > 0 else 0.0)


def cmd_camera(args) -> int:
    try:
        import cv2
    except ImportError:
        cv2 = None
    use_picamera = args.source == "picamera2"
    if use_picamera:
        try:
            import picamera2  # noqa: F401 - only checking it is there
        except ImportError as err:
            raise CliError(
                "--source picamera2 needs picamera2 (on Raspberry Pi OS: sudo apt install python3-picamera2, "
                "and create the venv with --system-site-packages)"
            ) from err
    elif cv2 is None:
        raise CliError(
            "the camera/video loop needs OpenCV or picamera2: pip install 'tfseg-lite[camera]' "
            "(opencv-python-headless), or on Raspberry Pi OS sudo apt install python3-picamera2 and use "
            "--source picamera2"
        )
    if (args.out or args.show) and cv2 is None:
        raise CliError("--out and --show need OpenCV: pip install 'tfseg-lite[camera]'")
    seg = _segmenter(args)
    frames = _frames_picamera2(tuple(args.size)) if use_picamera else _frames_opencv(args.source, cv2)
    writer = None

    def on_frame(rgb):
        nonlocal writer
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if args.out:
            if writer is None:
                writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (rgb.shape[1], rgb.shape[0]))
            writer.write(bgr)
        if args.show:
            cv2.imshow("tfseg-lite", bgr)
            if cv2.waitKey(1) & 0xFF == ord("q"):
                raise KeyboardInterrupt

    try:
        count, fps = camera_loop(seg, frames, args.alpha, args.max_frames, on_frame if (args.out or args.show) else None)
    except KeyboardInterrupt:
        count, fps = 0, 0.0
    finally:
        if writer is not None:
            writer.release()
    print(f"{count} frames, {fps:.1f} FPS ({seg.runtime.label}, {seg.num_threads} threads)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfseg-lite", description="Run tfseg segmentation models with a TFLite runtime (no TensorFlow).")
    parser.add_argument("--version", action="version", version=f"tfseg-lite {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", help="the .tflite file exported by tfseg")
    common.add_argument("--runtime", choices=["auto", "litert", "tflite-runtime"], default=None, help="TFLite runtime (default: $TFSEG_LITE_RUNTIME or auto: ai-edge-litert, then tflite-runtime)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", parents=[common], help="print the model's description and tensors")
    p.add_argument("--threads", type=_int_at_least(1), default=1)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", parents=[common], help="segment images, write masks (and overlays)")
    p.add_argument("images", nargs="+", help="image files or directories of images")
    p.add_argument("--out", required=True, help="output directory: NAME_classes.png (class ids), NAME_color.png")
    p.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png (colours over the photo)")
    p.add_argument("--alpha", type=_fraction, default=0.5, help="overlay strength, 0..1 (default 0.5)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="interpreter threads (default: all cores)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("bench", parents=[common], help="latency: median, p90, FPS after a warm-up")
    p.add_argument("--threads", type=_int_at_least(1), nargs="+", default=[1], help="thread counts to time, e.g. --threads 1 2 4")
    p.add_argument("--runs", type=_int_at_least(1), default=50, help="timed runs per thread count (default 50)")
    p.add_argument("--warmup", type=_int_at_least(0), default=5, help="untimed runs first (default 5)")
    p.add_argument("--frame-size", type=_int_at_least(1), nargs=2, default=None, metavar=("H", "W"),
                   help="camera frame size to time predict on (default: the model's input size, no resize)")
    p.add_argument("--image", default=None,
                   help="a photo to use as the frame (default: a synthetic frame of colour patches)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("camera", parents=[common], help="live camera or video loop (needs OpenCV or picamera2)")
    p.add_argument("--source", default="0", help="camera index, video file, or 'picamera2' (default 0)")
    p.add_argument("--size", type=_int_at_least(1), nargs=2, default=[640, 480], metavar=("W", "H"), help="picamera2 frame size")
    p.add_argument("--out", default=None, help="write the overlays to this video file (.mp4)")
    p.add_argument("--fps", type=_positive_float, default=10.0, help="frame rate written to --out")
    p.add_argument("--show", action="store_true", help="show the overlays in a window (q quits)")
    p.add_argument("--max-frames", type=_int_at_least(1), default=None)
    p.add_argument("--alpha", type=_fraction, default=0.5)
    p.add_argument("--threads", type=_int_at_least(1), default=None)
    p.set_defaults(func=cmd_camera)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``tfseg-lite`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, OSError, TfsegLiteError, ImportError, ValueError) as err:
        # OSError: a missing model file (FileNotFoundError) or an --out that cannot be written.
        print(f"tfseg-lite {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
