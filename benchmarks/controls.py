"""Controls of the accuracy instrument: on each tier of pairs, changes known to cost a little accuracy (positive
controls) must be flagged — their paired interval to the dense pipeline lies wholly below 0 — and changes known to be
neutral (negative controls) must not be. A tier that flags no positive control cannot see a loss; one that flags a
negative control sees losses that are not there.

    python benchmarks/controls.py [--tiers easy hard pose] [--num_pairs 100] [--only depth thread] [--json F]

The dense pipeline is the stock ALIKED+LightGlue (1024 keypoints, LightGlue's shipped adaptive depth and width).
Positive controls: LightGlue's depth confidence 0.8 and width confidence 0.95 (it stops sooner, drops more points);
512 keypoints instead of 1024; ALIKED and LightGlue in 4-bit k-means without finetuning. Negative controls: the same
pipeline evaluated again from a cold detector cache; the pipeline saved and reloaded (bit-exact); the pipeline on one
thread instead of the machine's (other float rounding: a few keypoints move by 1e-4 px, a few matches change).
Accuracy: on homography tiers AUC@3px of the corner error under PoseLib LO-RANSAC at 2 px, on the pose tier AUC@10°
of the pose error under PoseLib at 1 px; the paired difference to dense with its 95 % bootstrap interval over photos
(homography tiers: several pairs share a photo) or over scenes (pose tier).
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from compression.methods import Job, method
from data.pairs import TIERS, make_pairs
from helper import ArgumentParser, InputError, positive_int, run_cli, writable_location, write_json
from models.matching import Matcher, build_matcher, with_settings
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.evaluation import VERDICT, FeatureCache, evaluate
from pipeline.metrics import paired_difference, summarize


def kmeans_4bit(dense: Matcher) -> Matcher:
    m = copy.deepcopy(dense)
    kmeans = method("kmeans")
    for part in ("detector", "matcher"):
        kmeans.apply(Job(m, part, {**kmeans.settings, "method": "kmeans", "bits": 4}))
    return m


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def reloaded(dense: Matcher) -> Matcher:
    with tempfile.TemporaryDirectory() as tmp:
        return load_checkpoint(save_checkpoint(dense, Path(tmp) / "dense.pth"))


# (name, expected: "loss" or "neutral", the pipeline from the dense one, how it is evaluated: "shared" (reusing the
# dense detector's cached features), "cold" (a cold cache) or "one thread" (a cold cache, on one thread))
CONTROLS: list[tuple[str, str, Callable[[Matcher], Matcher], str]] = [
    ("LightGlue depth 0.8, width 0.95", "loss",
     lambda d: with_settings(d, "matcher", {"depth_confidence": 0.8, "width_confidence": 0.95}), "shared"),
    ("512 keypoints instead of 1024", "loss", lambda d: with_settings(d, "detector", {"max_keypoints": 512}), "shared"),
    ("ALIKED + LightGlue 4-bit k-means, no finetuning", "loss", kmeans_4bit, "cold"),
    ("the same pipeline again (cold cache)", "neutral", copy.deepcopy, "cold"),
    ("saved and reloaded", "neutral", reloaded, "shared"),
    ("one thread instead of the machine's", "neutral", copy.deepcopy, "one thread"),
]  # fmt: skip


def run_tier(tier: str, args: Any, controls: list = CONTROLS) -> list[dict[str, Any]]:
    pairs = make_pairs(source=args.source, split="val", num_pairs=args.num_pairs, tier=tier)
    verdict = VERDICT[pairs[0].kind]
    metric, estimator = verdict["metric"], {k: verdict[k] for k in ("method", "ransac_threshold")}
    dense = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 1024}})
    cache = FeatureCache()

    def score(m: Matcher, how: str) -> list[dict[str, Any]]:
        with one_thread() if how == "one thread" else contextlib.nullcontext():
            return evaluate(m, pairs, cache if how == "shared" else FeatureCache(), desc=tier, **estimator)["rows"]

    base = score(dense, "shared")
    s = summarize(base)
    rows = [{"tier": tier, "control": "dense", "expected": "-", "metric": metric, "value": s[metric],
             "precision": s["precision"], "recall": s.get("recall")}]  # fmt: skip
    for name, expected, make, how in controls:
        got = score(make(dense), how)
        d = paired_difference(got, base, by="name0")[metric]
        flagged = d["interval"][1] < 0  # a loss is flagged when its whole interval lies below 0
        right = flagged if expected == "loss" else d["within_noise"]
        rows.append({"tier": tier, "control": name, "expected": expected, "metric": metric,
                     "value": summarize(got, None)[metric], "difference": d["difference"], "interval": d["interval"],
                     "flagged": flagged, "as_expected": right})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiers", nargs="+", choices=list(TIERS), default=list(TIERS))
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--only", nargs="+", default=None, metavar="WORD",
                   help="run the controls whose name holds one of these words (dense is always run)")  # fmt: skip
    p.add_argument("--source", default="photos")
    p.add_argument("--json", default=None, help="write the rows here too")
    args = p.parse_args(argv)
    if args.json:
        writable_location(args.json, what="--json")
    controls = [c for c in CONTROLS if args.only is None or any(w in c[0] for w in args.only)]
    if not controls:
        raise InputError(f"--only {' '.join(args.only)}: no control's name holds these words")
    rows = [row for tier in args.tiers for row in run_tier(tier, args, controls)]
    print("| tier | control | expected | metric | value | vs dense [95 % interval] | flagged | as expected |")
    print("|---|---|---|---|---:|---|---|---|")
    for r in rows:
        if r["control"] == "dense":
            recall = f", R {r['recall']:.3f}" if r["recall"] is not None else ""
            print(
                f"| {r['tier']} | dense (P {r['precision']:.3f}{recall}) | | {r['metric']} | {r['value']:.3f} | | | |"
            )
            continue
        lo, hi = r["interval"]
        flagged, expected = "yes" if r["flagged"] else "no", "yes" if r["as_expected"] else "NO"
        print(f"| {r['tier']} | {r['control']} | {r['expected']} | {r['metric']} | {r['value']:.3f} | "
              f"{r['difference']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {flagged} | {expected} |")  # fmt: skip
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    run_cli(main)
