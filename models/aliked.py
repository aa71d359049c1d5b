"""ALIKED computed without its dense descriptor map: the same network, weights and outputs as kornia's, faster.

kornia's ``ALIKED.extract_dense_map`` upsamples the four pyramid levels to full resolution, concatenates them and
L2-normalizes a 128-channel map of the whole image (157 MB at 640×480), but the descriptor head (SDDH) reads that
map at about 73 pixels per keypoint only (a 3×3 patch and the 4 neighbours of each of its 16 samples). Here

* the score head's first layer (a 1×1 convolution, linear) runs on each level before upsampling, which commutes
  with it: 8 channels are upsampled instead of 128 — the score map is the same up to float rounding;
* the dense part (``dense``: score map + the four levels) is all that runs on the whole image, and all that a
  runtime graph needs to hold (models/graphs.py registers it);
* the normalized feature vector is evaluated only at the pixels the descriptor head reads, by the bilinear
  weights of ``align_corners=True`` upsampling, and sampled as ``grid_sample`` does.

Deformable convolutions run through ``torchvision.ops.deform_conv2d`` (the same values as kornia's pure-PyTorch
one; ONNX export maps it to the ``DeformConv`` op). ``tests/test_aliked.py`` checks keypoints, scores and
descriptors against kornia's ALIKED; benchmarks/detector_runtimes.py times both (321 vs 472 ms at 640×480 here).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import torchvision
from kornia.color import grayscale_to_rgb
from kornia.feature import ALIKED
from kornia.feature.aliked.aliked import ALIKEDFeatures, DeformableConv2d, InputPadder, get_patches
from torch import nn

from .graphs import DetectorGraph, register_graph

_PAD = 32  # ALIKED's input multiple (the stride of its coarsest level)
_LEVELS = (1, 2, 8, 32)  # the upsampling factor of each level's features in the concatenation


class _DeformConv(nn.Module):
    """kornia's ``DeformableConv2d`` (same submodules and state_dict) through ``torchvision.ops.deform_conv2d``."""

    def __init__(self, original: DeformableConv2d):
        super().__init__()
        self.offset_conv, self.regular_conv = original.offset_conv, original.regular_conv
        self.stride, self.padding, self.dilation, self.mask = (
            original.stride,
            original.padding,
            original.dilation,
            original.mask,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_offset = max(x.shape[2:]) / 4.0
        out = self.offset_conv(x)
        mask = None
        if self.mask:
            o1, o2, mask = torch.chunk(out, 3, dim=1)
            out, mask = torch.cat((o1, o2), dim=1), torch.sigmoid(mask)
        return torchvision.ops.deform_conv2d(
            x,
            out.clamp(-max_offset, max_offset),
            self.regular_conv.weight,
            self.regular_conv.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )


def _taps(y: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four integer neighbours (rows 4×n, columns 4×n) of float pixel positions (n,) and their bilinear
    weights (4×n), in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1)."""
    y0, x0 = y.floor(), x.floor()
    wy, wx = y - y0, x - x0
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1]).long()
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1]).long()
    weights = torch.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx])
    return rows, cols, weights


def _bilinear(fmap: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Values (n×C) of an H×W×C map at float pixel positions (n,) inside it, interpolated bilinearly."""
    h, w, c = fmap.shape
    rows, cols, weights = _taps(y, x)
    index = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)  # a neighbour past the edge has weight 0
    values = fmap.reshape(h * w, c).index_select(0, index.reshape(-1)).reshape(4, -1, c)
    return (values * weights[..., None]).sum(0)


class PyramidALIKED(ALIKED):
    """kornia's ALIKED (same constructor, weights and outputs) whose descriptor map is never made dense."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for block in (self.block1, self.block2, self.block3, self.block4):
            for name in ("conv1", "conv2"):
                if isinstance(getattr(block, name), DeformableConv2d):
                    setattr(block, name, _DeformConv(getattr(block, name)))

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The part that runs on every pixel: (score map cropped to the image, the four levels' features on the
        image padded to multiples of 32 as kornia pads it, channels last: N×h×w×C)."""
        padder = InputPadder(image.shape[-2], image.shape[-1], _PAD)
        x1 = self.block1(padder.pad(image))
        x2 = self.block2(self.pool2(x1))
        x3 = self.block3(self.pool4(x2))
        x4 = self.block4(self.pool4(x3))
        levels = [
            self.gate(conv(x)) for conv, x in zip((self.conv1, self.conv2, self.conv3, self.conv4), (x1, x2, x3, x4))
        ]
        first = self.score_head[0]  # 1×1, no bias: split by level, applied before upsampling
        weights = first.weight.split([f.shape[1] for f in levels], dim=1)
        size = x1.shape[-2:]
        score = F.conv2d(levels[0], weights[0])
        for f, w in zip(levels[1:], weights[1:]):
            score = score + F.interpolate(F.conv2d(f, w), size=size, mode="bilinear", align_corners=True)
        score = torch.sigmoid(self.score_head[1:](score))
        return (padder.unpad(score), *(f.permute(0, 2, 3, 1) for f in levels))

    def features_at(self, levels: list[torch.Tensor], pad: tuple[int, int], y: torch.Tensor, x: torch.Tensor):
        """The L2-normalized feature vectors (n×dim) of the dense map kornia would build, at integer pixels (y, x)
        of the image (levels: one image's h×w×C maps, on the padded image; pad: its top and left padding)."""
        height, width = levels[0].shape[:2]
        yp, xp = (y + pad[0]).to(levels[0].dtype), (x + pad[1]).to(levels[0].dtype)
        parts = []
        for f, factor in zip(levels, _LEVELS):
            h, w = f.shape[:2]
            if factor == 1:
                parts.append(f.reshape(h * w, -1).index_select(0, (y + pad[0]) * width + x + pad[1]))
            else:  # align_corners=True upsampling: output pixel i reads input position i * (h - 1) / (H - 1)
                sy = (h - 1) / (height - 1) if height > 1 else 0.0
                sx = (w - 1) / (width - 1) if width > 1 else 0.0
                parts.append(_bilinear(f, yp * sy, xp * sx))
        return F.normalize(torch.cat(parts, dim=1), p=2, dim=1)

    def describe(self, levels: list[torch.Tensor], pad: tuple[int, int], size: tuple[int, int], kpts: torch.Tensor):
        """SDDH's descriptors (n×dim) at one image's keypoints (normalized to [-1, 1]), as kornia's SDDH computes
        them on the dense map of an image of ``size`` (h, w)."""
        head = self.desc_head
        h, w = size
        dim = sum(f.shape[-1] for f in levels)
        wh = torch.tensor([[w - 1, h - 1]], device=kpts.device, dtype=torch.promote_types(kpts.dtype, torch.float32))
        max_offset = max(h, w) / 4.0
        kpts_wh = (kpts / 2 + 0.5) * wh
        n = len(kpts)
        if head.kernel_size > 1:  # the patch's pixels, in kornia's order: its indexing applied to a coordinate map
            grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).to(kpts.device)
            pixels = get_patches(grid, kpts_wh.long(), head.kernel_size)  # n × 2 × k × k (y, x)
        else:
            pixels = kpts_wh.long().flip(1).reshape(n, 2, 1, 1)
        k = pixels.shape[-1]
        yx = pixels.permute(0, 2, 3, 1).reshape(-1, 2)
        patch = self.features_at(levels, pad, yx[:, 0], yx[:, 1]).reshape(n, k, k, dim).permute(0, 3, 1, 2)
        offset = head.offset_conv(patch).clamp(-max_offset, max_offset)
        mask = None
        if head.mask:
            offset = offset[:, :, 0, 0].view(n, 3, head.n_pos).permute(0, 2, 1)
            mask, offset = torch.sigmoid(offset[:, :, -1]), offset[:, :, :-1]
        else:
            offset = offset[:, :, 0, 0].view(n, 2, head.n_pos).permute(0, 2, 1)
        pos = (kpts_wh.unsqueeze(1) + offset).reshape(-1, 2)  # pixels, as grid_sample(align_corners=True) reads
        pos = ((2.0 * pos / wh - 1) + 1) / 2 * wh  # kornia's round trip through [-1, 1], for the same rounding
        features = self._sample(levels, pad, size, pos[:, 1], pos[:, 0])  # (n·n_pos)×dim
        features = features.reshape(n, head.n_pos, dim).permute(0, 2, 1).unsqueeze(-1)  # n×dim×n_pos×1
        if mask is not None:
            features = features * mask[:, None, :, None]
        features = torch.selu_(head.sf_conv(features)).squeeze(-1)
        if head.conv2d:
            descs = head.convM(features.reshape(n, -1)[:, :, None, None]).squeeze(-1).squeeze(-1)
        else:
            descs = torch.einsum("ncp,pcd->nd", features, head.agg_weights)  # codespell:ignore
        return F.normalize(descs, p=2.0, dim=1)

    def _sample(self, levels, pad, size, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``grid_sample`` (bilinear, zeros outside) of the normalized dense map at float pixels (n×dim); the
        feature vector of each distinct pixel read is evaluated once."""
        h, w = size
        rows, cols, weights = _taps(y, x)
        weights = weights * ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))
        index = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
        unique, inverse = torch.unique(index, return_inverse=True)
        feats = self.features_at(levels, pad, unique // w, unique % w)[inverse.reshape(-1)]
        return (feats.reshape(4, len(y), feats.shape[-1]) * weights[..., None]).sum(0)

    def forward(self, images: torch.Tensor, image_size: Optional[torch.Tensor] = None) -> list[ALIKEDFeatures]:
        if images.shape[1] == 1:
            images = grayscale_to_rgb(images)
        h, w = images.shape[-2:]
        pad, wh = _padding(h, w), _wh(images)
        score_map, *levels = self.dense(images)
        keypoints, scores, _ = self.dkd(score_map, image_size=image_size)
        out = []
        for i, (kpts, kpt_scores) in enumerate(zip(keypoints, scores)):
            descs = self.describe([f[i].contiguous() for f in levels], pad, (h, w), kpts)
            out.append(ALIKEDFeatures(wh * (kpts + 1) / 2.0, descs, kpt_scores))
        return out

    def distill_outputs(self, image: torch.Tensor, keypoints: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What distillation compares, for one RGB image (1×3×H×W): ``score_map`` (1×H×W), and at ``keypoints``
        (N×2 px, x y; by default its own) ``scores`` (N, the map there) and ``descriptors`` (D×N)."""
        h, w = image.shape[-2:]
        wh = _wh(image)
        score_map, *levels = self.dense(image)
        if keypoints is None:
            kpts, scores, _ = self.dkd(score_map)
            kpts, scores = kpts[0], scores[0]
            keypoints = wh * (kpts + 1) / 2.0
        else:
            kpts = keypoints / wh * 2 - 1
            pixel = keypoints.round().long()
            scores = score_map[0, 0, pixel[:, 1].clamp(0, h - 1), pixel[:, 0].clamp(0, w - 1)]
        descs = self.describe([f[0].contiguous() for f in levels], _padding(h, w), (h, w), kpts)
        return {"score_map": score_map[:, 0], "keypoints": keypoints, "scores": scores, "descriptors": descs.t()}


def _padding(h: int, w: int) -> tuple[int, int]:
    """The top and left padding kornia's ALIKED puts around an h×w image."""
    padder = InputPadder(h, w, _PAD)
    return padder._pad[2], padder._pad[0]


def _wh(images: torch.Tensor) -> torch.Tensor:
    """(W - 1, H - 1) of a batch, the scale of ALIKED's normalized keypoints."""
    h, w = images.shape[-2:]
    return torch.tensor([w - 1, h - 1], device=images.device, dtype=torch.promote_types(images.dtype, torch.float32))


class _Dense(nn.Module):
    """The exported part: image -> (score map, the four levels)."""

    def __init__(self, aliked: PyramidALIKED):
        super().__init__()
        self.aliked = aliked

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.aliked.dense(image)


# Any image size (the graph pads as kornia does). DeformConv is an opset-19 op. The score head stays float (its
# logits pick the keypoints), and so do the offsets of the deformable convolutions.
register_graph(
    PyramidALIKED,
    DetectorGraph(
        _Dense,
        ("score_map", "level1", "level2", "level3", "level4"),
        multiple=1,
        keep_float=("score_head", "offset_conv"),
        opset=19,
    ),
)
