"""Dense vs channel-pruned SuperPoint and SuperGlue: MACs and CPU latency, measured side by side in one run.

    python benchmarks/channel_pruning.py [--ratio 0.5] [--keypoints 512] [--threads 2]

Random weights (cost does not depend on them). SuperPoint on a 640×480 image; SuperGlue (official default
architecture) on N keypoints per image. The pruned variants remove ``ratio`` of every prunable channel:
SuperPoint's encoder and head hidden layers; SuperGlue's keypoint-encoder hidden layers, GNN MLP hidden
widths and per-head attention dims.
"""

from __future__ import annotations

import copy

import torch

from helper import ArgumentParser, count_macs, float_in, measure_latency, positive_int, run_cli
from models.superglue import SuperGlue
from models.superpoint import SuperPoint
from pruning.channel import prune_superglue_channels, prune_superpoint_channels


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main(argv: list[str] | None = None) -> None:
    p = ArgumentParser()
    p.add_argument("--ratio", type=float_in(0, 0.99), default=0.5)
    p.add_argument("--keypoints", type=positive_int, default=512)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sp = SuperPoint({"weights": None, "max_keypoints": args.keypoints}).eval()
    sp_pruned = copy.deepcopy(sp)
    prune_superpoint_channels(sp_pruned, args.ratio)
    image = torch.rand(1, 1, 480, 640)

    sg = SuperGlue({"weights": None, "sinkhorn_iterations": 20}).eval()
    sg_pruned = copy.deepcopy(sg)
    prune_superglue_channels(sg_pruned, args.ratio)
    n = args.keypoints
    data = {
        f"{k}{i}": v
        for i in (0, 1)
        for k, v in (
            ("keypoints", torch.rand(1, n, 2) * torch.tensor([639, 479])),
            ("scores", torch.rand(1, n)),
            ("descriptors", torch.nn.functional.normalize(torch.randn(1, 256, n), dim=1)),
        )
    }
    data.update(image_size0=(640, 480), image_size1=(640, 480))

    rows = []
    for name, model, call in (
        ("SuperPoint 640x480", sp, lambda m: m.dense(image)),
        ("SuperPoint 640x480", sp_pruned, lambda m: m.dense(image)),
        (f"SuperGlue {n}+{n} kpts", sg, lambda m: m(data)),
        (f"SuperGlue {n}+{n} kpts", sg_pruned, lambda m: m(data)),
    ):
        out = call(model)
        finite = all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else [out["log_assignment"]]))
        rows.append(
            (
                name,
                params(model),
                count_macs(lambda: call(model)),
                measure_latency(lambda: call(model), args.repeats)["latency_ms"],
                finite,
            )
        )

    print(f"channel pruning ratio {args.ratio}, {torch.get_num_threads()} CPU threads, median of {args.repeats}")
    print(f"{'model':<26}{'variant':<9}{'params':>12}{'GMACs':>9}{'ms':>9}{'finite':>8}")
    for i, (name, prm, macs, ms, finite) in enumerate(rows):
        variant = "dense" if i % 2 == 0 else "pruned"
        print(f"{name:<26}{variant:<9}{prm:>12,}{macs / 1e9:>9.2f}{ms:>9.1f}{str(finite):>8}")
        if i % 2:
            d = rows[i - 1]
            print(f"{'':<26}{'ratio':<9}{prm / d[1]:>12.2f}{macs / d[2]:>9.2f}{ms / d[3]:>9.2f}")


if __name__ == "__main__":
    run_cli(main)
