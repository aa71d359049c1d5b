"""Ranking sanity: the zoo's matchers on each tier, beside the published MegaDepth-1500 order, to see whether a tier
ranks matchers as real two-view benchmarks do.

    python benchmarks/ranking.py [--tiers easy hard pose] [--num_pairs 100] [--json ranking.json]

Each matcher at its own default settings (ALIKED+LightGlue 1024 keypoints, XFeat 4096), on the validation photos'
pairs of each tier; the reference is dense ALIKED+LightGlue, each difference paired with its 95 % bootstrap interval
over photos (homography tiers) or scenes (pose tier). Homography tiers: AUC@3px under PoseLib at 2 px. Pose tier:
AUC@5/10/20° under PoseLib at 1 px and under OpenCV RANSAC at 1 px (the official estimator, which glue-factory's
published OpenCV column uses).
"""

from __future__ import annotations

from typing import Any

from data.pairs import TIERS, make_pairs
from helper import ArgumentParser, positive_int, run_cli, writable_location, write_json
from models.matching import build_matcher, matcher_class
from pipeline.evaluation import PROTOCOL_AUCS, VERDICT, FeatureCache, evaluate, reestimate
from pipeline.metrics import paired_difference, summarize

MATCHERS = ["aliked+lightglue", "xfeat+lighterglue", "xfeat", "sift+nn"]
# MegaDepth-1500 AUC@5/10/20° as published (glue-factory README, OpenCV RANSAC / PoseLib; XFeat README at 640 px)
PUBLISHED = {
    "aliked+lightglue": "52.3/68.8/81.0 (OpenCV), 66.4/79.0/87.5 (PoseLib), glue-factory",
    "xfeat+lighterglue": "44.4/61.0/74.6 at 640 px, against SuperPoint+LightGlue's 46.9/63.3/76.2 there, XFeat README",
}


def run_tier(tier: str, names: list[str], num_pairs: int) -> list[dict[str, Any]]:
    pairs = make_pairs(source="photos", split="val", num_pairs=num_pairs, tier=tier)
    pose = pairs[0].kind == "pose"
    verdict = VERDICT[pairs[0].kind]
    estimators = {"poselib": verdict["ransac_threshold"], **({"ransac": 1.0} if pose else {})}
    metrics = PROTOCOL_AUCS["pose"] if pose else (verdict["metric"],)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in names:
        pred = evaluate(build_matcher(name), pairs, FeatureCache(), desc=f"{tier} {name}")["predictions"]
        named = lambda rows: [{"name0": q.name0, "name1": q.name1, **r} for q, r in zip(pairs, rows)]  # noqa: E731
        results[name] = {m: named(reestimate(pairs, pred, method=m, ransac_threshold=t)) for m, t in estimators.items()}
    rows = []
    for name, by_estimator in results.items():
        for estimator, got in by_estimator.items():
            s = summarize(got, None)
            row = {"tier": tier, "matcher": name, "estimator": estimator, "precision": s["precision"],
                   **{m: s[m] for m in metrics}}  # fmt: skip
            if name != names[0]:
                d = paired_difference(got, results[names[0]][estimator], by="name0")[verdict["metric"]]
                row["difference"], row["interval"] = d["difference"], d["interval"]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiers", nargs="+", choices=list(TIERS), default=["hard", "pose"])
    p.add_argument("--matchers", nargs="+", default=MATCHERS, help="the first is the reference")
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for name in args.matchers:
        matcher_class(name)
    if args.json:
        writable_location(args.json, what="--json")
    rows = [r for tier in args.tiers for r in run_tier(tier, args.matchers, args.num_pairs)]
    print("| tier | matcher | estimator | precision | AUC | vs first [95 % interval] | published MegaDepth-1500 |")
    print("|---|---|---|---:|---|---|---|")
    for r in rows:
        aucs = "/".join(f"{r[k]:.3f}" for k in r if k.startswith("auc@"))
        diff = f"{r['difference']:+.3f} [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]" if "interval" in r else "—"
        print(f"| {r['tier']} | {r['matcher']} | {r['estimator']} | {r['precision']:.3f} | {aucs} | {diff} | "
              f"{PUBLISHED.get(r['matcher'], '—') if r['estimator'] == 'poselib' else ''} |")  # fmt: skip
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    run_cli(main)
