"""How many validation pairs a verdict needs: the half-width of the paired AUC@3px interval (variant minus dense)
and of the unpaired one, against the number of pairs, for a few compressed variants of the demo's matcher, under
PoseLib's LO-RANSAC (the demo's estimator) and OpenCV's RANSAC.

    python benchmarks/val_size.py [--source photos] [--num_pairs 200] [--steps 50 100 150 200]

Every model is evaluated once on the largest set; the first k pairs of it are the set of size k (the demo's val
pairs are the first k of the same seeded sequence). Detector outputs are computed once and shared: the variants
compress only the matcher, as the demo's do.
"""

from __future__ import annotations

import copy

from data.pairs import make_pairs
from helper import ArgumentParser, float_in, positive_int, run_cli
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.evaluation import FeatureCache, evaluate, reestimate
from pipeline.metrics import intervals, paired_difference, summarize
from pruning.fine_grained import prune_fine_grained
from quantization.kmeans import quantize_kmeans


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matcher", default="aliked+lightglue")
    p.add_argument("--source", default="photos")
    p.add_argument("--val_fraction", type=float_in(0.01, 0.99), default=0.2)
    p.add_argument("--num_pairs", type=positive_int, default=200)
    p.add_argument("--steps", type=positive_int, nargs="+", default=[25, 50, 100, 150, 200])
    p.add_argument("--keypoints", type=positive_int, default=512)
    p.add_argument("--estimators", nargs="+", default=["poselib:2", "ransac:3"], help="METHOD:THRESHOLD (px)")
    args = p.parse_args(argv)

    pairs = make_pairs(source=args.source, split="val", val_fraction=args.val_fraction, num_pairs=args.num_pairs)
    dense = build_matcher(args.matcher, {"detector": {"max_keypoints": args.keypoints}, "matcher": EVERY_LAYER})
    variants = {"dense": dense}
    for sparsity in (0.3, 0.5):
        m = copy.deepcopy(dense)
        prune_fine_grained(m.matcher, {"*": sparsity})
        variants[f"fine-grained {sparsity:.0%}"] = m
    for bits in (4, 3):
        m = copy.deepcopy(dense)
        quantize_kmeans(m.matcher, {"*": bits})
        variants[f"kmeans {bits}-bit"] = m
    cache = FeatureCache()
    predictions = {name: evaluate(m, pairs, cache, desc=name)["predictions"] for name, m in variants.items()}
    print(f"{args.source} val split: {len({p.name0 for p in pairs})} photos, {len(pairs)} pairs")
    print(f"{'estimator':<11} {'variant':<18} {'pairs':>5} {'AUC@3px':>8} {'±unpaired':>10} {'Δ to dense':>11} "
          f"{'±paired':>8}  paired 95 %")  # fmt: skip
    for spec in args.estimators:
        method, threshold = spec.split(":")
        rows = {
            name: [
                {"name0": q.name0, "name1": q.name1, **r}
                for q, r in zip(pairs, reestimate(pairs, pred, method=method, ransac_threshold=float(threshold)))
            ]
            for name, pred in predictions.items()
        }
        for name, r in rows.items():
            for k in args.steps:
                if k > len(r) or name == "dense":
                    continue
                lo, hi = intervals(r[:k])["auc@3px"]
                d = paired_difference(r[:k], rows["dense"][:k])["auc@3px"]
                half = (d["interval"][1] - d["interval"][0]) / 2
                print(
                    f"{spec:<11} {name:<18} {k:>5} {summarize(r[:k], None)['auc@3px']:>8.3f} {(hi - lo) / 2:>10.3f} "
                    f"{d['difference']:>+11.3f} {half:>8.3f}  [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}]"
                )


if __name__ == "__main__":
    run_cli(main)
