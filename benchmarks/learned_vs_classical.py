"""Learned vs classical matchers on every pair set with ground truth this machine has, and HPatches if given.

    python benchmarks/learned_vs_classical.py [--matchers aliked+lightglue sift+nn] [--hpatches DIR]

Pair sets:
- sample: seeded homography warps (640×480) of the photographs shipped with scikit-image (the demo's pairs);
- opencv: the same warps of OpenCV's natural photos, none of them in the sample set (never tuned on);
- graf: the Oxford graffiti scene graf1 -> graf3 (800×640, about 40° of viewpoint change) against its published
  homography H1to3p, at full resolution (the last two need OpenCV's sample data: ``apt-get install opencv-doc``
  or OPENCV_SAMPLES_DIR);
- hpatches (with ``--hpatches DIR``, downloaded there if missing): 540 pairs of 108 real planar scenes, resized to
  640 px, split into viewpoint (v) and illumination (i) scenes as the papers report them.

Each matcher is evaluated once per set; the homography is then estimated again from the same matches with
OpenCV RANSAC / MAGSAC at several inlier thresholds, and the row "best" gives each matcher the estimator that
suits it (glue-factory's ``ransac_th=-1`` protocol), next to the project's default (RANSAC, 3 px).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from data.hpatches import HPatchesPairs, fetch_hpatches
from data.images import opencv_samples_dir
from data.pairs import FilePairs, Pair, PairSet, make_pairs, read_homography_file
from helper import ArgumentParser, InputError, keypoint_limit, positive_int, run_cli
from models.matching import build_matcher
from pipeline.evaluation import evaluate, reestimate
from pipeline.metrics import summarize

ESTIMATORS = [("ransac", t) for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)] + [("magsac", t) for t in (1.0, 2.0, 3.0)]


def graffiti_pairs() -> FilePairs:
    """graf1 -> graf3 of the Oxford affine set with its published homography, at the stored resolution."""
    folder = opencv_samples_dir()
    return FilePairs([Pair("graf1.png", "graf3.png", H=read_homography_file(folder / "H1to3p.xml"))], folder, [-1])


def pair_sets(args: argparse.Namespace) -> dict[str, PairSet]:
    sets: dict[str, PairSet] = {"sample": make_pairs(num_pairs=args.num_pairs)}
    try:
        sets["opencv"] = make_pairs(source="opencv", num_pairs=args.num_unseen)
        sets["graf"] = graffiti_pairs()
    except InputError as e:
        print(f"skipping opencv and graf: {e}")
    if args.hpatches:
        sets["hpatches"] = HPatchesPairs(fetch_hpatches(args.hpatches))
    return sets


def groups(name: str, pairs: PairSet) -> dict[str, list[int]]:
    """Row indices of a set, and of its viewpoint / illumination halves for HPatches."""
    out = {name: list(range(len(pairs)))}
    if name == "hpatches":
        for kind in ("v", "i"):
            out[f"hpatches-{kind}"] = [i for i, p in enumerate(pairs) if p.meta["scene"].startswith(f"{kind}_")]
    return out


def line(group: str, matcher: str, estimator: str, s: dict) -> str:
    aucs = "/".join(f"{s[f'auc@{t}px']:.3f}" for t in (1, 3, 5, 10))
    return (
        f"{group:12} {matcher:18} {estimator:16} {s['precision']:9.3f} {s['recall']:6.3f}  {aucs}  "
        f"{s['failures']:8d} {s['median_corner_error']:10.2f} {s['num_correct']:8.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--matchers", nargs="+", default=["aliked+lightglue", "sift+nn"])
    p.add_argument("--num_pairs", type=positive_int, default=100, help="sample pairs")
    p.add_argument("--num_unseen", type=positive_int, default=30, help="pairs of OpenCV's photos")
    p.add_argument("--hpatches", default=None, metavar="DIR", help="HPatches folder (downloaded there if missing)")
    p.add_argument("--max_keypoints", type=keypoint_limit, default=1024)
    p.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = pair_sets(args)
    print(
        f"{'set':12} {'matcher':18} {'estimator':16} precision recall  AUC@1/3/5/10px          failures "
        f"median err  correct"
    )
    for set_name, pairs in sets.items():
        for name in args.matchers:
            matcher = build_matcher(name, {"detector": {"max_keypoints": args.max_keypoints}})
            result = evaluate(matcher, pairs, desc=f"{set_name} {name}")
            runs = {
                (m, t): reestimate(pairs, result["predictions"], method=m, ransac_threshold=t) for m, t in ESTIMATORS
            }
            for group, index in groups(set_name, pairs).items():
                print(line(group, name, "ransac 3px", summarize([result["rows"][i] for i in index])))
                scores = {k: summarize([rows[i] for i in index]) for k, rows in runs.items()}
                (m, t), best = max(scores.items(), key=lambda kv: np.mean([kv[1][f"auc@{a}px"] for a in (1, 3, 5)]))
                print(line(group, name, f"best {m} {t:g}", best))


if __name__ == "__main__":
    run_cli(main)
