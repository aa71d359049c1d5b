"""Controls of the accuracy instrument: on each tier of pairs, changes known to cost a little accuracy (positive
controls) must be flagged — their paired interval to the dense pipeline excludes 0 — and changes known to be neutral
(negative controls) must not. A tier that flags no positive control cannot see a loss; one that flags a negative
control sees losses that are not there. A positive control counts as flagged only as a loss (its interval wholly
below 0).

    python benchmarks/controls.py [--tiers easy hard] [--num_pairs 100] [--json controls.json]

The dense pipeline is the stock ALIKED+LightGlue (1024 keypoints, LightGlue's shipped adaptive depth and width).
Positive controls: LightGlue's depth confidence 0.8 and width confidence 0.95 (it stops sooner, drops more points);
512 keypoints instead of 1024; LightGlue's weights in 4-bit k-means without finetuning. Negative controls: the same
pipeline evaluated again from a cold detector cache; the pipeline saved and reloaded (bit-exact). Accuracy: AUC@3px
of the corner error under PoseLib LO-RANSAC at 2 px on the validation photos' pairs of each tier, the paired
difference to dense with its 95 % bootstrap interval over photos (several pairs share a photo).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable

from compression.methods import Job, method
from data.pairs import TIERS, make_pairs
from helper import ArgumentParser, positive_int, run_cli, writable_location, write_json
from models.matching import Matcher, build_matcher, with_settings
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.metrics import paired_difference, summarize


def kmeans_4bit(dense: Matcher) -> Matcher:
    m = copy.deepcopy(dense)
    kmeans = method("kmeans")
    kmeans.apply(Job(m, "matcher", {**kmeans.settings, "method": "kmeans", "bits": 4}))
    return m


def reloaded(dense: Matcher) -> Matcher:
    with tempfile.TemporaryDirectory() as tmp:
        return load_checkpoint(save_checkpoint(dense, Path(tmp) / "dense.pth"))


# (name, expected: "loss" or "neutral", the pipeline from the dense one, whether it may reuse the dense detector cache)
CONTROLS: list[tuple[str, str, Callable[[Matcher], Matcher], bool]] = [
    ("LightGlue depth 0.8, width 0.95", "loss",
     lambda d: with_settings(d, "matcher", {"depth_confidence": 0.8, "width_confidence": 0.95}), True),
    ("512 keypoints instead of 1024", "loss", lambda d: with_settings(d, "detector", {"max_keypoints": 512}), True),
    ("LightGlue 4-bit k-means, no finetuning", "loss", kmeans_4bit, True),
    ("the same pipeline again (cold cache)", "neutral", copy.deepcopy, False),
    ("saved and reloaded", "neutral", reloaded, True),
]  # fmt: skip


def run_tier(tier: str, args: Any) -> list[dict[str, Any]]:
    pairs = make_pairs(source=args.source, split="val", num_pairs=args.num_pairs, tier=tier)
    dense = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 1024}})
    cache = FeatureCache()
    score = lambda m, c: evaluate(m, pairs, c, method="poselib", ransac_threshold=2.0, desc=tier)["rows"]  # noqa: E731
    base = score(dense, cache)
    s = summarize(base)
    rows = [{"tier": tier, "control": "dense", "expected": "-", "auc@3px": s["auc@3px"], "precision": s["precision"],
             "recall": s["recall"]}]  # fmt: skip
    for name, expected, make, shared in CONTROLS:
        got = score(make(dense), cache if shared else FeatureCache())
        d = paired_difference(got, base, by="name0")["auc@3px"]
        flagged = not d["within_noise"]  # a loss is flagged when its whole interval lies below 0
        right = d["interval"][1] < 0 if expected == "loss" else d["within_noise"]
        rows.append({"tier": tier, "control": name, "expected": expected, "auc@3px": summarize(got)["auc@3px"],
                     "difference": d["difference"], "interval": d["interval"], "flagged": flagged,
                     "as_expected": right})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiers", nargs="+", choices=list(TIERS), default=list(TIERS))
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--source", default="photos")
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    if args.json:
        writable_location(args.json, what="--json")
    rows = [row for tier in args.tiers for row in run_tier(tier, args)]
    print("| tier | control | expected | AUC@3px | vs dense [95 % over photos] | flagged | as expected |")
    print("|---|---|---|---:|---|---|---|")
    for r in rows:
        if r["control"] == "dense":
            print(f"| {r['tier']} | dense (P {r['precision']:.3f}, R {r['recall']:.3f}) | | {r['auc@3px']:.3f} | | | |")
            continue
        lo, hi = r["interval"]
        flagged, expected = "yes" if r["flagged"] else "no", "yes" if r["as_expected"] else "NO"
        print(f"| {r['tier']} | {r['control']} | {r['expected']} | {r['auc@3px']:.3f} | {r['difference']:+.4f} "
              f"[{lo:+.4f}, {hi:+.4f}] | {flagged} | {expected} |")  # fmt: skip
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    run_cli(main)
