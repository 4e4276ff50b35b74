"""How well does the NAS latency table predict whole searched nets? (issue 21's latency goal)

Builds (or reuses) the int8 LiteRT latency table of the default search space at 360x480, draws a
pool of random derived nets, keeps ``--nets`` of them at evenly spaced predicted latencies (so they
span the space's range), converts each whole net to int8 and times it in LiteRT (interleaved, 1 and
2 threads), and compares with the table sum. An affine correction is fitted on ``--calibration-nets``
other random nets (never on the nets it is judged on) and stored in the table.

    python recipes/nas_latency_check.py                        # table in runs/nas/latency-360x480-int8.json
    python recipes/nas_latency_check.py --nets 12 --seed 1

Prints the per-net table and the mean absolute error (% of measured), raw and corrected, at each
thread count; writes docs/results/nas_latency_check.json. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tfseg import models
from tfseg.nas.arch_params import random_architecture
from tfseg.nas.expected_latency import LatencyModel
from tfseg.nas.latency_table import LatencyTable, cell_key, is_identity, keys_for_space
from tfseg.nas.space import SearchSpace, space_document
from tfseg.tflite import litert_latencies, random_images, to_tflite_bytes
from tfseg.xnnpack import delegation

NUM_CLASSES = 11
RESULTS = Path("docs/results/nas_latency_check.json")


def op_costs(table, space) -> dict:
    """Each op's table cost at 1/8 and the widest width (identity skip: 0), to rank ops by cost."""
    width = space.cell_width_choices(8)[-1]
    return {op: 0.0 if is_identity(key := cell_key(op, 8, 1, width, width)) else table.lookup(key)
            for op in space.ops}


def tilted_pool(space, costs, size: int, rng) -> list:
    """``size`` random nets, each drawn at a uniform random tilt towards cheap or costly choices, so the
    pool covers the space's latency range instead of bunching in its middle (uniform choices average out)."""
    return [random_architecture(space, rng, tilt=float(rng.uniform(-1, 1)), op_costs=costs) for _ in range(size)]


def spread_sample(candidates, predict, count: int) -> list:
    """``count`` of ``candidates`` at evenly spaced predicted latencies."""
    ranked = sorted((predict(arch), i, arch) for i, arch in enumerate(candidates))
    picks = np.linspace(0, len(ranked) - 1, count).round().astype(int)
    return [ranked[i][2] for i in picks]


def measure_nets(archs, size, threads, runs: int) -> list:
    """Whole nets converted to int8 (int8 I/O, as the table's blocks) and timed in interleaved rounds."""
    flatbuffers, partitions = {}, []
    for index, arch in enumerate(archs):
        model = models.build("searched", (*size, 3), NUM_CLASSES, architecture=arch)
        flatbuffers[str(index)] = to_tflite_bytes(model, "int8", random_images((*size, 3), 2), io_dtype="int8")
        partitions.append(delegation(flatbuffers[str(index)])["partitions"])
    timed = {count: litert_latencies(flatbuffers, count, runs, warmup=3) for count in threads}
    return [{"partitions": partitions[i], **{f"ms_{t}": timed[t][str(i)]["median_ms"] for t in threads},
             **{f"p90_{t}": timed[t][str(i)]["p90_ms"] for t in threads}} for i in range(len(archs))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", default="runs/nas/latency-360x480-int8.json")
    parser.add_argument("--size", default="360x480")
    parser.add_argument("--nets", type=int, default=10)
    parser.add_argument("--calibration-nets", type=int, default=5)
    parser.add_argument("--pool", type=int, default=400)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", help="SearchSpace as JSON text or file (default: the default space)")
    parser.add_argument("--results", default=str(RESULTS), help=f"where the report goes (default {RESULTS})")
    args = parser.parse_args(argv)
    size = tuple(int(s) for s in args.size.split("x"))
    space = SearchSpace.from_dict(space_document(args.space)) if args.space else SearchSpace()
    threads = (1, 2)
    start = time.time()
    path = Path(args.table)
    table = (LatencyTable.load(path) if path.exists() else
             LatencyTable(size, NUM_CLASSES, "int8", threads, space=space, path=path, runs=args.runs))
    table.check_compatible(size, "int8", num_classes=NUM_CLASSES, space=space)
    table.ensure(keys_for_space(space, NUM_CLASSES))
    table_seconds = time.time() - start
    rng = np.random.default_rng(args.seed)
    latency = {t: LatencyModel(table, space, NUM_CLASSES, threads=t) for t in threads}
    costs = op_costs(table, space)
    nets = spread_sample(tilted_pool(space, costs, args.pool, rng), lambda a: latency[1].predict(a, corrected=False),
                         args.nets)
    calibration = tilted_pool(space, costs, args.calibration_nets, rng)
    measured = measure_nets(nets + calibration, size, threads, args.runs)
    report = {"table": str(path), "space": space.to_dict(), "table_meta": {k: v for k, v in table.meta.items() if k != "corrections"},
              "table_seconds": round(table_seconds, 1), "summary": {},
              "nets": [{"architecture": arch.to_dict(), "partitions": m["partitions"]} for arch, m in zip(nets, measured)]}
    for t in threads:
        model = latency[t]
        record = model.fit_correction([(a, m[f"ms_{t}"]) for a, m in zip(calibration, measured[len(nets):])])
        truth = np.array([m[f"ms_{t}"] for m in measured[:len(nets)]])
        raw = np.array([model.predict(arch, corrected=False) for arch in nets])
        corrected = np.array([model.predict(arch) for arch in nets])
        report["summary"][t] = {"mae_pct_raw": float(np.mean(np.abs(raw - truth) / truth) * 100),
                                "mae_pct_corrected": float(np.mean(np.abs(corrected - truth) / truth) * 100),
                                "worst_pct_raw": float(np.max(np.abs(raw - truth) / truth) * 100),
                                "pearson": float(np.corrcoef(raw, truth)[0, 1]),
                                "span": float(truth.max() / truth.min()), "correction": record}
        for entry, m, r, c in zip(report["nets"], truth, raw, corrected):
            entry.update({f"measured_ms_{t}": float(m), f"table_sum_ms_{t}": float(r), f"corrected_ms_{t}": float(c)})
    table.save()
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"\ntable: {len(table.entries)} entries ({table_seconds:.0f} s), {table.meta['machine']}, "
          f"{table.meta['runtime']}\n")
    print("| net | partitions | " + " | ".join(f"{t} thr: measured / table / corrected ms" for t in threads) + " |")
    print("|---:|---:|" + "---:|" * len(threads))
    for i, entry in enumerate(report["nets"]):
        cells = " | ".join(f"{entry[f'measured_ms_{t}']:.2f} / {entry[f'table_sum_ms_{t}']:.2f} / "
                           f"{entry[f'corrected_ms_{t}']:.2f}" for t in threads)
        print(f"| {i} | {entry['partitions']} | {cells} |")
    for t, s in report["summary"].items():
        print(f"\n{t} thread(s): span {s['span']:.2f}x, MAE raw {s['mae_pct_raw']:.1f} % (worst {s['worst_pct_raw']:.1f} %, "
              f"Pearson {s['pearson']:.3f}), corrected {s['mae_pct_corrected']:.1f} % "
              f"(a {s['correction']['a']:.3f}, b {s['correction']['b']:.3f} ms from {s['correction']['nets']} other nets)")


if __name__ == "__main__":
    sys.exit(main())
