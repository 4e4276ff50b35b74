#!/usr/bin/env python3
"""Runs tfseg-lite on an emulated aarch64 (Raspberry Pi 64-bit) Python and compares it with x86.

Prepare once with ``bash export/scripts/setup_aarch64_check.sh`` (Debian arm64 userland plus the
aarch64 wheels of each runtime). Then::

    python export/scripts/run_aarch64_check.py MODEL.tflite IMAGE [IMAGE ...] [--runtime litert tflite-runtime]

For each runtime the same small program (this file, ``--inner``) segments the images twice:

- under ``qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`` with the aarch64 wheels, and
- natively with the host Python and the same runtime built for x86_64,

and prints one summary line per run (machine, runtime, class map sizes, the SHA-256 of all class
maps, class counts over all images) and MATCH or DIFFER per runtime (with the share of equal
pixels, over all images and per image, and the largest difference of the raw int8 outputs).
The host run also maps the aarch64 run's raw outputs to class maps: where the runtimes' outputs
differ, this tells the runner's own postprocessing (numpy and Pillow on each machine), which
must agree exactly, from the runtime's kernels. Exit status 0 only if every runtime matched
exactly (or, with ``--max-lsb N``, its raw outputs differ by at most N quantization steps) and
the host's postprocessing reproduced the aarch64 class maps.

``--native-kernels tflite-runtime`` runs the host side on TFLite's reference kernels:
tflite-runtime 2.14's optimised x86_64 int8 kernels round differently from the reference (up to
6 steps on a CamVid student). Its aarch64 build matches the reference on the CamVid student; its
int8 3x3 DEPTHWISE_CONV_2D is 1 step off it at a few values (tiny_net's), which later layers
carry to the output.

The emulated CPU is a Raspberry Pi's (``--cpu cortex-a72``, the Pi 4; ``cortex-a76`` is the Pi 5),
not qemu's default ``max``: with ``max`` qemu advertises extensions no Pi has (SVE, i8mm, ...),
XNNPACK in ai-edge-litert picks kernels for them, and its int8 outputs come out wrong under
qemu 7.2 (measured: 82 % of pixels agreeing with x86), which says nothing about a real Pi.

Emulated timings are a functional check, never a speed figure (qemu is 10-100x slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORT_DIR = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path(os.environ.get("TFSEG_AARCH64_ROOT") or Path.home() / ".cache/tfseg-lite/aarch64-root")
DEFAULT_CPU = os.environ.get("TFSEG_AARCH64_CPU", "cortex-a72")
RUNTIMES = ("litert", "tflite-runtime")


def inner(model: str, images: list, runtime: str, threads: int, save: str | None, reference: bool = False,
          replay: str | None = None) -> int:
    """Segments the images and prints one JSON line describing the results (runs on either machine).

    With ``replay`` (another run's saved file), this machine's runner also maps that run's raw
    outputs to class maps (``Segmenter.postprocess``), saved as ``replayed_I``: equal to that
    run's own class maps unless the two machines' postprocessing differs.
    """
    sys.path.insert(0, str(EXPORT_DIR))
    import numpy as np

    from tfseg_lite import Segmenter

    seg = Segmenter(model, num_threads=threads, runtime=runtime, reference_kernels=reference)
    class_maps, outputs = [], []
    for image in images:
        class_maps.append(seg.predict(image))
        outputs.append(seg.interpreter.get_tensor(seg._output["index"]))
    replayed = {}
    if replay:
        with np.load(replay) as other:
            for i in range(len(images)):
                replayed[f"replayed_{i}"] = seg.postprocess(other[f"output_{i}"][0], *other[f"class_map_{i}"].shape)
    if save:  # the raw outputs too: they show how far apart two runs are when class maps differ
        np.savez(save, **{f"class_map_{i}": m for i, m in enumerate(class_maps)},
                 **{f"output_{i}": out for i, out in enumerate(outputs)}, **replayed)
    digest = hashlib.sha256()
    for class_map in class_maps:
        digest.update(np.ascontiguousarray(class_map).tobytes())
    counts = sum(np.bincount(m.ravel().astype(np.int64), minlength=seg.metadata.num_classes) for m in class_maps)
    print(
        json.dumps(
            {
                "machine": platform.machine(),
                "python": platform.python_version(),
                "runtime": seg.runtime.label + (" (reference kernels)" if reference else ""),
                "numpy": np.__version__,
                "shapes": [list(m.shape) for m in class_maps],
                "dtype": str(class_maps[0].dtype),
                "sha256": digest.hexdigest(),  # of all class maps, in order (one image: its class map's)
                "counts": counts.tolist(),
                "invoke_ms": round(seg.last_invoke_ms, 1),
                "tensorflow_imported": "tensorflow" in sys.modules,
            }
        )
    )
    return 0


def _run(command, env, timeout) -> dict:
    """Runs an ``--inner`` command and returns its JSON line; raises RuntimeError with its output on failure."""
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"command failed (exit {proc.returncode}): {' '.join(map(str, command))}\n"
            f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    result = json.loads(lines[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def _env(pythonpath) -> dict:
    # A clean environment: nothing from the host Python (PYTHONHOME, a venv, user site) may leak in.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}
    env.update(LANG="C.UTF-8", PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    return env


def emulated(root: Path, runtime: str, model: Path, images, threads: int, save, timeout: float, cpu: str = DEFAULT_CPU) -> dict:
    """The ``--inner`` run on the emulated aarch64 Python with ``runtime``'s aarch64 wheels."""
    qemu = shutil.which("qemu-aarch64-static")
    python = root / "usr/bin/python3.11"
    site = root / "opt/tfseg-lite" / runtime
    if not qemu or not python.exists() or not (site / ".tfseg-done").exists():
        raise RuntimeError(f"the aarch64 check is not set up ({root}): run bash {EXPORT_DIR}/scripts/setup_aarch64_check.sh")
    command = [qemu, "-cpu", cpu, "-L", str(root), str(python), str(Path(__file__).resolve()), "--inner",
               "--runtime", runtime, "--threads", str(threads), str(model), *map(str, images)]
    if save:
        command += ["--save", str(save)]
    return _run(command, _env([EXPORT_DIR, site]), timeout)


def native(root: Path, runtime: str, model: Path, images, threads: int, save, timeout: float,
           reference: bool = False, replay: Path | None = None) -> dict:
    """The same ``--inner`` run with the host Python (x86_64) and its build of ``runtime`` (and, with
    ``replay``, the host's postprocessing of that aarch64 run's raw outputs)."""
    paths = [EXPORT_DIR]
    host_site = root.parent / "x86_64-tflite-runtime"
    if runtime == "tflite-runtime" and (host_site / ".tfseg-done").exists():
        paths.append(host_site)  # put there by the setup script; the host venv has only ai-edge-litert
    # The host's own site-packages (numpy, Pillow, ai-edge-litert) stay visible: only the user site is cut.
    command = [sys.executable, str(Path(__file__).resolve()), "--inner", "--runtime", runtime,
               "--threads", str(threads), str(model), *map(str, images)]
    if save:
        command += ["--save", str(save)]
    if reference:
        command.append("--reference-kernels")
    if replay:
        command += ["--replay", str(replay)]
    env = _env(paths)
    env["PATH"] = os.environ.get("PATH", "")
    return _run(command, env, timeout)


def summary(label: str, result: dict) -> str:
    return (
        f"{label}: machine={result['machine']} python={result['python']} runtime={result['runtime']} "
        f"numpy={result['numpy']} class_maps={','.join(f'{w}x{h}' for h, w in result['shapes'])} {result['dtype']} "
        f"sha256={result['sha256'][:16]} counts={result['counts']} tensorflow_imported={result['tensorflow_imported']} "
        f"wall={result['wall_s']}s"
    )


def compare(arm_file: Path, native_file: Path) -> dict:
    """How far apart two saved runs are: equal-pixel share of the class maps (over all images and
    per image), raw outputs' max difference, and (if the native run replayed the aarch64 run's raw
    outputs) the aarch64 class-map pixels the host's postprocessing of the same outputs does not
    reproduce (``postprocess_pixels_differing``; None without a replay)."""
    import numpy as np

    equal, pixels, per_image, max_diff, replay_differing = 0, 0, [], 0.0, 0
    with np.load(arm_file) as a, np.load(native_file) as b:
        count = sum(name.startswith("class_map_") for name in a.files)
        if count != sum(name.startswith("class_map_") for name in b.files):
            raise ValueError(f"{arm_file} and {native_file} hold different numbers of class maps")
        for i in range(count):
            maps_a, maps_b = a[f"class_map_{i}"], b[f"class_map_{i}"]
            same = int((maps_a == maps_b).sum()) if maps_a.shape == maps_b.shape else 0
            equal, pixels = equal + same, pixels + maps_a.size
            per_image.append(same / maps_a.size)
            out_a, out_b = a[f"output_{i}"].astype(np.float64), b[f"output_{i}"].astype(np.float64)
            diff = float(np.abs(out_a - out_b).max()) if out_a.shape == out_b.shape else float("inf")
            max_diff = max(max_diff, diff)
            if replay_differing is not None and f"replayed_{i}" in b.files:
                replayed = b[f"replayed_{i}"]
                replay_differing += int((replayed != maps_a).sum()) if replayed.shape == maps_a.shape else maps_a.size
            else:
                replay_differing = None
    return {
        "identical": equal == pixels,
        "pixel_agreement": equal / pixels,
        "image_agreement": per_image,
        "pixels_differing": int(pixels - equal),
        "pixels": int(pixels),
        "output_max_abs_diff": max_diff,
        "postprocess_pixels_differing": replay_differing,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    parser.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the arm64 userland (default $TFSEG_AARCH64_ROOT or ~/.cache/tfseg-lite/aarch64-root)")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help="emulated CPU: cortex-a72 (Pi 4, default), cortex-a76 (Pi 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-lsb", type=float, default=0.0,
        help="accept raw outputs that differ by at most this many quantization steps (default 0: identical); "
        "tflite-runtime 2.14's aarch64 and x86_64 builds round requantization ties differently (1-2 steps)",
    )
    parser.add_argument(
        "--native-kernels", nargs="+", choices=RUNTIMES, default=[], metavar="RUNTIME",
        help="compare with the host running these runtimes on TFLite's reference kernels instead of its optimised "
        "ones (tflite-runtime 2.14: its x86_64 build's optimised int8 kernels deviate from the reference, its "
        "aarch64 build does not)",
    )
    parser.add_argument("--reference-kernels", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", type=Path, default=None, help="keep each run's class maps and raw outputs (class_map_I, output_I per image I) as RUNTIME-MACHINE.npz here")
    parser.add_argument("--no-native", action="store_true", help="only the emulated runs")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", action="store_true", help="print all results as one JSON object at the end")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--replay", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        return inner(str(args.model), [str(image) for image in args.images], args.runtime[0], args.threads, args.save,
                     args.reference_kernels, args.replay)

    model, images = args.model.resolve(), [image.resolve() for image in args.images]
    host = platform.machine()
    results, ok = {}, True
    with tempfile.TemporaryDirectory(prefix="tfseg-aarch64-") as scratch:
        save_dir = args.save_dir or Path(scratch)
        save_dir.mkdir(parents=True, exist_ok=True)
        for runtime in args.runtime:
            arm_file, native_file = save_dir / f"{runtime}-aarch64.npz", save_dir / f"{runtime}-{host}.npz"
            try:
                arm = emulated(args.root, runtime, model, images, args.threads, arm_file, args.timeout, args.cpu)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"aarch64 {runtime}: FAILED\n{err}", file=sys.stderr)
                ok = False
                continue
            print(summary(f"aarch64 ({args.cpu}) {runtime}", arm), flush=True)
            results[runtime] = {"aarch64": arm}
            ok &= arm["machine"] == "aarch64" and not arm["tensorflow_imported"]
            if args.no_native:
                continue
            try:
                x86 = native(args.root, runtime, model, images, args.threads, native_file, args.timeout,
                             runtime in args.native_kernels, replay=arm_file)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"{host} {runtime}: FAILED\n{err}", file=sys.stderr)
                ok = False
                continue
            print(summary(f"{host} {runtime}", x86), flush=True)
            verdict = compare(arm_file, native_file)
            results[runtime].update(native=x86, compare=verdict)
            within = verdict["output_max_abs_diff"] <= args.max_lsb
            replay_differing = verdict["postprocess_pixels_differing"]
            ok &= (verdict["identical"] or within) and not replay_differing
            word = "MATCH" if verdict["identical"] else f"WITHIN {args.max_lsb:g} LSB" if within else "DIFFER"
            if replay_differing:
                word = "DIFFER"
            per_image = "" if len(images) == 1 else " (per image: " + ", ".join(
                f"{100 * share:.2f}%" for share in verdict["image_agreement"]) + ")"
            replay_text = "not checked" if replay_differing is None else (
                f"{replay_differing} pixels differ" if replay_differing else "the same class maps")
            print(
                f"{runtime}: {word} aarch64 vs {host}: class maps "
                f"{100 * verdict['pixel_agreement']:.2f}% equal{per_image}, {verdict['pixels_differing']} of "
                f"{verdict['pixels']} pixels differ; raw output max |diff| {verdict['output_max_abs_diff']:g}; "
                f"the {host} runner on the aarch64 raw outputs: {replay_text}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
