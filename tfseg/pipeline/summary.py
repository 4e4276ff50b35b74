"""What a chain produced, side by side: one row per model, one picture of accuracy against speed.

For every stage that made a model (train, distill, prune, quantize) the row gives its parameters,
MACs at its evaluation size, the size of its TFLite file (float32 for float runs, int8 for a
quantization-aware run; an export stage's own file when the chain exported that run), its mIoU on
a split in Keras and in LiteRT (one pass, ``tfseg.export.verify``) and its LiteRT latency. The last
TFLite export is also run through tfseg-lite's ``Segmenter`` (the device runner, without TensorFlow):
its mIoU on the split and overlay pictures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfseg import export
from tfseg.checkpoint import write_json
from tfseg.metrics import confusion_matrix, scores_from_confusion
from tfseg.models import profile
from tfseg.report import overlay_panel, plot_accuracy_latency, save_png
from tfseg.runs import Run
from tfseg.tflite import litert_latency

MODEL_STAGES = ("train", "distill", "prune", "quantize")
COLUMNS = (("stage", "{}"), ("kind", "{}"), ("format", "{}"), ("params", "{:,}"), ("mmacs", "{:.1f}"),
           ("file_kib", "{:.0f}"), ("miou_keras", "{:.2%}"), ("miou_litert", "{:.2%}"), ("latency_ms", "{:.2f}"))


def _float_source(run: Run) -> Run:
    """The float run a quantization-aware run was made from (for its architecture's figures)."""
    return Run.open(run.record["source"]) if run.is_quantization_aware and run.record.get("source") else run


def _exported_file(stage, exports, folder: Path, run: Run, model) -> tuple[Path, str]:
    """The chain's TFLite export of this stage's run, or a new one of ``model`` in ``folder``."""
    for export_stage in exports:
        config = export_stage.config
        if Path(config.run_dir) == stage.output and config.format == "tflite":
            return Path(config.out), config.quantization
    quantization = "int8" if run.is_quantization_aware else "none"
    path = folder / f"{stage.name}_{'int8' if quantization == 'int8' else 'float32'}.tflite"
    if not path.exists():
        export.to_tflite(model, path, quantization, info=run.info, input_size=run.eval_size,
                         model_name=run.model_name)
    return path, quantization


def model_row(stage, exports, split, folder: Path, threads: int = 1) -> dict:
    """The figures of one model stage (see the module docstring)."""
    run = Run.open(stage.output)
    size = run.eval_size
    model = run.model(size=size)
    source = _float_source(run)
    # MACs are counted on the float architecture (a QAT model's wrappers have no MAC rule).
    figures = profile(model if source is run else source.model(size=size), (*size, 3), tflite=False)
    path, quantization = _exported_file(stage, exports, folder, run, model)
    checked = export.verify(model, path, split, info=run.info, image_size=size)
    timing = litert_latency(path.read_bytes(), num_threads=threads, runs=20)
    return {"stage": stage.name, "kind": stage.kind, "format": "float32" if quantization == "none" else quantization,
            "params": int(figures["params"]), "mmacs": figures["macs"] / 1e6, "file": str(path),
            "file_kib": path.stat().st_size / 1024, "miou_keras": checked["miou_keras"],
            "miou_litert": checked["miou_exported"], "agreement": checked["agreement"],
            "latency_ms": timing["median_ms"], "threads": threads}


def device_check(tflite_path, split, out_dir: Path, overlays: int = 4, threads: int = 1) -> dict:
    """Runs an export through tfseg-lite's ``Segmenter`` on every image of ``split``: its mIoU, and
    pictures of the first images in ``out_dir`` (image | ground truth | the Segmenter's classes).

    Raises:
      ImportError: tfseg-lite is not installed (it is its own package: ``pip install ./export``).
    """
    try:
        from tfseg_lite import Segmenter  # the device runner is a separate distribution
    except ImportError:
        raise ImportError("the device check needs tfseg-lite, the device runner: pip install ./export "
                          "(from tfseg's source folder)") from None
    segmenter = Segmenter(tflite_path, num_threads=threads)
    info = split.info
    cm = np.zeros((info.num_classes, info.num_classes), dtype=np.int64)
    for index, (image, mask) in enumerate(split.dataset().as_numpy_iterator()):
        pixels = np.clip(np.round(image), 0, 255).astype(np.uint8)
        class_map = segmenter.predict(pixels)
        cm += confusion_matrix(mask, class_map, info.num_classes, info.ignore_label)
        if index < overlays:
            save_png(out_dir / f"{index:03d}.png", overlay_panel(pixels, mask, class_map, info))
    return {"file": str(tflite_path), "miou": float(scores_from_confusion(cm)["miou"]), "images": len(split),
            "overlays": str(out_dir)}


def format_table(rows) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[name]) if row.get(name) is not None else "-" for name, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(stages, out_dir, split_name: str = "test", threads: int = 1, log=print) -> dict:
    """Writes ``summary.md``, ``summary.json`` and ``summary.png`` (mIoU against latency) into
    ``out_dir`` for the chain's ``stages`` (``tfseg.pipeline.chain.Stage``), scored on ``split_name``."""
    out = Path(out_dir)
    model_stages = [stage for stage in stages if stage.kind in MODEL_STAGES]
    exports = [stage for stage in stages if stage.kind == "export"]
    if not model_stages:
        return {"rows": []}
    split = Run.open(model_stages[0].output).split(split_name)
    rows = []
    for stage in model_stages:
        log(f"summary: scoring {stage.name} in Keras and LiteRT on {split_name}")
        rows.append(model_row(stage, exports, split, out / "summary_files", threads))
    summary = {"split": split_name, "rows": rows}
    last_tflite = [stage for stage in exports if stage.config.format == "tflite"]
    if last_tflite:
        summary["device"] = device_check(last_tflite[-1].config.out, split, out / "overlays", threads=threads)
    table = format_table(rows)
    if "device" in summary:
        device = summary["device"]
        table += (f"\n\ntfseg-lite Segmenter on {Path(device['file']).name}: mIoU {device['miou']:.2%} on "
                  f"{device['images']} {split_name} images; overlays in {device['overlays']}")
    (out / "summary.md").write_text(table + "\n")
    write_json(out / "summary.json", summary)
    plot_accuracy_latency(rows, out / "summary.png", title=f"mIoU in LiteRT ({split_name}) vs latency, {threads} thread")
    summary["table"] = table
    return summary


__all__ = ["device_check", "format_table", "model_row", "summarize"]
