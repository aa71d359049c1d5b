"""The ready pipelines (efm's presets) judged against `accurate` on more pairs than the demo can afford: the verdict of
the README's table at a finer resolution.

    python benchmarks/presets.py [--tiers hard pose] [--num_pairs 200] [--presets fast small] [--json F]

Each preset is built as `efm.load` builds it and evaluated with `efm.evaluate` on the first ``--num_pairs`` pairs of
each tier (the demo's pairs, then more of the same seeds), against `accurate` on the same pairs; it prints the tier's
verdict metric with its 95 % interval, the paired difference with its interval, and the verdict as the demo words it
(within a point, loss, unresolved: pipeline/tiers.py).
"""

from __future__ import annotations

import efm
from data.pairs import TIERS
from helper import ArgumentParser, positive_int, run_cli, writable_location, write_json
from pipeline.evaluation import VERDICT
from pipeline.presets import PRESETS
from pipeline.tiers import verdict


def main(argv: list[str] | None = None) -> list[dict]:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiers", nargs="+", choices=list(TIERS), default=["hard", "pose"])
    p.add_argument("--num_pairs", type=positive_int, default=200)
    p.add_argument("--presets", nargs="+", choices=[n for n, v in PRESETS.items() if v], default=["fast", "small"])
    p.add_argument("--within", type=float, default=0.01, help="the verdict's bound on a loss (AUC)")
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    out = writable_location(args.json, what="--json") if args.json else None
    accurate = efm.load("accurate")
    rows = []
    for name in args.presets:
        pipeline = efm.load(name)
        row = {"preset": name, "variant": PRESETS[name], "num_pairs": args.num_pairs, "tiers": {}}
        for tier in args.tiers:
            summary = efm.evaluate(pipeline, tier, args.num_pairs, against=accurate)
            metric = VERDICT["pose" if tier == "pose" else "homography"]["metric"]
            row["tiers"][tier] = {
                "kind": "pose" if tier == "pose" else "homography",
                metric: summary[metric],
                "intervals": {metric: summary["intervals"][metric]},
                "vs_dense": {metric: summary["vs"][metric]},
            }
            d = summary["vs"][metric]
            print(
                f"{name:8} {tier:5} {metric} {summary[metric]:.3f} [{summary['intervals'][metric][0]:.3f}, "
                f"{summary['intervals'][metric][1]:.3f}]  vs accurate {d['difference']:+.4f} "
                f"[{d['interval'][0]:+.4f}, {d['interval'][1]:+.4f}]",
                flush=True,
            )
        row["verdict"] = verdict(row, {"tiers": args.tiers, "within": args.within})
        print(f"{name}: {row['verdict']['holds']} on {', '.join(args.tiers)} ({args.num_pairs} pairs each)")
        rows.append(row)
    if out:
        write_json(out, rows)
    return rows


if __name__ == "__main__":
    run_cli(main)
