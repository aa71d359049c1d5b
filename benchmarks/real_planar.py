"""Real photographs with a published ground truth, and synthetic warps of photographs the project never tuned on.

    python benchmarks/real_planar.py [--matchers aliked+lightglue sift+nn] [--num_pairs 30]

Needs OpenCV's sample data (Debian/Ubuntu: ``apt-get install opencv-doc``; or OPENCV_SAMPLES_DIR):
1. the Oxford graffiti scene, graf1 -> graf3 (800×640, about 40° of viewpoint change), against its published
   homography H1to3p, at full resolution: corner error, precision and matches per matcher;
2. seeded homography warps (640×480) of OpenCV's natural photos, none of which is in the sample set:
   precision, recall and AUC of the corner error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.images import opencv_samples_dir  # noqa: E402
from data.pairs import FilePairs, Pair, read_homography_file  # noqa: E402
from evaluate import evaluate, synthetic_pairs  # noqa: E402
from helper import run_cli  # noqa: E402
from models.matching import build_matcher  # noqa: E402


def graffiti_pairs() -> FilePairs:
    """graf1 -> graf3 of the Oxford affine set with its published homography, at the stored resolution."""
    folder = opencv_samples_dir()
    return FilePairs([Pair("graf1.png", "graf3.png", H=read_homography_file(folder / "H1to3p.xml"))], folder, [-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--matchers", nargs="+", default=["aliked+lightglue", "sift+nn"])
    p.add_argument("--num_pairs", type=int, default=30)
    p.add_argument("--max_keypoints", type=int, default=1024)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    real, unseen = graffiti_pairs(), synthetic_pairs("opencv", num_pairs=args.num_pairs)
    print(f"{'matcher':18} | graf1->3: corner err px  precision  matches | unseen photos ({len(unseen)} pairs): "
          f"precision  recall  auc@1/3/5px  failures")
    for name in args.matchers:
        matcher = build_matcher(name, {"detector": {"max_keypoints": args.max_keypoints}})
        g = evaluate(matcher, real, progress=False)["rows"][0]
        s = evaluate(matcher, unseen, desc=name)["summary"]
        print(f"{name:18} | {g['corner_error']:23.2f}  {g['precision']:9.3f}  {g['num_matches']:7d} | "
              f"{s['precision']:41.3f}  {s['recall']:6.3f}  {s['auc@1px']:.3f}/{s['auc@3px']:.3f}/{s['auc@5px']:.3f}"
              f"  {s['failures']:8d}")


if __name__ == "__main__":
    run_cli(main)
