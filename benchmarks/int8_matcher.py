"""A matcher network (LightGlue, SuperGlue) in real int8 (ONNX Runtime) vs fp32, side by side in one run:
matcher latency, file size, agreement of the matches with fp32, and matching accuracy on the validation pairs.

    python benchmarks/int8_matcher.py [--matcher aliked+lightglue] [--num_pairs 100] [--threads 2]
    python benchmarks/int8_matcher.py --matcher superpoint+superglue --random-weights   # latency only

Rows: PyTorch fp32, the ONNX graph in fp32 (same numbers: the export is checked), int8 with dynamic activation
quantization, and int8 static QDQ with activations calibrated on training pairs. All layers run (LightGlue's early
stopping and point pruning are off in every row: a graph has no data-dependent exits). Detector outputs are
computed once and shared, so only the matcher differs between rows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from data.pairs import make_pairs
from helper import ArgumentParser, merge_config, positive_int, run_cli
from models.lightglue import EVERY_LAYER
from models.matching import build_matcher
from pipeline.costs import interleaved_latency, prepare, state_bytes
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.training import DEFAULTS
from quantization.int8 import int8_matcher, recorded_inputs


def same_matches(ref: torch.Tensor, out: torch.Tensor) -> float:
    """Share of the reference matches (matches0 >= 0) that the other model also makes."""
    valid = ref >= 0
    return float((out[valid] == ref[valid]).float().mean()) if valid.any() else 1.0


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--matcher", default="aliked+lightglue")
    p.add_argument(
        "--random-weights",
        "--random_weights",
        dest="random_weights",
        action="store_true",
        help="latency only (e.g. SuperGlue, whose official weights are not here)",
    )
    p.add_argument("--num_pairs", type=positive_int, default=100)
    p.add_argument("--calibration_pairs", type=positive_int, default=16)
    p.add_argument("--num_keypoints", type=positive_int, default=512)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {
        "detector": {"max_keypoints": args.num_keypoints},
        "matcher": EVERY_LAYER,
        "superpoint": {"max_keypoints": args.num_keypoints},
    }
    if args.random_weights:
        config.update(
            pretrained=False,
            superpoint={"weights": None, "max_keypoints": args.num_keypoints},
            superglue={"weights": None},
        )
    dense = build_matcher(args.matcher, config).eval()
    if args.random_weights:  # SuperGlue's q/k/v start as copies of its merge layer: draw them apart, or the
        for module in dense.matcher.modules():  # graph would store them once and look smaller than trained ones
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Linear)):
                module.reset_parameters()
    cache = FeatureCache()
    calib = make_pairs(merge_config(DEFAULTS["train"], {"num_pairs": args.calibration_pairs, "augment": 0.0}))
    data = recorded_inputs(dense.matcher, lambda: evaluate(dense, calib, cache, progress=False))

    with tempfile.TemporaryDirectory() as tmp:
        variants = {"torch fp32": dense}
        for mode in ("fp32", "dynamic", "static"):
            label = "onnxruntime fp32" if mode == "fp32" else f"onnxruntime int8 {mode}"
            variants[label] = int8_matcher(dense, data, Path(tmp) / mode, args.threads, mode)
        sizes = {"torch fp32": state_bytes(dense.matcher)}
        sizes.update({k: v.onnx_path.stat().st_size for k, v in variants.items() if k != "torch fp32"})
        runs = {k: prepare(m, (640, 480), args.num_keypoints, torch.device("cpu")) for k, m in variants.items()}
        lat = interleaved_latency({k: r["match"] for k, r in runs.items()}, args.repeats)
        base = lat["torch fp32"]["latency_ms"]
        with torch.no_grad():
            ref = runs["torch fp32"]["match"]()["matches0"]
            agree = {k: same_matches(ref, r["match"]()["matches0"]) for k, r in runs.items()}
        print(
            f"{args.matcher}{' (random weights)' if args.random_weights else ''}: matcher network with "
            f"{args.num_keypoints} keypoints per image, {args.threads} threads"
            + ("" if args.random_weights else f"; {args.num_pairs} validation pairs")
        )
        head = f"{'matcher network':<26}{'ms':>8}{'IQR':>6}{'ratio':>7}{'MB':>7}{'same matches':>13}"
        print(
            head
            + (
                ""
                if args.random_weights
                else f"{'AUC@1px':>9}{'AUC@3px':>9}{'AUC@5px':>9}{'prec':>7}{'recall':>8}{'fail':>5}"
            )
        )
        val = None if args.random_weights else make_pairs(merge_config(DEFAULTS["val"], {"num_pairs": args.num_pairs}))
        for name, m in variants.items():
            t = lat[name]
            row = (
                f"{name:<26}{t['latency_ms']:>8.1f}{t['latency_ms_iqr']:>6.1f}{t['latency_ms'] / base:>7.2f}"
                f"{sizes[name] / 1e6:>7.1f}{agree[name]:>13.3f}"
            )
            if val is not None:
                s = evaluate(m, val, cache, desc=name)["summary"]
                row += (
                    f"{s['auc@1px']:>9.3f}{s['auc@3px']:>9.3f}{s['auc@5px']:>9.3f}{s['precision']:>7.3f}"
                    f"{s['recall']:>8.3f}{s['failures']:>5}"
                )
            print(row, flush=True)


if __name__ == "__main__":
    run_cli(main)
