"""fp32 vs int8 SuperPoint on CPU, side by side in one run: latency and how close the int8 outputs are.

    pip install onnx onnxruntime && python benchmarks/int8_superpoint.py [--threads 2] [--weights PATH]

Runs the official weights when given (or cached), else random weights (the speed does not depend on them;
then the closeness numbers only show that the int8 graph computes the same function). Calibration uses train
photos of the sample set, measurement a held-out photo and its homography warp at 640×480.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from backends.export import export_detector
from backends.modules import GraphDetector
from data.homographies import HomographyConfig, crop_resize, sample_homography, warp_image, warp_points
from data.images import open_source, split_names
from helper import ArgumentParser, measure_latency, positive_int, run_cli, to_tensor
from models.superpoint import SuperPoint
from models.weights import WeightsError, resolve_weights
from quantization.int8 import quantize_static_onnx


def gray(image: np.ndarray) -> torch.Tensor:
    return to_tensor(image).mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--weights", default=None)
    p.add_argument("--repeats", type=positive_int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights = args.weights
    if weights is None:
        try:
            weights = str(resolve_weights("superpoint_v1", allow_download=False))
        except WeightsError:
            weights = None
    sp = SuperPoint({"weights": weights, "max_keypoints": 1024}).eval()
    src = open_source("sample")
    size = (640, 480)
    calib = [gray(crop_resize(src.read(n), size)).numpy() for n in split_names(src.names, "train", 0.5)[:8]]
    photo = crop_resize(src.read(split_names(src.names, "val", 0.5)[0]), size)
    H = sample_homography(np.random.default_rng(0), size, HomographyConfig())
    img0, img1 = gray(photo), gray(warp_image(photo, H, size))

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_detector(sp, Path(tmp) / "sp.onnx", torch.rand(1, 1, size[1], size[0]))
        int8 = quantize_static_onnx(fp32, Path(tmp) / "sp_int8.onnx", calib, keep_float=("convPb", "convDb"))
        variants = {
            "torch fp32": sp,
            "onnxruntime fp32": GraphDetector(sp, fp32, args.threads),
            "onnxruntime int8": GraphDetector(sp, int8, args.threads),
        }
        sizes = {"onnxruntime fp32": fp32.stat().st_size, "onnxruntime int8": int8.stat().st_size}
        with torch.no_grad():
            ref = sp({"image": torch.cat([img0, img1])})
            print(f"SuperPoint 640x480, {args.threads} threads, weights: {weights or 'random'}")
            print(
                f"{'variant':<18}{'ms':>8}{'IQR':>7}{'ratio':>7}{'MB':>7}{'kpts':>6}{'same kpts':>10}"
                f"{'desc cos':>9}{'repeat.':>9}"
            )
            base = None
            for name, model in variants.items():
                lat = measure_latency(lambda: model.dense(img0), args.repeats)
                base = base or lat["latency_ms"]
                out = model({"image": torch.cat([img0, img1])})
                k0 = out["keypoints"][0].numpy()
                r0 = ref["keypoints"][0].numpy()
                d = np.linalg.norm(k0[:, None] - r0[None], axis=2)
                same = (d.min(1) < 1e-3).mean() if len(r0) else 0.0
                nn_idx = d.argmin(1)
                close = d.min(1) < 1e-3
                cos = float((out["descriptors"][0][:, close] * ref["descriptors"][0][:, nn_idx[close]]).sum(0).mean())
                # Repeatability: keypoints of image0 mapped by H that land within 3 px of a keypoint of image1.
                k1 = out["keypoints"][1].numpy()
                proj = warp_points(k0, H)
                inside = (proj[:, 0] >= 0) & (proj[:, 0] < size[0]) & (proj[:, 1] >= 0) & (proj[:, 1] < size[1])
                rep = (np.linalg.norm(proj[inside][:, None] - k1[None], axis=2).min(1) < 3).mean()
                print(
                    f"{name:<18}{lat['latency_ms']:>8.1f}{lat['latency_ms_iqr']:>7.1f}"
                    f"{lat['latency_ms'] / base:>7.2f}"
                    f"{sizes.get(name, 4 * sum(p.numel() for p in sp.parameters())) / 1e6:>7.1f}{len(k0):>6}"
                    f"{same:>10.3f}{cos:>9.4f}{rep:>9.3f}"
                )


if __name__ == "__main__":
    run_cli(main)
