"""CamVid architecture search (issue 21): search, retrain the derived net, place it among the students.

For each variant (``plain``: the latency-aware search; ``lbt``: with learning by teaching) and
search seed, searches the default space on CamVid's train split (half for the supernet's weights,
half for the architecture; with LBT a fifth held out as unlabeled images), at a proxy size, against
the int8 LiteRT latency table at 360x480 (1 thread, built by ``recipes/nas_latency_check.py`` or on
demand). The derived net is then trained from random initialisation with distillation from the
teacher under the hand-designed students' schedule (``recipes/students_camvid.py``: 30 epochs of
288x384 crops, batch 8, Adam 1e-3 poly, precise BN, val picks the epoch). Test mIoU is scored once
per run, at 360x480.

The Pareto step times every architecture (hand-designed students and searched nets) as int8 at
360x480 in the same interleaved LiteRT rounds and plots test mIoU against latency.

    python recipes/nas_camvid.py                                  # both variants, seeds 0 1, retrain, plot
    python recipes/nas_camvid.py --variants plain --seeds 0 --no-retrain
    python recipes/nas_camvid.py --pareto-only                    # re-time and re-plot what is there

Searches and trainings resume when killed (runs/camvid/nas/VARIANT_seedN, .../retrain). Figures go
to ``docs/results/camvid_nas.json`` and ``docs/results/camvid_nas_pareto.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from distill_camvid import test_miou
from students_camvid import AUGMENT, DEEPLABV3PLUS, LRASPP, figures, merge_result, train_student

RESULTS = Path("docs/results/camvid_nas.json")
STUDENT_RESULTS = Path("docs/results/camvid_students.json")
PARETO_PNG = Path("docs/results/camvid_nas_pareto.png")
DEPLOY_SIZE = (360, 480)
# The from-scratch student's best distillation pair (fastseg_tiny, docs/benchmarks.md "CamVid
# distillation"): the searched nets start from random weights too.
RETRAIN_LOSSES = "cwd+ace"
# fastseg_tiny's figures from the distillation ablation (same schedule; its runs are not kept, so
# they are quoted from docs/benchmarks.md rather than re-read): test mIoU without and with cwd+ace.
FASTSEG_TINY_QUOTED = {"fastseg_tiny, random init": 0.4191, "fastseg_tiny, random init + CWD + ACE": 0.4377}
HAND_ARCHITECTURES = {"lraspp": LRASPP, "deeplabv3plus": DEEPLABV3PLUS, "fastseg_tiny": ("fastseg_tiny", {})}


# --balanced: equal weights of the decoupled ops / path / widths terms and w set at the first
# architecture step so that the latency gradient matches the segmentation loss's. With FasterSeg's
# (1, 497, 2) / 500 the path term outweighs the op and width terms 250-500x, and on this space the
# op and width choices needed w ~ 200-650 before the latency term moved them (docs/benchmarks.md).
BALANCED = {"latency_coefficients": (1 / 3, 1 / 3, 1 / 3), "latency_balance": 1.0}


def row_name(variant: str, args) -> str:
    return f"searched_{variant}{'_balanced' if args.balanced else ''}"


def search_dir(args, variant: str, seed: int) -> Path:
    return Path(args.out) / f"{row_name(variant, args).removeprefix('searched_')}_seed{seed}"


def run_search(variant: str, seed: int, args) -> Path:
    """One search (resumes a killed one); returns its directory."""
    from tfseg.pipeline import search

    out = search_dir(args, variant, seed)
    config = search.SearchConfig(
        out_dir=str(out), dataset="camvid", data_options={"root": args.camvid} if args.camvid else {},
        proxy_size=tuple(args.proxy_size), deploy_size=DEPLOY_SIZE, latency_table=args.table,
        latency_band=tuple(args.band), batch_size=8, epochs=args.epochs, warmup_epochs=args.warmup_epochs,
        augment=AUGMENT, teacher_run=args.teacher if args.distill_search else None,
        lbt=variant == "lbt", seed=seed, **(BALANCED if args.balanced else {}))
    search.run(config, verbose=2)
    return out


def retrain(search_out: Path, architecture: dict, seed: int, args) -> Path:
    """The derived net trained with the students' schedule and distillation; returns the run directory.
    The architecture comes from the results file, so a retrain needs no search directory."""
    out = search_out / "retrain"
    arch_file = search_out / "searched_architecture.json"
    if not arch_file.exists():
        arch_file.parent.mkdir(parents=True, exist_ok=True)
        arch_file.write_text(json.dumps(architecture, indent=1) + "\n")
    schedule = argparse.Namespace(**{**vars(args), "epochs": args.retrain_epochs, "weights": None})
    train_student(out, "searched", {"architecture": str(arch_file)}, False, RETRAIN_LOSSES, seed, schedule)
    return out


def search_summary(search_out: Path) -> dict:
    """What the results file keeps of a search: its time, the derived net, and per epoch the
    predicted ms, w and skip share of the argmax net and the supernet's val mIoU."""
    from tfseg.pipeline import search

    record = search.read_record(search_out)
    return {"search_seconds": record.get("search_seconds"), "predicted_ms": record.get("predicted_ms"),
            "architecture_epoch": record.get("architecture_epoch"), "latency_band": record.get("latency_band"),
            "latency_coefficients": record.get("latency_coefficients"), "latency_balance": record.get("latency_balance"),
            "epochs": record.get("epochs_run"), "architecture": json.loads((search_out / "architecture.json").read_text()),
            "search_history": [{key: h[key] for key in ("epoch", "predicted_ms", "w", "skip_op_share")}
                               for h in search.read_history(search_out)],
            "supernet_val_miou": [round(v, 4) for v in search.supernet_val_miou(search_out).values()]}


def pareto_points(args) -> list:
    """Every hand-designed student row and every retrained searched net, with its architecture's
    int8 LiteRT latency at 360x480 (1 and 2 threads), timed together."""
    from tfseg import models
    from tfseg.tflite import litert_latencies, random_images, to_tflite_bytes

    students = json.loads(STUDENT_RESULTS.read_text()) if STUDENT_RESULTS.exists() else {}
    searched = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    builds = dict(HAND_ARCHITECTURES)
    searched = {row: {seed: r for seed, r in seeds.items() if "test_miou" in r} for row, seeds in searched.items()}
    for row, seeds in searched.items():
        for seed, result in seeds.items():
            builds[f"{row}_seed{seed}"] = ("searched", {"architecture": result["architecture"]})
    flatbuffers = {}
    for name, (model, options) in builds.items():
        net = models.build(model, (*DEPLOY_SIZE, 3), 11, **options)
        flatbuffers[name] = to_tflite_bytes(net, "int8", random_images((*DEPLOY_SIZE, 3), 2), io_dtype="int8")
    timed = {t: litert_latencies(flatbuffers, t, args.runs, warmup=3) for t in (1, 2)}

    def ms(name, threads):
        return timed[threads][name]["median_ms"]

    points = []
    for row, seeds in students.items():
        arch = next(name for name in HAND_ARCHITECTURES if row.startswith(name))
        points.append({"label": row, "group": "hand-designed (ImageNet or scratch)", "architecture": arch,
                       "miou": statistics.mean(r["test_miou"] for r in seeds.values()), "seeds": sorted(seeds),
                       "latency_ms": ms(arch, 1), "latency_ms_2": ms(arch, 2)})
    for title, miou in FASTSEG_TINY_QUOTED.items():
        points.append({"label": title, "group": "hand-designed (ImageNet or scratch)", "architecture": "fastseg_tiny",
                       "miou": miou, "seeds": ["0"], "quoted": True,
                       "latency_ms": ms("fastseg_tiny", 1), "latency_ms_2": ms("fastseg_tiny", 2)})
    for row, seeds in searched.items():
        for seed, result in seeds.items():
            name = f"{row}_seed{seed}"
            points.append({"label": name, "group": "searched (random init + CWD + ACE)", "architecture": name,
                           "miou": result["test_miou"], "seeds": [seed], "predicted_ms": result.get("predicted_ms"),
                           "latency_ms": ms(name, 1), "latency_ms_2": ms(name, 2)})
    return points


def print_pareto(points: list) -> None:
    from tfseg.report import pareto_front, plot_pareto

    front = {p["label"] for p in pareto_front(points)}
    print("\n| net | test mIoU | int8 1 / 2 threads (ms) | predicted (ms) | on the front |")
    print("|---|---:|---:|---:|:---:|")
    for p in sorted(points, key=lambda p: p["latency_ms"]):
        predicted = f"{p['predicted_ms']:.2f}" if p.get("predicted_ms") else ""
        print(f"| {p['label']}{' (quoted)' if p.get('quoted') else ''} | {100 * p['miou']:.2f} | "
              f"{p['latency_ms']:.2f} / {p['latency_ms_2']:.2f} | {predicted} | {'yes' if p['label'] in front else ''} |")
    hand = [p for p in points if not p["label"].startswith("searched")]
    for p in points:
        if p["label"].startswith("searched"):
            better = [h for h in hand if h["latency_ms"] <= p["latency_ms"] and h["miou"] >= p["miou"]]
            if better:
                gap = min(100 * (h["miou"] - p["miou"]) for h in better)
                print(f"{p['label']}: dominated by {', '.join(h['label'] for h in better)} "
                      f"(needs +{gap:.2f} mIoU to reach the front at its latency)")
            else:
                print(f"{p['label']}: on the front (no hand-designed student both faster and more accurate)")
    PARETO_PNG.with_suffix(".json").write_text(json.dumps(points, indent=1, default=str) + "\n")
    plot_pareto(points, PARETO_PNG, title="CamVid test mIoU vs int8 LiteRT latency (int8 I/O, full-resolution logits), 360x480, 1 thread")
    print(f"\n{PARETO_PNG}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=["plain", "lbt"], default=["plain", "lbt"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--teacher", default="runs/camvid/teacher")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--out", default="runs/camvid/nas")
    parser.add_argument("--table", default="runs/nas/latency-360x480-int8.json")
    parser.add_argument("--proxy-size", nargs=2, type=int, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--band", nargs=2, type=float, default=[6.0, 7.0], metavar=("LOW", "HIGH"),
                        help="target band of predicted int8 ms at 360x480, 1 thread")
    parser.add_argument("--epochs", type=int, default=40, help="search epochs")
    parser.add_argument("--warmup-epochs", type=int, default=15)
    parser.add_argument("--balanced", action="store_true",
                        help="equal latency-term weights and w balanced at the first architecture step")
    parser.add_argument("--distill-search", action="store_true", help="distil the teacher into the supernet too")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--pareto-only", action="store_true")
    parser.add_argument("--no-pareto", action="store_true")
    parser.add_argument("--runs", type=int, default=30, help="timed invokes per net and thread count")
    parser.add_argument("--retrain-epochs", type=int, default=30)
    parser.add_argument("--precise-bn", type=int, default=16)
    args = parser.parse_args(argv)
    if not args.pareto_only:
        for seed in args.seeds:
            for variant in args.variants:
                row = row_name(variant, args)
                recorded = json.loads(RESULTS.read_text()).get(row, {}).get(str(seed), {}) if RESULTS.exists() else {}
                if "architecture" not in recorded:  # searched here, recorded at once: a retrain elsewhere needs only the file
                    out = run_search(variant, seed, args)
                    recorded = search_summary(out)
                    merge_result(row, seed, recorded, RESULTS)
                print(f"{row} seed {seed}: searched in {recorded['search_seconds']:.0f} s, predicted "
                      f"{recorded['predicted_ms']:.2f} ms", flush=True)
                if args.no_retrain or "test_miou" in recorded:
                    continue
                run_dir = retrain(search_dir(args, variant, seed), recorded["architecture"], seed, args)
                merge_result(row, seed, {**recorded, **figures(run_dir, args.camvid)}, RESULTS)
    if not args.no_pareto:
        print(f"teacher test mIoU {100 * test_miou(Path(args.teacher), args.camvid):.2f}")
        print_pareto(pareto_points(args))


if __name__ == "__main__":
    sys.exit(main())
