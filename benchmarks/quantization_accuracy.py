"""Accuracy of quantized aliked+lightglue matchers on the sample validation pairs, side by side with dense.

    python benchmarks/quantization_accuracy.py [--num_pairs 100] [--finetune_steps 300]

Variants: 8-bit linear PTQ of the whole LightGlue (per-channel weights, per-tensor activations calibrated on
training pairs, min/max or percentile) and 4-bit / 2-bit k-means weight sharing, before and after codebook
finetuning on training pairs (codes fixed, each centroid moved by the mean update of its weights; the last
checkpoint is taken, never one picked on the validation pairs), with the dense model finetuned the same way as a
control. Each is saved in the compressed checkpoint format, whose size is reported next to the fp32 state_dict.
"""

from __future__ import annotations

import argparse
import copy
import io
import tempfile
from pathlib import Path

import torch

from data.pairs import make_pairs
from helper import ArgumentParser, int_in, merge_config, positive_int, run_cli
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.training import DEFAULTS, finetune
from quantization.kmeans import quantize_kmeans
from quantization.linear import quantize_linear


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--calibration_pairs", type=positive_int, default=8)
    p.add_argument("--finetune_steps", type=int_in(0, 10**6), default=300, help="codebook finetuning steps (0: none)")
    p.add_argument("--bits", type=int_in(1, 8), nargs="*", default=[4, 2], help="k-means bit widths")
    p.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also finetune the dense model the same way (is a recovery the finetuning's own gain?)",
    )
    args = p.parse_args(argv)
    cfg = {"detector": {"max_keypoints": 512}, "matcher": EVERY_LAYER}
    dense = build_matcher("aliked+lightglue", cfg)
    val = make_pairs(merge_config(DEFAULTS["val"], {"num_pairs": args.num_pairs}))
    calib = make_pairs(merge_config(DEFAULTS["train"], {"num_pairs": args.calibration_pairs, "augment": 0.0}))
    cache = FeatureCache()
    buf = io.BytesIO()
    torch.save(dense.matcher.state_dict(), buf)

    variants = {"dense fp32": dense}
    for method in ("minmax", "percentile"):
        m = copy.deepcopy(dense)
        quantize_linear(m.matcher, lambda: evaluate(m, calib, cache, progress=False), 8, 8, method=method)
        variants[f"linear int8 PTQ {method}"] = m
    with tempfile.TemporaryDirectory() as tmp:

        def finetuned(m, name):
            """``m`` after the same finetuning run as every other row (its last checkpoint)."""
            start = save_checkpoint(m, Path(tmp) / f"{name}.pth")
            finetune(
                merge_config(
                    DEFAULTS,
                    {
                        "checkpoint": str(start),
                        "out": str(Path(tmp) / f"ft-{name}"),
                        "steps": args.finetune_steps,
                        "matcher_config": cfg,
                        "val": {"num_pairs": 4, "every": args.finetune_steps},
                    },
                )
            )
            return load_checkpoint(Path(tmp) / f"ft-{name}" / "last.pth")

        if args.finetune_steps and args.control:  # what the finetuning alone does to the dense model
            variants["dense + same finetuning"] = finetuned(dense, "dense")
        for bits in args.bits:
            m = copy.deepcopy(dense)
            quantize_kmeans(m.matcher, bits)
            variants[f"k-means {bits}-bit"] = m
            if args.finetune_steps:
                variants[f"k-means {bits}-bit + codebook ft"] = finetuned(m, f"kmeans{bits}")

        print(f"{len(val)} validation pairs; LightGlue fp32 state_dict {buf.tell() / 1e6:.1f} MB")
        print(f"{'variant':<30}{'AUC@1px':>9}{'AUC@3px':>9}{'AUC@5px':>9}{'prec':>7}{'recall':>8}{'ckpt MB':>9}")
        for name, m in variants.items():
            s = evaluate(m, val, cache, progress=False)["summary"]
            size = save_checkpoint(m, Path(tmp) / "m.pth").stat().st_size
            print(
                f"{name:<30}{s['auc@1px']:>9.3f}{s['auc@3px']:>9.3f}{s['auc@5px']:>9.3f}{s['precision']:>7.3f}"
                f"{s['recall']:>8.3f}{size / 1e6:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    run_cli(main)
