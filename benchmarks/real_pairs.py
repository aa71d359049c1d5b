"""The real tier: matchers on the real ground truth that installs offline (data/real.py), a sanity check beside the
synthetic tiers — too few pairs for intervals.

    python benchmarks/real_pairs.py [--matchers aliked+lightglue xfeat+lighterglue xfeat sift+nn] [--json F]

Per set: graffiti (published homography): precision of the matches within 3 px and the corner error of PoseLib's
homography at 2 px; aloe and motorcycle (ground-truth disparity): the share of matches within 2 px of where the
disparity puts them; chessboard (13 pairs of a rig calibrated from its chessboards): epipolar precision and the median
pose error (max of rotation and translation angle) under PoseLib and OpenCV RANSAC at 1 px. Each matcher at its own
default settings (XFeat at its 4096 keypoints).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data.real import disparity_metrics, real_tier
from helper import ArgumentParser, run_cli, writable_location, write_json
from models.matching import build_matcher, matcher_class
from pipeline.evaluation import FeatureCache, predict
from pipeline.metrics import pair_metrics

MATCHERS = ["aliked+lightglue", "xfeat+lighterglue", "xfeat", "sift+nn"]


def judge(pairs, pair, pred) -> dict[str, Any]:
    """The metrics of one real pair (its ground truth's kind decides which)."""
    if "disparity" in pair.meta:
        return disparity_metrics(pred["keypoints0"], pred["keypoints1"], pred["matches0"], pair.meta["disparity"])
    if pair.kind == "homography":
        return pair_metrics(pair, pred, pred["shape0"], pred["shape1"], method="poselib", ransac_threshold=2.0)
    rows = {m: pair_metrics(pair, pred, pred["shape0"], pred["shape1"], method=m, ransac_threshold=1.0)
            for m in ("poselib", "ransac")}  # fmt: skip
    out = {k: v for k, v in rows["poselib"].items() if k != "epipolar_errors"}
    for m, r in rows.items():
        out[f"pose_error_{m}"] = max(r["error_R"], r["error_t"])
    return out


def run(names: list[str]) -> list[dict[str, Any]]:
    sets = real_tier()
    rows = []
    for name in names:
        matcher, cache = build_matcher(name), FeatureCache()
        for pairs in sets.values():
            for pair in pairs:
                got = judge(pairs, pair, predict(matcher, pairs, pair, cache, matcher.detector_fingerprint()))
                rows.append({"matcher": name, "set": pair.meta["set"], "pair": f"{pair.name0} {pair.name1}", **got})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| matcher | graffiti: precision, corner error (px) | aloe: precision (right / matches) "
             "| motorcycle: precision (right / matches) "
             "| chessboard (13): epipolar precision, median pose error PoseLib / OpenCV (°) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(r["matcher"] for r in rows):
        mine = {s: [r for r in rows if r["matcher"] == name and r["set"] == s] for s in
                ("graffiti", "aloe", "motorcycle", "chessboard")}  # fmt: skip
        g = mine["graffiti"][0]
        stereo = [f"{r['precision']:.3f} ({r['num_correct']} / {r['num_matches']})" for s in ("aloe", "motorcycle")
                  for r in mine[s]]  # fmt: skip
        c = mine["chessboard"]
        pose = "/".join(f"{np.median([r[f'pose_error_{m}'] for r in c]):.2f}" for m in ("poselib", "ransac"))
        lines.append(f"| {name} | {g['precision']:.3f}, {g['corner_error']:.2f} | {stereo[0]} | {stereo[1]} | "
                     f"{np.mean([r['precision'] for r in c]):.3f}, {pose} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--matchers", nargs="+", default=MATCHERS)
    p.add_argument("--json", default=None, help="write the per-pair rows here too")
    args = p.parse_args(argv)
    for name in args.matchers:
        matcher_class(name)  # an unknown name is an error before any work
    if args.json:
        writable_location(args.json, what="--json")
    rows = run(args.matchers)
    print(table(rows))
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    run_cli(main)
