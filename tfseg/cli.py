"""The ``tfseg`` command: a thin layer over the library functions.

    tfseg quickstart                       the whole chain on built-in synthetic scenes (train, distill, prune,
                                           QAT, int8 export, LiteRT check, device runner), a table and a picture
    tfseg run CHAIN.toml                   a chain of stages from a file (finished stages are kept)
    tfseg train --dataset camvid ...       train any zoo model on any dataset
    tfseg distill --teacher RUN_DIR ...    train a small student from a trained teacher (knowledge distillation)
    tfseg prune RUN_DIR --out DIR          iterative L1 filter pruning with fine-tuning, per-round figures
    tfseg quantize RUN_DIR --out DIR       quantization-aware fine-tuning (QAT; with --teacher: QAT + distillation)
    tfseg export RUN_DIR --out FILE        int8 / float16 / dynamic / float TFLite or SavedModel, checked against Keras
    tfseg evaluate RUN_DIR --split test    mIoU, per-class IoU, pixel accuracy, overlays (also of an exported FILE)
    tfseg benchmark RUN_DIR                every TFLite format of a run's model: size, mIoU, latency at 1 and 2 threads
    tfseg diagnose RUN_DIR                 per-layer int8 error, worst first; what leaving the worst in float buys and costs
    tfseg profile RUN_DIR                  where LiteRT spends the time: ms, MACs and GMAC/s per block of layers
    tfseg calibrate RUN_DIR                logit adjustment of a class-weighted run, chosen on val
    tfseg check-data --dataset camvid      decode every file of a split and report the first bad one
    tfseg latency-table FILE --input-size  the NAS latency table: every block of a search space timed in LiteRT
    tfseg search --dataset camvid ...      latency-aware architecture search; writes the derived net's JSON
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from importlib import resources
from pathlib import Path

from tfseg import options as names
from tfseg.errors import ConfigError, DataError
from tfseg.nas.space import space_document
from tfseg.options import loss_spec, option_value
from tfseg.options import size as parse_size
from tfseg.tf_config import read_tf_config

# The commands import TensorFlow only once they run (so --help and argument errors are instant):
# every tfseg import below that pulls it in sits inside the command's function.


def _key_values(items, flag: str) -> dict:
    """Repeated ``KEY=VALUE`` arguments of ``flag`` as a dict (values read by ``option_value``)."""
    options = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        options[key.strip()] = option_value(value.strip())
    return options


def _data_options(args) -> dict:
    options = {"root": args.data_dir} if args.data_dir else {}
    return options | _key_values(args.data_option, "--data-option")


def _model_options(args) -> dict:
    """The builder options of ``--width``/``--depth``, ``--model-option`` and ``--weights``."""
    options = {key: value for key, value in (("width", args.width), ("depth", args.depth)) if value}
    options |= _key_values(args.model_option, "--model-option")
    if args.weights:
        if not Path(args.weights).exists():
            raise ConfigError(f"--weights {args.weights}: no such file or directory")
        options["weights"] = args.weights
    return options


def _add_data_args(p, default_dataset="scenes"):
    p.add_argument("--dataset", default=default_dataset, help="scenes (built-in synthetic), camvid or folder")
    p.add_argument("--data-dir", help="dataset root (e.g. ../shared/data/camvid)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="extra dataset option, repeatable (e.g. num_images=64)")


def _training_options(args) -> dict:
    """TrainConfig fields shared by ``train`` and ``distill``."""
    model, model_options = args.model or args.default_model, _model_options(args)
    if args.init_from:  # the source run's architecture unless --model says otherwise (then it must match)
        from tfseg.runs import Run

        if model_options:
            raise ConfigError("--init-from starts from that run's architecture and weights: drop "
                              "--width/--depth/--model-option/--weights")
        source = Run.open(args.init_from)
        model, model_options = args.model or source.model_name, source.model_options
    options = dict(
        out_dir=args.out, model=model, model_options=model_options, dataset=args.dataset,
        data_options=_data_options(args), init_from=args.init_from,
        crop_size=args.crop_size, eval_size=args.eval_size, batch_size=args.batch_size, epochs=args.epochs,
        loss=args.loss, class_weights=args.class_weights,
        class_weight_power=args.class_weight_power, optimizer=args.optimizer,
        learning_rate=args.lr, schedule=args.schedule, augment=None if args.no_augment else {}, seed=args.seed,
        precise_bn=args.precise_bn, distribute=args.distribute,
    )
    return options


def _check_distribute(args):
    """Checks a multi-worker run's TF_CONFIG before TensorFlow loads, so that a bad one fails at once."""
    if args.distribute == "multi_worker":
        read_tf_config()


def _print_val(run, what: str = "val"):
    if not run.record.get("complete"):  # a non-chief worker: the chief scores and writes the run
        print(f"\ntraining done; the chief worker writes and scores the run in {run.path}")
        return
    scores = run.scores(run.record.get("val_split", "val")) or {}
    print(f"\n{what} mIoU {100 * scores.get('miou', float('nan')):.2f}  ->  run directory {run.path}")


def _cmd_train(args) -> int:
    _check_distribute(args)
    from tfseg.pipeline import train

    _print_val(train.run(train.TrainConfig(**_training_options(args))))
    return 0


def _cmd_distill(args) -> int:
    _check_distribute(args)
    from tfseg.pipeline import distill

    losses = [] if args.no_distillation else [loss_spec(text) for text in (args.loss_kd or ["pixel_kd"])]
    config = distill.DistillConfig(**_training_options(args), teacher_run=args.teacher, losses=losses,
                                   student_loss_weight=args.student_loss_weight)
    _print_val(distill.run(config), "student val")
    return 0


def _cmd_prune(args) -> int:
    from tfseg.pipeline import prune

    pruned = prune.run(prune.PruneConfig(
        args.run_dir, args.out, step=args.step, target=args.target, fine_tune_epochs=args.fine_tune_epochs,
        distill=args.distill, split=args.split, criterion=args.criterion, scope=args.scope,
        learning_rate=args.lr, latency_threads=args.latency_threads, bn_batches=args.bn_batches,
        prune_residual=not args.keep_residual))
    rows = pruned.record["rounds"]
    keys = list(rows[0])
    print("\n" + " | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[key]) for key in keys))
    print(f"pruned run in {args.out} (rounds.json, pruning.png, best.keras)")
    return 0


def _cmd_quantize(args) -> int:
    _check_distribute(args)
    from tfseg.pipeline import quantize

    losses = [loss_spec(text) for text in (args.loss_kd or ["pixel_kd"])]
    config = quantize.QATConfig(
        run_dir=args.run_dir, out_dir=args.out, which=args.which, epochs=args.epochs, learning_rate=args.lr,
        batch_size=args.batch_size, image_size=args.image_size, preserve_sparsity=args.preserve_sparsity,
        teacher_run=args.teacher, losses=losses, augment=not args.no_augment,
        calibration_images=args.calibration_images, freeze_batch_norm=args.freeze_bn, seed=args.seed,
        distribute=args.distribute)
    run = quantize.run(config)
    _print_val(run, "quantization-aware val")
    if run.record.get("complete"):
        print(f"next: tfseg export {args.out} --out MODEL.tflite")
    return 0


def _cmd_export(args) -> int:
    from tfseg.pipeline import export

    options = _data_options(args) if (args.data_dir or args.data_option) else None
    report = export.run(export.ExportConfig(
        run_dir=args.run_dir, out=args.out, format=args.format, quantization=args.quantization,
        io_dtype=args.io_dtype, image_size=args.image_size, which=args.which,
        calibration_split=args.calibration_split, calibration_images=args.calibration_images,
        verify_split=args.verify_split, verify_images=args.verify_images, dataset=args.dataset,
        data_options=options, seed=args.seed, float_fallback=tuple(args.float_fallback or ()),
        float_fallback_worst=args.float_fallback_worst, output=args.output))
    size_text = f" ({report['bytes'] / 1024:.0f} KiB)" if "bytes" in report else ""
    print(f"wrote {report['path']}{size_text} and {report['sidecar']}")
    if report["output"] != "logits":
        print(f"output: {report['output']} at the model's stride; its output.upsampling says how runners map it "
              "onto the input")
    if report.get("float_fallback"):
        print(f"left in float: {', '.join(report['float_fallback'])}")
    if "verify" in report:
        checked = report["verify"]
        print(f"{checked['data']}, {checked['num_images']} images: argmax agreement "
              f"{100 * checked['agreement']:.2f} %, mIoU {100 * checked['miou_exported']:.2f} exported vs "
              f"{100 * checked['miou_keras']:.2f} Keras")
    return 0


def _evaluate_export(args, path: Path) -> int:
    """``tfseg evaluate`` of an exported file (TFLite) or SavedModel directory, on its metadata's dataset."""
    from tfseg import data as seg_data
    from tfseg.evaluate import evaluate
    from tfseg.predictors import load_predictor

    predictor = load_predictor(path)
    dataset = args.dataset or (predictor.metadata or {}).get("dataset")
    if not dataset:
        raise ConfigError(f"{path} has no metadata naming its dataset: give --dataset")
    try:
        predictor.check_size(args.image_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    split = seg_data.load(dataset, args.split, **_data_options(args))
    out = Path(args.out) if args.out else Path(f"{path}.eval") / args.split
    scores = evaluate(predictor, split, batch_size=args.batch_size, out_dir=out, num_overlays=args.overlays)
    output = (predictor.metadata or {}).get("output", {}).get("kind", "logits")
    print(f"\n{split.name}: mIoU {100 * scores['miou']:.2f}, pixel accuracy {100 * scores['pixel_accuracy']:.2f} "
          f"({predictor.kind}, {predictor.quantization}, output {output}); report in {out}")
    return 0


def _cmd_evaluate(args) -> int:
    from tfseg.evaluate import evaluate
    from tfseg.runs import Run

    target = Path(args.run_dir)
    if target.is_file() or (target / "saved_model.pb").is_file():
        return _evaluate_export(args, target)
    run = Run.open(args.run_dir)
    size = args.image_size or run.eval_size
    model = run.model(args.which, size=size)
    split = run.split(args.split, args.dataset, _data_options(args) if (args.data_dir or args.data_option) else None)
    out = Path(args.out or run.path / "eval" / args.split)
    scores = evaluate(model, split, image_size=size, batch_size=args.batch_size, out_dir=out,
                      num_overlays=args.overlays)
    print(f"\n{split.name}: mIoU {100 * scores['miou']:.2f}, pixel accuracy "
          f"{100 * scores['pixel_accuracy']:.2f}; report in {out}")
    return 0


def _cmd_calibrate(args) -> int:
    from tfseg.pipeline import calibrate

    config = calibrate.CalibrateConfig(args.run_dir, split=args.split)
    if args.strengths:
        config.strengths = tuple(float(v) for v in args.strengths.split(","))
    summary = calibrate.run(config).record["logit_adjustment"]
    print(f"\nlogit adjustment strength {summary['strength']} chosen on {args.split}: mIoU "
          f"{100 * summary['miou_before']:.2f} -> {100 * summary['miou_after']:.2f}; "
          f"best.keras adjusted, original kept as {calibrate.UNCALIBRATED}.keras")
    return 0


def _cmd_latency_table(args) -> int:
    from tfseg.nas.latency_table import LatencyTable, keys_for_space
    from tfseg.nas.space import SearchSpace

    path = Path(args.table)
    space = SearchSpace.from_dict(space_document(args.space)) if args.space else None
    if path.exists():
        table = LatencyTable.load(path, verbose=args.verbose)
        if args.input_size or args.dtype:
            table.check_compatible(args.input_size or table.input_size, args.dtype or table.dtype)
    else:
        if not args.input_size or args.num_classes is None:
            raise ConfigError(f"{path} does not exist: a new table needs --input-size and --num-classes")
        table = LatencyTable(args.input_size, args.num_classes, args.dtype or "int8", args.threads,
                             space=space or SearchSpace(), path=path, runs=args.runs, warmup=args.warmup,
                             verbose=args.verbose)
    if space is None:
        space = SearchSpace.from_dict(table.meta["space"]) if table.meta.get("space") else SearchSpace()
    classes = args.num_classes if args.num_classes is not None else table.meta["num_classes"]
    start = time.time()
    table.ensure([*keys_for_space(space, classes), *args.key])
    table.save()
    rejected = table.rejected()
    print(f"{table.path}: {len(table.entries)} entries ({len(rejected)} rejected), "
          f"{table.meta['machine'].get('cpu')}, ai-edge-litert {table.meta['runtime'].get('version')}, "
          f"{time.time() - start:.0f} s")
    for key, reason in rejected.items():
        print(f"  rejected {key}: {reason}")
    return 0


def _cmd_search(args) -> int:
    from tfseg.pipeline import search

    config = search.SearchConfig(
        out_dir=args.out, dataset=args.dataset, data_options=_data_options(args), space=space_document(args.space),
        proxy_size=args.proxy_size, deploy_size=args.deploy_size, latency_table=args.latency_table,
        latency_threads=args.latency_threads, latency_weight=args.latency_weight, latency_band=args.latency_band,
        latency_coefficients=args.latency_coefficients, latency_balance=args.latency_balance,
        batch_size=args.batch_size, epochs=args.epochs, warmup_epochs=args.warmup_epochs, learning_rate=args.lr,
        arch_learning_rate=args.arch_lr, teacher_run=args.teacher, lbt=args.lbt, lbt_student=args.lbt_student,
        teaching_weight=args.teaching_weight, precise_bn=args.precise_bn, seed=args.seed)
    architecture = search.run(config)
    record = search.read_record(args.out)
    print(f"\nderived network: predicted {record['predicted_ms']:.2f} ms int8 at "
          f"{config.deploy_size[0]}x{config.deploy_size[1]}, {config.latency_threads} thread(s); "
          f"branches ending at 1/{', 1/'.join(map(str, architecture.branch_scales))}\n"
          f"  -> {args.out}/architecture.json; train it with: tfseg distill --model searched "
          f"--model-option architecture={args.out}/architecture.json ...")
    return 0


def _cmd_check_data(args) -> int:
    from tfseg import data as seg_data

    for split_name in args.splits:
        split = seg_data.load(args.dataset, split_name, **_data_options(args))
        seg_data.check(split)
        print(f"{split.name}: {len(split)} images OK, {split.info.num_classes} classes")
    return 0


def _cmd_benchmark(args) -> int:
    from tfseg.pipeline import benchmark

    result = benchmark.run(benchmark.BenchmarkConfig(
        args.run_dir, out_dir=args.out, split=args.split, formats=tuple(args.formats), threads=tuple(args.threads),
        max_images=args.max_images, calibration_images=args.calibration_images, runs=args.runs,
        outputs=tuple(args.outputs)))
    print(f"\n{result['table']}\n\nWritten: {result['out_dir']}/benchmark.md, benchmark.json, benchmark.png "
          "(mIoU against latency) and the .tflite files")
    return 0


def _cmd_diagnose(args) -> int:
    from tfseg.pipeline import diagnose

    result = diagnose.run(diagnose.DiagnoseConfig(
        args.run_dir, out_dir=args.out, split=args.split, images=args.images, score_splits=args.score_splits,
        fallback_worst=tuple(args.fallback_worst), fallback_layers=tuple(args.fallback_layers or ()),
        metric=args.metric, calibration_images=args.calibration_images, max_images=args.max_images,
        threads=args.threads, runs=args.runs, seed=args.seed))
    worst = ", ".join(result["worst_layers"][:5])
    print(f"\nworst layers ({result['metric']} on {result['images']} {result['split']} images): {worst}\n\n"
          f"{result['table']}\n\nWritten: {result['out_dir']}/diagnose.md, diagnose.json, layers.png")
    return 0


def _cmd_profile(args) -> int:
    from tfseg.latency_profile import format_layer_profile, profile_layers
    from tfseg.litert_peak import format_peak, litert_peak, peak_gmacs
    from tfseg.output_tail import output_model
    from tfseg.quantize.ptq import representative_images
    from tfseg.runs import Run

    run = Run.open(args.run_dir)
    model = output_model(run.model(args.which, size=run.eval_size), args.output)
    quantizations = ["int8"] if run.is_quantization_aware else args.quantizations
    calibration = None
    if "int8" in quantizations and not run.is_quantization_aware:
        # Real images: the ranges decide whether XNNPACK takes an int8 ADD (its scale-ratio limits).
        calibration = representative_images(run.train_split, run.eval_size,
                                            args.calibration_images)
    peaks = {}
    if args.peak:
        rows = litert_peak((args.threads,), args.runs)
        peaks = peak_gmacs(rows)
        print(format_peak(rows))
    results = [profile_layers(model, quantization, calibration if quantization == "int8" else None, args.threads,
                              args.runs, cut=args.cut, method=args.method,
                              peak_gmacs=peaks.get(quantization, {}).get(args.threads))
               for quantization in quantizations]
    print(f"{run.path} ({run.model_name}, output {args.output}, {run.eval_size[0]}x{run.eval_size[1]}, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''})\n")
    print(format_layer_profile(*results))
    return 0


def _comma_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']: an argparse ``type`` for comma-separated names."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def _comma_counts(text: str) -> list[int]:
    """'1,3,5' -> [1, 3, 5]: an argparse ``type`` for comma-separated counts of at least 1."""
    try:
        counts = [int(item) for item in _comma_list(text)]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts of at least 1 (e.g. 1,3,5), got {text!r}")
    return counts


def _run_chain(chain_file, overrides, summary_split: str | None) -> int:
    from tfseg.pipeline import chain, summary

    start = time.time()
    settings, stages = chain.load(chain_file, overrides)
    out = Path(settings.get("out", "tfseg_chain"))
    print(f"tfseg: {len(stages)} stages ({', '.join(f'{s.name}:{s.kind}' for s in stages)}) -> {out}")
    chain.run_stages(stages)
    if summary_split and chain.is_chief(stages):  # the other workers of a multi-worker chain stop here
        result = summary.summarize(stages, out, split_name=summary_split)
        print(f"\n{result['table']}\n")
        print(f"Written: {out}/summary.md, {out}/summary.png (mIoU against latency), {out}/overlays/")
    print(f"Done in {time.time() - start:.0f} s.")
    return 0


def _cmd_run(args) -> int:
    return _run_chain(args.chain, args.set, args.summary_split)


def _cmd_quickstart(args) -> int:
    chain_file = resources.files("tfseg.pipeline") / "chains" / ("camvid.toml" if args.data_dir else "quickstart.toml")
    overrides = [f"out={args.out!r}".replace("'", '"')] + list(args.set or ())
    if args.data_dir:
        overrides.append(f'data_options={{ root = "{args.data_dir}" }}')
    with resources.as_file(chain_file) as path:
        return _run_chain(path, overrides, "test")


def _add_training_args(p, default_model="unet_small"):
    p.add_argument("--model", help=f"zoo model (default: {default_model}, or the --init-from run's)")
    p.set_defaults(default_model=default_model)
    p.add_argument("--init-from", metavar="RUN_DIR",
                   help="start from this run's best weights (e.g. a filter-pruned run) instead of a fresh model")
    p.add_argument("--width", type=int, help="model width option (U-Net first-level filters)")
    p.add_argument("--depth", type=int, help="model depth option (U-Net levels)")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="a builder option of the zoo model, repeatable (e.g. alpha=0.35, output_stride=8)")
    p.add_argument("--weights", metavar="PATH",
                   help="local pretrained backbone weights (e.g. a keras-applications MobileNetV2 *_no_top.h5)")
    _add_data_args(p)
    p.add_argument("--crop-size", type=parse_size, default=(96, 96), help="training input size, N or HxW")
    p.add_argument("--eval-size", type=parse_size,
                   help="model input size for validation on full-resolution labels (default: crop size)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--loss", default="ce", choices=names.GROUND_TRUTH_LOSSES, help="ground-truth loss")
    p.add_argument("--class-weights", choices=("median",), help="median-frequency class weights")
    p.add_argument("--class-weight-power", type=float, default=1.0,
                   help="raise the class weights to this power (0.5 softens them; default 1)")
    p.add_argument("--optimizer", default="adam", choices=names.OPTIMIZERS)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", default="poly", choices=names.SCHEDULES)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precise-bn", type=int, metavar="BATCHES",
                   help="re-estimate the BN statistics on this many training batches before each validation "
                        "(0: off; default 16 for models trained from random initialisation, else off)")
    p.add_argument("--out", required=True, help="run directory (resumes if it holds a killed run)")
    _add_distribute_arg(p)


def _add_distribute_arg(p):
    p.add_argument("--distribute", default="none", choices=names.DISTRIBUTE_MODES,
                   help="tf.distribute strategy: mirrored (this machine's GPUs) or multi_worker (every worker runs "
                        "the same command with its TF_CONFIG); --batch-size is the global batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfseg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="the whole chain on built-in synthetic scenes (or --data-dir CamVid)")
    q.add_argument("--out", default="tfseg_quickstart")
    q.add_argument("--data-dir", help="run the chain on a CamVid-layout folder instead, with CPU-sized settings")
    q.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE",
                   help="change one option of the chain, repeatable (e.g. teacher.epochs=4)")
    q.set_defaults(func=_cmd_quickstart)

    r = sub.add_parser("run", help="run a chain of stages from a TOML file (finished stages are kept)")
    r.add_argument("chain", help="the chain file (see tfseg/pipeline/chains/quickstart.toml)")
    r.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", help="change one option, repeatable")
    r.add_argument("--summary-split", help="after the chain, score every model on this split: table and picture")
    r.set_defaults(func=_cmd_run)

    t = sub.add_parser("train", help="train a zoo model")
    _add_training_args(t)
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("distill", help="train a student from a trained teacher run (knowledge distillation)")
    d.add_argument("--teacher", required=True, help="the teacher's run directory (from tfseg train)")
    _add_training_args(d, default_model="fastseg_tiny")
    d.add_argument("--kd", dest="loss_kd", action="append", metavar="LOSS[:KEY=VALUE,...]",
                   help="distillation loss, repeatable: pixel_kd, pairwise_kd, csc, ace, cwd, with options, "
                        "e.g. pixel_kd:temperature=4,alpha=0.5 (default: pixel_kd)")
    d.add_argument("--no-distillation", action="store_true", help="train the student alone in the same loop")
    d.add_argument("--student-loss-weight", type=float, help="weight of the ground-truth loss (default: see Distiller)")
    d.set_defaults(func=_cmd_distill)

    p = sub.add_parser("prune", help="iterative L1 filter pruning of a trained run, with fine-tuning")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="directory of the pruned run")
    p.add_argument("--step", type=float, default=0.15, help="share of the original filters removed per round")
    p.add_argument("--target", type=float, default=0.75, help="share of the filters removed at the end")
    p.add_argument("--fine-tune-epochs", type=int, default=2)
    p.add_argument("--distill", action="store_true", help="fine-tune by distillation from the unpruned model")
    p.add_argument("--split", default="val", help="split scored after each round")
    p.add_argument("--criterion", default="l1", choices=names.PRUNING_CRITERIA)
    p.add_argument("--scope", default="layer", choices=names.PRUNING_SCOPES)
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    p.add_argument("--latency-threads", type=int, default=1, help="LiteRT threads for per-round latency (0: skip)")
    p.add_argument("--keep-residual", action="store_true",
                   help="keep channels tied by residual additions whole; prune the layers inside the blocks")
    p.add_argument("--bn-batches", type=int, default=20,
                   help="training batches batch-norm statistics are re-estimated from after each step (0: don't)")
    p.set_defaults(func=_cmd_prune)

    qz = sub.add_parser("quantize", help="quantization-aware fine-tuning of a trained run (QAT, or QAT + KD)")
    qz.add_argument("run_dir", help="the trained float run")
    qz.add_argument("--out", required=True, help="directory of the quantization-aware run")
    qz.add_argument("--which", default="best", choices=("best", "last"))
    qz.add_argument("--epochs", type=int, default=3)
    qz.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine decay)")
    qz.add_argument("--batch-size", type=int, help="default: the run's")
    qz.add_argument("--image-size", type=parse_size, help="train/validation input size (default: the run's eval size)")
    qz.add_argument("--preserve-sparsity", action="store_true", help="prune-preserving QAT for magnitude-pruned runs")
    qz.add_argument("--teacher", help="a teacher run: quantization-aware knowledge distillation")
    qz.add_argument("--kd", dest="loss_kd", action="append", metavar="LOSS[:KEY=VALUE,...]",
                    help="distillation loss with --teacher, repeatable (default: pixel_kd)")
    qz.add_argument("--no-augment", action="store_true")
    qz.add_argument("--calibration-images", type=int, default=32,
                    help="training images the activation ranges start from (0: TF-MOT's [-6, 6])")
    qz.add_argument("--freeze-bn", action="store_true",
                    help="keep the BatchNormalization statistics as trained (weights and ranges still adapt)")
    qz.add_argument("--seed", type=int, default=0)
    _add_distribute_arg(qz)
    qz.set_defaults(func=_cmd_quantize)

    x = sub.add_parser("export", help="export a run as TFLite or SavedModel, with metadata and a parity check")
    x.add_argument("run_dir", help="a run directory (float, pruned or quantization-aware)")
    x.add_argument("--out", required=True, help="the .tflite file or the SavedModel directory")
    x.add_argument("--which", default="best", choices=("best", "last"))
    x.add_argument("--format", default="tflite", choices=names.EXPORT_FORMATS)
    x.add_argument("--quantization", default="int8", choices=names.QUANTIZATIONS)
    x.add_argument("--io-dtype", choices=names.IO_DTYPES,
                   help="int8 model input/output type (default uint8)")
    x.add_argument("--output", default="logits", choices=names.EXPORT_OUTPUTS,
                   help="TFLite output: logits at the input size (default); low_res_logits or class_map (argmax in "
                        "the graph) at the model's own stride, ending before its final upsampling (the runner "
                        "upsamples; the metadata says how)")
    x.add_argument("--image-size", type=parse_size, help="input size (default: the run's eval size)")
    x.add_argument("--calibration-split", default="train", help="split the int8 calibration images come from")
    x.add_argument("--calibration-images", type=int, default=100)
    x.add_argument("--verify-split", help="check the export against the Keras model on this split (e.g. val)")
    x.add_argument("--verify-images", type=int, help="at most this many images for --verify-split")
    x.add_argument("--dataset", help="default: the run's dataset")
    x.add_argument("--data-dir")
    x.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    x.add_argument("--seed", type=int, default=0, help="which calibration images")
    fallback = x.add_mutually_exclusive_group()
    fallback.add_argument("--float-fallback", type=_comma_list, metavar="LAYER[,LAYER...]",
                          help="post-training int8: leave these Keras layers in float (tfseg diagnose names the worst)")
    fallback.add_argument("--float-fallback-worst", type=int, metavar="K",
                          help="post-training int8: leave the K worst layers in float, ranked as tfseg diagnose "
                               "does by default (on val images)")
    x.set_defaults(func=_cmd_export)

    b = sub.add_parser("benchmark", help="export a run to every TFLite format; size, mIoU and latency of each")
    b.add_argument("run_dir")
    b.add_argument("--out", help="folder for the files and the table (default RUN_DIR/benchmark)")
    b.add_argument("--split", default="test", help="split every format is scored on (default test)")
    b.add_argument("--formats", nargs="+", choices=names.BENCHMARK_FORMATS, default=list(names.BENCHMARK_FORMATS))
    b.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="LiteRT thread counts to time")
    b.add_argument("--max-images", type=int, help="score on at most this many images")
    b.add_argument("--calibration-images", type=int, default=100, help="training images for int8 calibration")
    b.add_argument("--runs", type=int, default=20, help="timed invocations per format and thread count")
    b.add_argument("--outputs", nargs="+", choices=names.EXPORT_OUTPUTS, default=["logits"],
                   help="what each file outputs (see tfseg export --output; default logits)")
    b.set_defaults(func=_cmd_benchmark)

    g = sub.add_parser("diagnose", help="per-layer error of a run's int8 model against float; float fallback of "
                                        "the worst layers, scored and timed")
    g.add_argument("run_dir", help="a float (or pruned) run; quantization-aware runs have no post-training int8")
    g.add_argument("--out", help="report folder (default RUN_DIR/diagnose)")
    g.add_argument("--split", default="val", help="split the per-layer error is measured on (default val)")
    g.add_argument("--images", type=int, default=32, help="images of --split the error is measured on")
    g.add_argument("--score-splits", nargs="+", metavar="SPLIT",
                   help="splits every choice is scored on (default: --split), e.g. val test")
    g.add_argument("--fallback-worst", type=_comma_counts, default=[1, 3, 5], metavar="K[,K...]",
                   help="leave the K worst layers in float, for each K (default 1,3,5)")
    g.add_argument("--fallback-layers", type=_comma_list, metavar="LAYER[,LAYER...]",
                   help="one more choice: these Keras layers in float")
    g.add_argument("--metric", default=names.DIAGNOSIS_METRICS[0], choices=names.DIAGNOSIS_METRICS,
                   help="how layers are ranked (default rmse_scale: error in output quantization steps)")
    g.add_argument("--calibration-images", type=int, default=100, help="training images for int8 calibration")
    g.add_argument("--max-images", type=int, help="score on at most this many images per split")
    g.add_argument("--threads", type=int, default=1, help="LiteRT threads (scoring and timing)")
    g.add_argument("--runs", type=int, default=20, help="timed invocations per model")
    g.add_argument("--seed", type=int, default=0, help="which calibration and diagnosis images")
    g.set_defaults(func=_cmd_diagnose)

    pf = sub.add_parser("profile", help="where LiteRT spends a run's time: ms, MACs and GMAC/s per block of layers")
    pf.add_argument("run_dir")
    pf.add_argument("--which", default="best", choices=("best", "last"), help="which model of the run (default best)")
    pf.add_argument("--output", default=names.EXPORT_OUTPUTS[0], choices=names.EXPORT_OUTPUTS,
                    help="profile the model as exported with this output (see tfseg export --output)")
    pf.add_argument("--quantizations", type=_comma_list, default=["float32", "int8"],
                    help="comma-separated: float32, int8, float16, dynamic (default float32,int8; a "
                         "quantization-aware run profiles int8 only)")
    pf.add_argument("--threads", type=int, default=1, help="LiteRT threads")
    pf.add_argument("--runs", type=int, default=20, help="profiled invocations (medians)")
    pf.add_argument("--cut", default="blocks", choices=("blocks", "live", "layers"), help="how layers group into rows")
    pf.add_argument("--method", default="profiler", choices=("profiler", "prefix"),
                    help="LiteRT's operator profiler, or timing prefix sub-models")
    pf.add_argument("--calibration-images", type=int, default=16, help="training images for int8 calibration")
    pf.add_argument("--peak", action="store_true", help="also measure the MAC-bound limit and each model's ratio to it")
    pf.set_defaults(func=_cmd_profile)

    e = sub.add_parser("evaluate", help="score a trained run or an exported model at full label resolution")
    e.add_argument("run_dir", metavar="RUN_DIR_OR_EXPORT",
                   help="a run directory, or an exported .tflite file or SavedModel directory (scored as a device "
                        "would run it, on its metadata's dataset)")
    e.add_argument("--which", default="best", choices=("best", "last"), help="a run's best or last model")
    e.add_argument("--split", default="test")
    e.add_argument("--dataset", help="default: the run's (the export's) dataset")
    e.add_argument("--data-dir")
    e.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    e.add_argument("--image-size", type=parse_size, help="model input size (default: the run's)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--overlays", type=int, default=6)
    e.add_argument("--out", help="report directory (default RUN_DIR/eval/SPLIT, or EXPORT.eval/SPLIT)")
    e.set_defaults(func=_cmd_evaluate)

    cb = sub.add_parser("calibrate", help="undo the rare-class bias of a class-weighted run (logit adjustment on val)")
    cb.add_argument("run_dir")
    cb.add_argument("--split", default="val", help="split that chooses the strength (default val; never test)")
    cb.add_argument("--strengths", help="comma-separated strengths s of the offset -s*log(class weight) to try "
                                        "(default 0, 0.125, ..., 1)")
    cb.set_defaults(func=_cmd_calibrate)

    c = sub.add_parser("check-data", help="decode every file of some splits and report the first bad one")
    _add_data_args(c, default_dataset="camvid")
    c.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    c.set_defaults(func=_cmd_check_data)

    lt = sub.add_parser("latency-table", help="measure (or extend) the NAS latency table: every block of a search "
                                              "space, int8 or float, timed alone in LiteRT")
    lt.add_argument("table", help="the table's JSON (created when missing, else extended)")
    lt.add_argument("--input-size", type=parse_size, help="deployment size HxW of a new table (checked on an old one)")
    lt.add_argument("--num-classes", type=int, help="classes of the head (default: the table's)")
    lt.add_argument("--dtype", choices=("int8", "float32"), help="of a new table (default int8)")
    lt.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts of a new table")
    lt.add_argument("--space", help="SearchSpace as JSON text or file (default: the table's, else the default space)")
    lt.add_argument("--key", action="append", default=[], help="one more entry to measure (repeatable)")
    lt.add_argument("--runs", type=int, default=20, help="timed invokes per block and thread count")
    lt.add_argument("--warmup", type=int, default=3)
    lt.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None, help="progress bar (default: auto)")
    lt.set_defaults(func=_cmd_latency_table)

    sr = sub.add_parser("search", help="latency-aware architecture search (FasterSeg-style space, LiteRT latency table)")
    _add_data_args(sr)
    sr.add_argument("--out", required=True, help="search directory (resumes a killed search)")
    sr.add_argument("--space", help="SearchSpace as JSON text or file (default: the default space)")
    sr.add_argument("--proxy-size", type=parse_size, default=(64, 64), help="size the supernet trains at")
    sr.add_argument("--deploy-size", type=parse_size, default=(96, 96), help="size the latency is measured at")
    sr.add_argument("--latency-table", help="table file (default OUT/latency_table.json, measured on demand)")
    sr.add_argument("--latency-threads", type=int, default=1, help="thread count the search optimises (default 1)")
    sr.add_argument("--latency-weight", type=float, default=0.01, help="w of the latency term (FasterSeg 0.01)")
    sr.add_argument("--latency-coefficients", type=float, nargs=3, metavar=("OPS", "PATH", "WIDTHS"),
                    default=[1 / 500, 497 / 500, 2 / 500],
                    help="weights of the decoupled latency terms (default FasterSeg's 1/500 497/500 2/500)")
    sr.add_argument("--latency-balance", type=float, metavar="R",
                    help="at the first architecture step set w so that the latency gradient is R x the "
                         "segmentation loss's (instead of keeping --latency-weight)")
    sr.add_argument("--latency-band", type=float, nargs=2, metavar=("LOW_MS", "HIGH_MS"),
                    help="adapt w after each epoch: doubled above HIGH, halved below LOW")
    sr.add_argument("--batch-size", type=int, default=8)
    sr.add_argument("--epochs", type=int, default=4)
    sr.add_argument("--warmup-epochs", type=int, default=2, help="epochs of weight steps before the search starts")
    sr.add_argument("--lr", type=float, default=0.02, help="SGD learning rate of the supernet's weights")
    sr.add_argument("--arch-lr", type=float, default=3e-4, help="Adam learning rate of the architecture")
    sr.add_argument("--teacher", metavar="RUN_DIR", help="distil this run's logits into the supernet's weight steps")
    sr.add_argument("--lbt", action="store_true", help="learning by teaching (a student taught on held-out images)")
    sr.add_argument("--lbt-student", default="fastseg_tiny", help="zoo model of the LBT student")
    sr.add_argument("--teaching-weight", type=float, default=1.0, help="gamma of the LBT term")
    sr.add_argument("--precise-bn", type=int, default=8, metavar="BATCHES",
                    help="re-estimate the supernet's BN statistics at its argmax widths on this many training "
                         "batches before each validation (0: off)")
    sr.add_argument("--seed", type=int, default=0)
    sr.set_defaults(func=_cmd_search)
    return parser


def _data_error_text(error) -> str | None:
    """The DataError message inside a TF error raised from a tf.data pipeline, if there is one."""
    match = re.search(r"DataError: (.*)", str(error))
    return match.group(1).strip() if match else None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ConfigError, FileNotFoundError) as e:
        print(f"tfseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a DataError raised inside tf.data arrives wrapped in a TF error
        text = _data_error_text(e)
        if text is None:
            raise
        print(f"tfseg {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
