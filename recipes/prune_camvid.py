"""CamVid pruning: iterative L1 filter pruning of the teacher to 75 % of its filters, and magnitude
pruning to 80 % sparsity.

Filter pruning (``tfseg.pipeline.prune``): rounds of --step of the original filters removed,
each followed by --fine-tune-epochs of fine-tuning (by distillation from the unpruned model with
--distill), until --target. After each round: test mIoU at 360x480 (reported only, never used to
choose anything), parameters, MACs and LiteRT latency (1 thread). The published VGG experiment
lost 16 IoU points at 75 %; the goal here is at most 2 mIoU and at least 3x faster.

Magnitude pruning (``--magnitude``): TF-MOT to 80 % sparsity over --magnitude-epochs, stripped,
batch-norm statistics re-estimated (val mIoU also reported with the stale ones); val and test
mIoU before/after, the per-layer sparsity and the gzip-compressed float TFLite size ratio. The
sparse model is kept as ``magnitude_sparse.keras`` in --out.

    python recipes/prune_camvid.py --distill                       # filter pruning of runs/camvid/teacher
    python recipes/prune_camvid.py --magnitude --skip-filters      # magnitude pruning only
    python recipes/prune_camvid.py --latency-only                  # re-time the saved rounds, 1 and 2 threads
    python recipes/prune_camvid.py --skip-filters --recover-epochs 30   # then train the final round longer

Recovery (``--recover-epochs``): the final pruned model trained for that many epochs more with the
source run's own recipe (loss, class weights, crops, augmentation, poly schedule from
--recover-lr), starting from its pruned weights (``TrainConfig.init_from``), into
``<out>-recovered``; resumes if killed. Val picks the epoch; test mIoU at 360x480 is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EVAL_SIZE = (360, 480)


def magnitude_experiment(run_dir: str, out_dir: str, sparsity: float, epochs: int, learning_rate: float,
                         bn_batches: int):
    from tfseg import data as seg_data
    from tfseg.batchnorm import reestimate_batch_norm
    from tfseg.checkpoint import save_model
    from tfseg.evaluate import evaluate
    from tfseg.prune.magnitude import compressed_sizes, format_sparsity, prune_magnitude, pruning_callbacks
    from tfseg.prune.magnitude import sparsity_report, strip
    from tfseg.runs import Run
    from tfseg.train import compile_for_segmentation, make_optimizer

    run = Run.open(run_dir)
    crop = run.crop_size
    model = run.model(size=crop)
    train, val, test = (run.split(split) for split in ("train", "val", "test"))
    augment = run.augment if run.record.get("augment") else None  # {} too: plain crops, as before
    data = seg_data.train_pipeline(train, crop, run.batch_size, augment=augment, seed=run.seed)
    steps = -(-len(train) // run.batch_size) * epochs
    pruned = prune_magnitude(model, sparsity, end_step=steps - 1, skip=("classifier",))
    compile_for_segmentation(pruned, run.num_classes, loss=run.loss(),
                             optimizer=make_optimizer("adam", learning_rate, "constant"))
    pruned.fit(data, epochs=epochs, callbacks=pruning_callbacks(), verbose=2)
    sparse = strip(pruned)

    def at_eval_size(m):  # a copy with m's weights as they are now
        return run.rebuild(m, EVAL_SIZE)

    def miou(sized, split):
        return float(evaluate(sized, split, image_size=EVAL_SIZE, batch_size=4, verbose=0)["miou"])

    # The masks keep changing until the last step, faster than the BN moving averages follow.
    val_stale = miou(at_eval_size(sparse), val)
    if bn_batches:
        reestimate_batch_norm(sparse, data, bn_batches)
    report = sparsity_report(sparse)
    print(format_sparsity(report))
    save_model(sparse, Path(out_dir) / "magnitude_sparse.keras")
    dense_full, sparse_full = at_eval_size(model), at_eval_size(sparse)
    dense_size, sparse_size = compressed_sizes(dense_full), compressed_sizes(sparse_full)
    pruned_rows = [r for r in report if r["sparsity"] > 0]
    return {"sparsity": sparsity, "epochs": epochs, "learning_rate": learning_rate, "bn_batches": bn_batches,
            "pruned_kernel_sparsity": sum(r["weights"] * r["sparsity"] for r in pruned_rows)
            / max(sum(r["weights"] for r in pruned_rows), 1),
            "val_miou_dense": miou(dense_full, val), "val_miou_sparse_stale_bn": val_stale,
            "val_miou_sparse": miou(sparse_full, val),
            "test_miou_dense": miou(dense_full, test), "test_miou_sparse": miou(sparse_full, test),
            "gzip_bytes_dense": dense_size["gzip_bytes"], "gzip_bytes_sparse": sparse_size["gzip_bytes"],
            "gzip_ratio": sparse_size["gzip_bytes"] / dense_size["gzip_bytes"]}


def retime_rounds(run_dir: str, out_dir: str, threads, runs: int, passes: int = 3) -> list[dict]:
    """LiteRT latency of every saved round (float32 TFLite at the run's evaluation size, as the
    pruning run times them): the lowest of ``passes`` medians of ``runs`` invokes.

    The per-round latency of the pruning run is taken between trainings with 10 invokes. Here the
    rounds are timed in turn, ``passes`` times over, so that a burst of load on a shared machine
    hits one pass of every round rather than all of one round.
    """
    from tfseg.checkpoint import write_json
    from tfseg.prune.filters import rebuild_pruned
    from tfseg.prune.iterative import load_rounds
    from tfseg.runs import Run
    from tfseg.tflite import litert_latency, to_tflite_bytes
    from tfseg._keras import keras

    run = Run.open(run_dir)
    size = run.eval_size
    rows = load_rounds(out_dir)
    flatbuffers = []
    for row in rows:
        model = keras.models.load_model(Path(out_dir) / f"round_{row['round']:02d}.keras", compile=False)
        flatbuffers.append(to_tflite_bytes(rebuild_pruned(run.model_name, model, (*size, 3), **run.model_options)))
    medians = {(i, n): [] for i in range(len(rows)) for n in threads}
    for _ in range(passes):
        for i, flatbuffer in enumerate(flatbuffers):
            for n in threads:
                medians[i, n].append(litert_latency(flatbuffer, num_threads=n, runs=runs)["median_ms"])
    for i, row in enumerate(rows):
        for n in threads:
            row[f"latency_ms_{n}t"] = round(min(medians[i, n]), 2)
            row[f"latency_ms_{n}t_passes"] = [round(m, 2) for m in medians[i, n]]
    write_json(Path(out_dir) / "latency.json", {"runs": runs, "passes": passes, "threads": threads, "rounds": rows})
    return rows


def print_rounds(rows, threads) -> None:
    base = rows[0]
    split = next(key for key in base if key.endswith("_miou")).removesuffix("_miou")
    print(f"\n| round | filters removed | {split} mIoU | params (M) | GMACs | "
          + " | ".join(f"LiteRT ms ({n} thread{'s' * (n > 1)}) | speed-up" for n in threads) + " |")
    print("|---:|---:|---:|---:|---:|" + "---:|---:|" * len(threads))
    for r in rows:
        cells = [f"{r['round']}", f"{100 * r['removed']:.0f} %", f"{100 * r[f'{split}_miou']:.2f}",
                 f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.2f}"]
        for n in threads:
            cells += [f"{r[f'latency_ms_{n}t']:.1f}", f"{base[f'latency_ms_{n}t'] / r[f'latency_ms_{n}t']:.2f}x"]
        print("| " + " | ".join(cells) + " |")


def recover(run_dir: str, pruned_dir: str, epochs: int, learning_rate: float) -> dict:
    """Trains the final pruned model of ``pruned_dir`` further with ``run_dir``'s recipe; val and test mIoU."""
    from tfseg import data as seg_data
    from tfseg.evaluate import evaluate
    from tfseg.pipeline import train
    from tfseg.pipeline.train import TrainConfig
    from tfseg.runs import Run

    out = f"{pruned_dir.rstrip('/')}-recovered"
    config = TrainConfig.from_record(Run.open(run_dir).record, out_dir=out, epochs=epochs,
                                     learning_rate=learning_rate, schedule="poly", init_from=pruned_dir)
    recovered = train.run(config)
    best, val = recovered.model(size=recovered.eval_size), recovered.scores(config.val_split)
    test = seg_data.load(config.dataset, "test", **config.data_options)
    scores = evaluate(best, test, image_size=EVAL_SIZE, batch_size=4, out_dir=Path(out) / "eval" / "test", verbose=0)
    return {"out": out, "epochs": epochs, "learning_rate": learning_rate, "val_miou": round(float(val["miou"]), 4),
            "test_miou": round(float(scores["miou"]), 4), "params": best.count_params()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/camvid/teacher")
    parser.add_argument("--out", default="runs/camvid/teacher-filter-pruned")
    parser.add_argument("--step", type=float, default=0.15)
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--distill", action="store_true")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--keep-residual", action="store_true",
                        help="keep the channels tied by residual additions whole (Li et al.'s rule for ResNets)")
    parser.add_argument("--bn-batches", type=int, default=20,
                        help="batches the batch-norm statistics are re-estimated from after each step (0: don't)")
    parser.add_argument("--skip-filters", action="store_true")
    parser.add_argument("--magnitude", action="store_true")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--magnitude-epochs", type=int, default=5)
    parser.add_argument("--latency-only", action="store_true",
                        help="re-time the saved rounds of --out (quiet machine) instead of pruning")
    parser.add_argument("--threads", type=lambda t: [int(n) for n in t.split(",")], default=[1, 2])
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--recover-epochs", type=int, default=0,
                        help="then train the final pruned model this many epochs more (0: don't)")
    parser.add_argument("--recover-lr", type=float, default=1e-3, help="peak learning rate of the recovery (poly)")
    args = parser.parse_args(argv)

    if args.latency_only:
        print_rounds(retime_rounds(args.run, args.out, args.threads, args.latency_runs), args.threads)
        return
    if not args.skip_filters:
        from tfseg.pipeline import prune

        pruned = prune.run(prune.PruneConfig(
            args.run, args.out, step=args.step, target=args.target, fine_tune_epochs=args.fine_tune_epochs,
            distill=args.distill, split="test", learning_rate=args.learning_rate, bn_batches=args.bn_batches,
            prune_residual=not args.keep_residual,
        ))
        print_rounds(pruned.record["rounds"], threads=[1])
    if args.magnitude:
        from tfseg.checkpoint import write_json

        result = magnitude_experiment(args.run, args.out, args.sparsity, args.magnitude_epochs, args.learning_rate,
                                      args.bn_batches)
        print(json.dumps(result, indent=1))
        write_json(Path(args.out) / "magnitude.json", result)
    if args.recover_epochs:
        print(json.dumps(recover(args.run, args.out, args.recover_epochs, args.recover_lr), indent=1))


if __name__ == "__main__":
    main()
