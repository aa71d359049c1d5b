"""A channel-pruned or ReLU ALIKED distilled from the dense one, without labels: accuracy, agreement with its teacher,
speed.

    python benchmarks/detector_distillation.py [--ratio 0.5 | --ratio block1=0.5 block2=0.5] [--steps 300]
        [--num_pairs 100] [--out runs/detector_distillation]
    python benchmarks/detector_distillation.py --ratio 0 --activation relu   # ReLU where ALIKED has SELU

The student: ALIKED-n16 with the channels of its blocks pruned (``prune_channels``, pruning/channel.py; the
descriptor map and its heads keep their widths, so the pretrained LightGlue still reads it), or computing ReLU where
ALIKED computes SELU (``detector: {activation: relu}``, models/aliked.py: ONNX Runtime fuses ReLU into the
convolutions, SELU's ELU leaves its blocked layout), or both. A ReLU student moves from SELU to ReLU during the first
``--activation_ramp`` of the steps ((1 - t)·SELU + t·ReLU, t rising linearly: it starts as the teacher's function
and adapts on the way; swapped at once, the pretrained weights find no keypoint worth a match). ``--bn_images``
re-estimates the student's batch-norm statistics on training photos before (for a pruned student; distillation then
keeps them, one image a step being no batch to estimate them from). It then finetunes the student by distillation
from the dense one (pipeline/training.py ``distill``: its score map, its descriptors at the teacher's keypoints and
the frozen LightGlue's matching loss on them) on training photos warped by homographies. It reports, on the demo's
val pairs (640×480) with the stock LightGlue (1024 keypoints, adaptive), for the dense detector, the student (before
distillation) and the distilled one:

* AUC@1/3/5 px (PoseLib LO-RANSAC, 2 px) with 95 % intervals and the paired difference of AUC@3px to dense;
* repeatability: the share of an image's keypoints that the true homography maps within 3 px of a keypoint of the
  other image (of those that land inside it), mean over both directions and pairs;
* agreement with the teacher: the share of the teacher's keypoints with a keypoint of the detector within 3 px, and
  the mean cosine of the detector's descriptors to the teacher's at the teacher's keypoints;
* the detector's time per 640×480 image, in PyTorch and as the ONNX Runtime fp32 graph of its dense part, timed
  round-robin with the dense detector, and the ratio to it.

The finetuning run resumes after a kill (its folder under ``--out``); the distilled pipeline is ``<out>/distilled.pth``
(``python benchmarks/end_to_end.py --checkpoint <out>/distilled.pth`` adds its rows to the end-to-end table).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from end_to_end import CALIBRATION, ESTIMATOR, VAL, calibration_images  # a sibling script

from data.pairs import make_pairs
from helper import (
    ArgumentParser,
    InputError,
    float_in,
    git_commit,
    int_in,
    positive_int,
    run_cli,
    to_tensor,
    write_json,
)
from models.aliked import ACTIVATIONS
from models.matching import Matcher, build_matcher
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.costs import interleaved_latency
from pipeline.evaluation import evaluate
from pipeline.metrics import paired_difference, summarize
from pipeline.training import DEFAULTS, checked_config, finetune, recalibrate_batch_norms
from pruning.channel import prune_channels
from quantization.int8 import int8_detector

TRAIN = {**CALIBRATION, "num_pairs": 400, "augment": 1.0}  # training photos (never val), photometric changes


def parse_ratio(values: list[str]) -> float | dict[str, float]:
    """'0.5' (every group) or 'block1=0.5 block2.mid=0.25 …'."""
    if len(values) == 1 and "=" not in values[0]:
        return float(values[0])
    out = {}
    for v in values:
        name, sep, ratio = v.partition("=")
        if not sep:
            raise InputError(f"--ratio: {v!r} is not GROUP=FRACTION")
        out[name] = float(ratio)
    return out


def warp(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    p = np.concatenate([points, np.ones((len(points), 1))], 1) @ H.T
    return p[:, :2] / p[:, 2:]


def near(a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """For each point of ``a``: is a point of ``b`` within ``radius`` px."""
    if not len(a) or not len(b):
        return np.zeros(len(a), bool)
    return (np.linalg.norm(a[:, None] - b[None], axis=2) <= radius).any(1)


def detector_agreement(models: dict[str, Matcher], teacher: Matcher, pairs, radius: float = 3.0) -> dict[str, dict]:
    """Repeatability of each detector under the pairs' homographies, and its agreement with ``teacher``."""
    stats: dict[str, dict[str, list[float]]] = {n: {"repeatability": [], "keypoints": [], "cosine": []} for n in models}
    with torch.no_grad():
        for pair in pairs:
            images = [to_tensor(pairs.image(pair, i)[1]) for i in (0, 1)]
            taught = [teacher.distill_outputs(x) for x in images]
            H = np.asarray(pair.H, dtype=np.float64)
            for name, m in models.items():
                own = [m.distill_outputs(x) for x in images]
                kp = [o["keypoints"].double().numpy() for o in own]
                h, w = images[1].shape[-2:]
                for a, b, hom in ((kp[0], kp[1], H), (kp[1], kp[0], np.linalg.inv(H))):
                    moved = warp(a, hom)
                    inside = (moved[:, 0] >= 0) & (moved[:, 0] <= w - 1) & (moved[:, 1] >= 0) & (moved[:, 1] <= h - 1)
                    if inside.any():  # an image without keypoints there has no repeatability to count
                        stats[name]["repeatability"].append(float(near(moved[inside], b, radius).mean()))
                for x, t, k in zip(images, taught, kp):
                    stats[name]["keypoints"].append(float(near(t["keypoints"].double().numpy(), k, radius).mean()))
                    at = m.distill_outputs(x, t["keypoints"])["descriptors"]
                    stats[name]["cosine"].append(float((at * t["descriptors"]).sum(0).mean()))
    return {n: {k: float(np.mean(v)) if v else float("nan") for k, v in s.items()} for n, s in stats.items()}


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ratio", nargs="+", default=["block1=0.5", "block1.mid=0.5", "block2=0.5", "block2.mid=0.5"],
                   help="channels pruned: one fraction, or GROUP=FRACTION for the groups blockN (N = 1..4: a block's "
                        "output) and blockN.mid (its hidden width)")  # fmt: skip
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), default="selu", help="the student's (dense part)")
    p.add_argument("--activation_ramp", type=float_in(0, 1), default=0.5,
                   help="share of the steps moving another activation from SELU to its own (0: at once)")  # fmt: skip
    p.add_argument("--bn_images", type=int_in(0, 10_000), default=0,
                   help="training photos re-estimating its batch-norm statistics (0: the teacher's)")  # fmt: skip
    p.add_argument("--steps", type=positive_int, default=300, help="distillation steps (one training pair each)")
    p.add_argument("--lr", type=float_in(1e-12, 1), default=1e-3)
    p.add_argument("--train_size", nargs=2, type=int_in(64, 4096), default=[640, 480], metavar=("W", "H"))
    p.add_argument("--num_pairs", type=int_in(2, 10_000), default=100, help="val pairs for accuracy")
    p.add_argument("--agreement_pairs", type=int_in(1, 10_000), default=20, help="of those, for the agreement")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed rounds per detector")
    p.add_argument("--out", default="runs/detector_distillation")
    p.add_argument("--json", default=None, help="write every number here")
    args = p.parse_args(argv)
    ratio = parse_ratio(args.ratio)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = build_matcher("aliked+lightglue", {})
    student = build_matcher("aliked+lightglue", {"detector": {"activation": args.activation}})
    kept = prune_channels(student.detector, ratio) if ratio else None
    if args.bn_images:
        recalibrate_batch_norms(student.detector, calibration_images(3, args.bn_images // 2 + 1)[: args.bn_images])
    save_checkpoint(student, out / "student.pth", {"ratio": ratio, "kept": kept, "activation": args.activation})
    config = {
        "matcher": "aliked+lightglue",
        "matcher_config": {},
        "checkpoint": str(out / "student.pth"),
        "out": str(out / "distill"),
        "steps": args.steps,
        "lr": args.lr,
        "distill": {"enabled": True},
        "train": {**TRAIN, "size": args.train_size},
        "val": {**VAL, "num_pairs": 16, "every": max(1, args.steps // 4)},
    }
    ramp = args.activation_ramp if args.activation != "selu" else 0.0
    finetune(
        checked_config(
            {**DEFAULTS, **config, "distill": {**DEFAULTS["distill"], "enabled": True, "activation_ramp": ramp}}
        )
    )
    shutil.copyfile(out / "distill" / "last.pth", out / "distilled.pth")  # the last, not the best: val picks it
    distilled = load_checkpoint(out / "distilled.pth")
    models = {"dense": dense, "student": student.eval(), "distilled": distilled}
    pairs = make_pairs({**VAL, "num_pairs": args.num_pairs})
    rows = {n: evaluate(m, pairs, desc=n, **ESTIMATOR)["rows"] for n, m in models.items()}
    agreement = detector_agreement(models, dense, make_pairs({**VAL, "num_pairs": args.agreement_pairs}))
    image = to_tensor(pairs.image(pairs[0], 0)[1])
    with tempfile.TemporaryDirectory() as tmp:
        calib = calibration_images(3)[:1]
        ort = {
            f"{n}, ORT": int8_detector(m, calib, Path(tmp) / n, quantize=False)
            for n, m in models.items()
            if n != "student"
        }
        timed = {n: m for n, m in {**models, **ort}.items() if n != "student"}
        fns = {n: (lambda m=m: m.extract(image)) for n, m in timed.items()}
        times = {n: [] for n in fns}
        for _ in range(3):  # three blocks of rounds: the ratio's spread over blocks is its uncertainty
            for n, t in interleaved_latency(fns, args.repeats).items():
                times[n].append(t["latency_ms"])
    times = {n: np.array(v) for n, v in times.items()}
    print(f"ALIKED-n16 channels kept: {kept or 'all'}; activation {args.activation}; batch norms re-estimated on "
          f"{args.bn_images} photos")  # fmt: skip
    print(f"distilled {args.steps} steps on {args.train_size[0]}×{args.train_size[1]} training pairs; "
          f"{len(pairs)} val pairs; agreement on {args.agreement_pairs}")  # fmt: skip
    print(f"{'detector':10} {'AUC@1/3/5 px':17} {'AUC@3px [95 %]':>19} {'Δ to dense [95 %]':>22} "
          f"{'repeat.':>8} {'kp agree':>8} {'desc cos':>8}")  # fmt: skip
    report: dict[str, Any] = {
        "ratio": ratio,
        "kept": kept,
        "activation": args.activation,
        "bn_images": args.bn_images,
        "activation_ramp": ramp,
        "steps": args.steps,
        "lr": args.lr,
        "git_commit": git_commit(),
        "rows": {},
    }
    for n in models:
        s = summarize(rows[n])
        d = paired_difference(rows[n], rows["dense"])["auc@3px"]
        ci = s["intervals"]["auc@3px"]
        a = agreement[n]
        aucs = "/".join(f"{s[f'auc@{t}px']:.3f}" for t in (1, 3, 5))
        print(f"{n:10} {aucs:17} {s['auc@3px']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] "
              f"{d['difference']:+.3f} [{d['interval'][0]:+.3f}, {d['interval'][1]:+.3f}] "
              f"{a['repeatability']:8.3f} {a['keypoints']:8.3f} {a['cosine']:8.3f}")  # fmt: skip
        report["rows"][n] = {"summary": s, "auc3_difference": d, **a}
    print(f"{'detector time per 640×480 image':32} {'ms':>6} {'× dense [range of 3 blocks]':>28}")
    for n, t in times.items():
        r = t / times["dense"]
        print(f"{n:32} {np.median(t):6.0f} {np.median(r):6.2f} [{r.min():.2f}, {r.max():.2f}]")
        report["rows"].setdefault(n, {})["detector_ms"] = float(np.median(t))
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    run_cli(main)
