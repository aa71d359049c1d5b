"""Should Torch-Pruning do our channel bookkeeping? Ours vs Torch-Pruning's DependencyGraph, side by side.

    pip install torch-pruning==1.6.1 && python benchmarks/torch_pruning_comparison.py

1. SuperPoint, 50 % of every prunable channel, L2 magnitude: parameters, MACs, time to prune, and whether
   both keep the detector/descriptor outputs valid.
2. SuperGlue attention: the official layout interleaves heads (channel c is in head c % 4). Channels that
   nobody uses are zeroed in that layout; a correct per-head-dim pruning must then leave the outputs unchanged.
"""

from __future__ import annotations

import copy
import time

import torch

from helper import count_macs
from models.superglue import SuperGlue
from models.superpoint import SuperPoint
from pruning.channel import prune_attention, prune_superpoint_channels


class DenseSuperPoint(torch.nn.Module):
    """SuperPoint's network outputs as a traceable forward (Torch-Pruning traces tensors, not lists)."""

    def __init__(self, sp):
        super().__init__()
        self.sp = sp

    def forward(self, image):
        return self.sp.dense(image)


def superpoint_comparison(tp) -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 1, 240, 320)
    dense = SuperPoint({"weights": None}).eval()
    ours = copy.deepcopy(dense)
    start = time.perf_counter()
    prune_superpoint_channels(ours, 0.5)
    t_ours = time.perf_counter() - start

    theirs = DenseSuperPoint(copy.deepcopy(dense))
    start = time.perf_counter()
    pruner = tp.pruner.BasePruner(
        theirs,
        image,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[theirs.sp.convPb, theirs.sp.convDb],
    )
    pruner.step()
    t_theirs = time.perf_counter() - start
    print("SuperPoint, 50 % channels (L2):")
    for name, model, t in (("dense", dense, 0.0), ("ours", ours, t_ours), ("torch-pruning", theirs.sp, t_theirs)):
        heat, desc = model.dense(image)
        ok = heat.shape == (1, 240, 320) and desc.shape == (1, 256, 30, 40) and torch.isfinite(desc).all()
        params = sum(p.numel() for p in model.parameters())
        print(
            f"  {name:<14} params {params:>10,}  GMACs {count_macs(lambda: model.dense(image)) / 1e9:6.2f}  "
            f"prune {t * 1000:7.1f} ms  valid outputs {bool(ok)}"
        )
    same = sum(
        int(getattr(ours, n).out_channels == getattr(theirs.sp, n).out_channels)
        for n in ("conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b")
    )
    print(f"  encoder layers with equal widths: {same}/8")


def unused_kept(attn) -> int:
    """Kept key channels whose weights are all zero (the unused ones a correct pruning removes)."""
    w = attn.proj[1].weight.detach()
    return int((w.reshape(w.shape[0], -1) == 0).all(1).sum())


def superglue_attention_comparison(tp) -> None:
    torch.manual_seed(0)
    sg = SuperGlue({"weights": None, "GNN_layers": ["self"]}).eval()
    attn = sg.gnn.layers[0].attn
    heads, dim = attn.num_heads, attn.dim
    unused = torch.tensor([j * heads + h for j in range(dim // 2, dim) for h in range(heads)])
    with torch.no_grad():
        for layer in attn.proj:
            layer.weight[unused] = 0
            layer.bias[unused] = 0
        attn.merge.weight[:, unused] = 0
    g = torch.Generator().manual_seed(1)
    data = {
        "keypoints0": torch.rand(1, 64, 2, generator=g) * 100,
        "keypoints1": torch.rand(1, 48, 2, generator=g) * 100,
        "scores0": torch.rand(1, 64, generator=g),
        "scores1": torch.rand(1, 48, generator=g),
        "descriptors0": torch.randn(1, 256, 64, generator=g),
        "descriptors1": torch.randn(1, 256, 48, generator=g),
        "image_size0": (100, 100),
        "image_size1": (100, 100),
    }
    reference = sg(data)["log_assignment"]

    ours = copy.deepcopy(sg)
    prune_attention(ours.gnn.layers[0].attn, dim_ratio=0.5)
    err_ours = (ours(data)["log_assignment"] - reference).abs().max().item()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m({**data, "descriptors0": x})["log_assignment"]

    theirs = Wrapped(copy.deepcopy(sg))
    a = theirs.m.gnn.layers[0].attn
    try:
        pruner = tp.pruner.BasePruner(
            theirs,
            data["descriptors0"],
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            num_heads={a.proj[0]: heads, a.proj[1]: heads, a.proj[2]: heads},
            prune_head_dims=True,
            root_module_types=[torch.nn.Conv1d],
            ignored_layers=[
                m for n, m in theirs.m.named_modules() if isinstance(m, torch.nn.Conv1d) and "attn.proj" not in n
            ],
        )
        pruner.step()
        a.dim = a.proj[0].out_channels // heads  # Torch-Pruning cannot see the view(); set it by hand
        err_theirs = (theirs(data["descriptors0"]) - reference).abs().max().item()
        widths = [layer.out_channels for layer in a.proj] + [a.merge.in_channels]
        theirs_text = (
            f"max |Δ log assignment| {err_theirs:.2e} (q, k, v, merge widths {widths}; "
            f"{unused_kept(a)} of the {widths[1]} kept channels are unused ones)"
        )
    except Exception as e:  # report, do not hide, how it fails
        theirs_text = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    print("SuperGlue attention, half of every head's dims unused (interleaved layout):")
    print(
        f"  ours           max |Δ log assignment| {err_ours:.2e} "
        f"({unused_kept(ours.gnn.layers[0].attn)} of the kept channels are unused ones)"
    )
    print(f"  torch-pruning  {theirs_text}")


def main() -> None:
    import torch_pruning as tp

    torch.set_num_threads(2)
    superpoint_comparison(tp)
    superglue_attention_comparison(tp)


if __name__ == "__main__":
    main()
