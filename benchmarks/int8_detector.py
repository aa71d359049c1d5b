"""A pretrained detector in real int8 (ONNX Runtime, static QDQ) vs fp32, side by side in one run: latency,
closeness of keypoints and descriptors, and matching accuracy on the validation pairs.

    python benchmarks/int8_detector.py [--matcher disk+lightglue] [--num_pairs 16] [--threads 2]

DISK + LightGlue is pretrained and offline, so this measures what int8 execution costs in accuracy for real
(SuperPoint's accuracy needs the official weights: benchmarks/int8_superpoint.py --weights PATH). Calibration
uses training photos of the sample set; evaluation the fixed validation pairs; the matcher stays fp32.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from data.pairs import make_pairs
from helper import ArgumentParser, keypoint_limit, merge_config, positive_int, run_cli, to_tensor
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.costs import interleaved_latency, test_pair
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.training import DEFAULTS
from quantization.int8 import int8_detector


def closeness(ref: dict, out: dict) -> tuple[float, float]:
    """Share of the reference keypoints found again within 1 px, and the mean descriptor cosine there."""
    r, k = ref["keypoints"][0].numpy(), out["keypoints"][0].numpy()
    if not len(r) or not len(k):
        return 0.0, 0.0
    d = np.linalg.norm(r[:, None] - k[None], axis=2)
    near, idx = d.min(1) < 1.0, d.argmin(1)
    dr, dk = ref["descriptors"][0], out["descriptors"][0]
    cos = torch.nn.functional.cosine_similarity(dr[:, near], dk[:, idx[near]], dim=0).mean().item() if near.any() else 0
    return float(near.mean()), float(cos)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--matcher", default="disk+lightglue")
    p.add_argument("--num_pairs", type=positive_int, default=16)
    p.add_argument("--calibration_images", type=positive_int, default=8)
    p.add_argument("--max_keypoints", type=keypoint_limit, default=512)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dense = build_matcher(args.matcher, {"detector": {"max_keypoints": args.max_keypoints}, "matcher": EVERY_LAYER})
    val = make_pairs(merge_config(DEFAULTS["val"], {"num_pairs": args.num_pairs}))
    calib_pairs = make_pairs(merge_config(DEFAULTS["train"], {"num_pairs": args.calibration_images, "augment": 0.0}))
    channels = dense.channels
    calib = [to_tensor(calib_pairs.image(pair, 0)[1])[:, :channels] for pair in calib_pairs]
    image = to_tensor(test_pair((640, 480))[0])

    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "torch fp32": dense,
            "onnxruntime fp32": int8_detector(dense, calib, Path(tmp) / "fp32", args.threads, quantize=False),
            "onnxruntime int8": int8_detector(dense, calib, Path(tmp) / "int8", args.threads),
        }
        sizes = {"torch fp32": 4 * sum(p.numel() for p in dense.detector.parameters())}
        sizes.update({k: v.onnx_path.stat().st_size for k, v in variants.items() if hasattr(v, "onnx_path")})
        with torch.no_grad():
            lat = interleaved_latency({k: (lambda m=m: m.extract(image)) for k, m in variants.items()}, args.repeats)
            ref = dense.extract(image)
            print(
                f"{args.matcher}: detector at 640x480, {args.threads} threads; {len(val)} validation pairs; "
                f"{args.max_keypoints} keypoints"
            )
            print(
                f"{'detector':<18}{'ms':>8}{'IQR':>6}{'ratio':>7}{'MB':>6}{'same kpts':>10}{'desc cos':>9}"
                f"{'AUC@1px':>9}{'AUC@3px':>9}{'AUC@5px':>9}{'prec':>7}{'recall':>8}{'fail':>5}"
            )
            base = lat["torch fp32"]["latency_ms"]
            for name, m in variants.items():
                same, cos = closeness(ref, m.extract(image))
                s = evaluate(m, val, FeatureCache(), desc=name)["summary"]
                t = lat[name]
                print(
                    f"{name:<18}{t['latency_ms']:>8.0f}{t['latency_ms_iqr']:>6.0f}{t['latency_ms'] / base:>7.2f}"
                    f"{sizes[name] / 1e6:>6.1f}{same:>10.3f}{cos:>9.4f}{s['auc@1px']:>9.3f}{s['auc@3px']:>9.3f}"
                    f"{s['auc@5px']:>9.3f}{s['precision']:>7.3f}{s['recall']:>8.3f}{s['failures']:>5}"
                )


if __name__ == "__main__":
    run_cli(main)
