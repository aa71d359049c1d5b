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

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import torchvision
from kornia.color import grayscale_to_rgb
from kornia.feature import ALIKED
from kornia.feature.aliked.aliked import DKD, ALIKEDFeatures, DeformableConv2d, InputPadder
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


def _taps(y: torch.Tensor, x: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear interpolation of an h×w map at float pixel positions (n,): the flat indices (n×4) of the four
    integer neighbours, in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1), and their weights (n×4); a
    neighbour outside the map has weight 0 (its index is clamped into the map)."""
    y0, x0 = y.floor(), x.floor()
    wy, wx = y - y0, x - x0
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1], 1).long()
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1], 1).long()
    weights = torch.stack([(1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx], 1)
    weights = weights * ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))
    return rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1), weights


def _pixels(f: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The vectors (n×C) of an h×w×C map at flat pixel indices, read in the map's storage: rows of a channels-last
    map, or each channel's plane of a channel-planar one (a permuted C×h×w map, as the OpenVINO backend returns
    ALIKED's levels: reading its planes is cheaper than making the map channels-last first)."""
    h, w, c = f.shape
    if f.is_contiguous():
        return f.reshape(h * w, c).index_select(0, index)
    return f.permute(2, 0, 1).reshape(c, h * w).index_select(1, index).t()


def _bilinear(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows (n×C) of ``table`` (M×C) combined by ``index`` and ``weights`` (n×4): one fused gather and sum."""
    return F.embedding_bag(index, table, per_sample_weights=weights.to(table.dtype), mode="sum")


class _WindowDKD(DKD):
    """kornia's DKD (the same keypoints, scores and dispersities) whose sub-pixel refinement reads the score map's
    windows at the keypoints only: kornia unfolds the whole map first (25 values per pixel at radius 2)."""

    def forward(self, scores_map, sub_pixel=True, image_size=None, return_affine=False):
        if not sub_pixel or return_affine:
            return super().forward(scores_map, sub_pixel, image_size, return_affine)
        # kornia's choice of keypoints (local maxima, thresholds, limits), at their integer pixels
        kpts_int, _, _ = super().forward(scores_map, sub_pixel=False, image_size=image_size)
        b, _, h, w = scores_map.shape
        r, k = self.radius, self.kernel_size
        wh = torch.tensor(
            [w - 1, h - 1], device=scores_map.device, dtype=torch.promote_types(scores_map.dtype, torch.float32)
        )
        padded = F.pad(scores_map, (r, r, r, r)).reshape(b, -1)  # zeros outside, as unfold pads
        steps = torch.arange(k, device=scores_map.device)
        window = (steps[:, None] * (w + 2 * r) + steps[None, :]).reshape(-1)  # unfold's order: rows, then columns
        keypoints, scores, dispersities = [], [], []
        for i, kpts in enumerate(kpts_int):
            xy = ((kpts + 1) / 2 * wh).round().long()  # the integer pixels kornia normalized
            patch = padded[i][(xy[:, 1] * (w + 2 * r) + xy[:, 0])[:, None] + window]  # n × k², windows centred there
            weights = ((patch - patch.max(dim=1, keepdim=True).values) / self.temperature).exp()
            total = weights.sum(dim=1, keepdim=True)
            residual = weights @ self.hw_grid / total
            spread = (torch.norm((self.hw_grid[None] - residual[:, None]) / self.radius, dim=-1) ** 2 * weights).sum(1)
            refined = (xy.to(wh.dtype) + residual) / wh * 2 - 1
            score = F.grid_sample(
                scores_map[i : i + 1],
                refined.view(1, 1, -1, 2).to(scores_map.dtype),
                mode="bilinear",
                align_corners=True,
            )
            keypoints.append(refined)
            scores.append(score[0, 0, 0])
            dispersities.append(spread / total[:, 0])
        return keypoints, scores, dispersities


class RampedReLU(nn.Module):
    """ReLU (leaky with ``negative_slope``); while ``mix`` < 1 (a distillation's ramp from the teacher's activation),
    (1 - mix)·SELU + mix·ReLU."""

    def __init__(self, inplace: bool = False, negative_slope: float = 0.0):
        super().__init__()
        self.inplace, self.negative_slope, self.mix = inplace, negative_slope, 1.0

    def relu(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        if self.negative_slope:
            return F.leaky_relu(x, self.negative_slope, inplace=inplace)
        return F.relu(x, inplace=inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mix >= 1:
            return self.relu(x, self.inplace)
        return torch.lerp(F.selu(x), self.relu(x, False), self.mix)


# The dense part's activation; the pretrained weights are SELU's. leaky_relu's slope: the least-squares fit of SELU
# on the negative inputs of the pretrained network's activations (54 % of them; on two training photos).
ACTIVATIONS = {
    "selu": nn.SELU,
    "relu": RampedReLU,
    "leaky_relu": lambda inplace: RampedReLU(inplace, negative_slope=0.7),
}


class PyramidALIKED(ALIKED):
    """kornia's ALIKED (same constructor, weights and outputs) whose descriptor map is never made dense.

    ``activation="relu"`` (or ``"leaky_relu"``): the dense part (blocks, level and score heads) computes ReLU where
    ALIKED computes SELU — a student to distil from the pretrained ALIKED (finetune.py ``distill``), not a pretrained
    network: ONNX Runtime fuses ReLU into the convolutions and keeps its blocked layout, and SELU's ELU leaves it
    (1.7× the time of the ReLU graph for a 640×480 image here, 1.4× the leaky one's). The descriptor head keeps SELU
    (it runs at the keypoints only)."""

    def __init__(self, *args, activation: str = "selu", **kwargs):
        super().__init__(*args, **kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        if activation != "selu":
            _replace_gate(self, ACTIVATIONS[activation](inplace=True))
        dkd = self.dkd
        self.dkd = _WindowDKD(dkd.radius, dkd.top_k, dkd.scores_th, dkd.n_limit)
        for block in (self.block1, self.block2, self.block3, self.block4):
            for name in ("conv1", "conv2"):
                if isinstance(getattr(block, name), DeformableConv2d):
                    setattr(block, name, _DeformConv(getattr(block, name)))

    def set_activation_mix(self, mix: float) -> None:
        """A ReLU student's way from SELU (``mix`` 0: the pretrained network's function) to ReLU (1, its own)."""
        if self.activation == "selu":
            raise ValueError("an ALIKED computing SELU has no activation to ramp (detector.activation: relu has)")
        self.gate.mix = float(min(max(mix, 0.0), 1.0))

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
        return F.normalize(torch.cat(self._levels_at(levels, pad, y, x), dim=1), p=2, dim=1)

    def _levels_at(self, levels: list[torch.Tensor], pad: tuple[int, int], y: torch.Tensor, x: torch.Tensor):
        """Each level's part (n×C) of the dense map's feature vectors at integer pixels (y, x), not normalized."""
        height, width = levels[0].shape[:2]
        yp, xp = y + pad[0], x + pad[1]
        parts = []
        for f, factor in zip(levels, _LEVELS):
            h, w = f.shape[:2]
            if factor == 1:
                parts.append(_pixels(f, yp * width + xp))
            else:  # align_corners=True upsampling: output pixel i reads input position i * (h - 1) / (H - 1)
                table = f.reshape(h * w, -1)
                sy = (h - 1) / (height - 1) if height > 1 else 0.0
                sx = (w - 1) / (width - 1) if width > 1 else 0.0
                parts.append(_bilinear(table, *_taps(yp.to(f.dtype) * sy, xp.to(f.dtype) * sx, h, w)))
        return parts

    def describe(self, levels: list[torch.Tensor], pad: tuple[int, int], size: tuple[int, int], kpts: torch.Tensor):
        """SDDH's descriptors (n×dim) at one image's keypoints (normalized to [-1, 1]), as kornia's SDDH computes
        them on the dense map of an image of ``size`` (h, w)."""
        head = self.desc_head
        h, w = size
        dim = sum(f.shape[-1] for f in levels)
        wh = torch.tensor([[w - 1, h - 1]], device=kpts.device, dtype=torch.promote_types(kpts.dtype, torch.float32))
        max_offset = max(h, w) / 4.0
        kpts_wh = (kpts / 2 + 0.5) * wh
        n, k = len(kpts), head.kernel_size
        pixel = kpts_wh.long()
        if k > 1:  # kornia's get_patches: a k×k patch whose corner is clamped k + 1 pixels from the far edges
            corner = (pixel - k / 2 + 1).long()
            x0, y0 = corner[:, 0].clamp(min=0, max=w - 1 - k), corner[:, 1].clamp(min=0, max=h - 1 - k)
            steps = torch.arange(k, device=kpts.device)
            ys = (y0[:, None, None] + steps[None, :, None]).expand(n, k, k)
            xs = (x0[:, None, None] + steps[None, None, :]).expand(n, k, k)
        else:
            ys, xs = pixel[:, 1].view(n, 1, 1), pixel[:, 0].view(n, 1, 1)
        patch = self.features_at(levels, pad, ys.reshape(-1), xs.reshape(-1)).reshape(n, k, k, dim).permute(0, 3, 1, 2)
        offset = head.offset_conv(patch).clamp(-max_offset, max_offset)
        mask = None
        if head.mask:
            offset = offset[:, :, 0, 0].view(n, 3, head.n_pos).permute(0, 2, 1)
            mask, offset = torch.sigmoid(offset[:, :, -1]), offset[:, :, :-1]
        else:
            offset = offset[:, :, 0, 0].view(n, 2, head.n_pos).permute(0, 2, 1)
        pos = (kpts_wh.unsqueeze(1) + offset).reshape(-1, 2)  # pixels, as grid_sample(align_corners=True) reads
        pos = ((2.0 * pos / wh - 1) + 1) / 2 * wh  # kornia's round trip through [-1, 1], for the same rounding
        features = self._sample(levels, pad, size, pos[:, 1], pos[:, 0]).reshape(n, head.n_pos, dim)
        if mask is not None:
            features = features * mask[:, :, None]
        # sf_conv (1×1, no bias) and the aggregation as matrix products over the n_pos samples of every keypoint
        features = torch.selu_(features @ head.sf_conv.weight.flatten(1).t())  # n × n_pos × channels
        width = features.shape[1] * features.shape[2]
        if head.conv2d:  # convM reads (channel, sample)
            descs = features.transpose(1, 2).reshape(n, width) @ head.convM.weight.flatten(1).t()
        else:  # kornia's einsum("ncp,pcd->nd") over (sample, channel)
            descs = features.reshape(n, width) @ head.agg_weights.flatten(0, 1)
        return F.normalize(descs, p=2.0, dim=1)

    def _sample(self, levels, pad, size, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``grid_sample`` (bilinear, zeros outside) of the normalized dense map at float pixels (n×dim). The
        feature vector of each distinct pixel read is evaluated once, and its norm divides the interpolation
        weights instead of the vector (the same sum, without a normalized copy of every vector)."""
        h, w = size
        index, weights = _taps(y, x, h, w)
        unique, inverse = torch.unique(index, return_inverse=True)
        parts = self._levels_at(levels, pad, unique // w, unique % w)
        norm = sum(torch.linalg.vector_norm(p, dim=1).square() for p in parts).sqrt().clamp_min(1e-12)  # F.normalize
        weights = weights / norm[inverse]
        return torch.cat([_bilinear(p, inverse, weights) for p in parts], dim=1)

    def forward(
        self, images: torch.Tensor, image_size: Optional[torch.Tensor] = None, dense: Optional[Callable] = None
    ) -> list[ALIKEDFeatures]:
        """kornia's ALIKED.forward; ``dense``: what computes ``dense`` outputs instead (a runtime's graph of it)."""
        if images.shape[1] == 1:
            images = grayscale_to_rgb(images)
        h, w = images.shape[-2:]
        pad, wh = _padding(h, w), _wh(images)
        score_map, *levels = (dense or self.dense)(images)
        keypoints, scores, _ = self.dkd(score_map, image_size=image_size)
        out = []
        for i, (kpts, kpt_scores) in enumerate(zip(keypoints, scores)):
            descs = self.describe(_one_image(levels, i), pad, (h, w), kpts)
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
        descs = self.describe(_one_image(levels, 0), _padding(h, w), (h, w), kpts)
        return {"score_map": score_map[:, 0], "keypoints": keypoints, "scores": scores, "descriptors": descs.t()}


def _one_image(levels: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    """Image ``i``'s h×w×C levels as the descriptor head reads them: the full-resolution one in its storage (read
    pixel by pixel, ``_pixels``), the coarser ones channels-last (read as interpolation tables)."""
    return [f[i] if k == 0 else f[i].contiguous() for k, f in enumerate(levels)]


def _padding(h: int, w: int) -> tuple[int, int]:
    """The top and left padding kornia's ALIKED puts around an h×w image."""
    padder = InputPadder(h, w, _PAD)
    return padder._pad[2], padder._pad[0]


def _wh(images: torch.Tensor) -> torch.Tensor:
    """(W - 1, H - 1) of a batch, the scale of ALIKED's normalized keypoints."""
    h, w = images.shape[-2:]
    return torch.tensor([w - 1, h - 1], device=images.device, dtype=torch.promote_types(images.dtype, torch.float32))


def _replace_gate(aliked: PyramidALIKED, gate: nn.Module) -> None:
    """Every SELU of the dense part (not of the descriptor head, which reads the normalized map) becomes ``gate``."""
    for name, module in aliked.named_modules():
        if name.startswith("desc_head"):
            continue
        for child_name, child in list(module._modules.items()):  # named_children() lists a shared module once
            if isinstance(child, nn.SELU):
                setattr(module, child_name, gate)
    aliked.gate = gate


def _without_selu_scale(aliked: PyramidALIKED) -> PyramidALIKED:
    """A copy whose ``dense`` computes ELU where ALIKED computes SELU, and gives the same score map and the four
    levels divided by SELU's scale, which the descriptor head's L2 normalization cancels.

    SELU(x) = scale · ELU(x), and every layer that reads an activation is linear in it (convolutions, batch norm
    after them, average pooling, the sampling and the offsets of the deformable convolutions), so the scale moves
    into those layers' weights. A graph then has no multiplication by the scale over every activation (in ONNX
    Runtime: Elu, then Mul over each full-resolution map; the Mul nodes took ~10 % of the graph's time).
    """
    if not isinstance(aliked.gate, nn.SELU):
        return aliked
    net = copy.deepcopy(aliked)
    scale = 1.0507009873554804934193349852946  # torch.nn.SELU's constants
    elu = nn.ELU(alpha=1.6732632423543772848170429916717)
    _replace_gate(net, elu)
    for name, module in net.named_modules():
        # every convolution of dense() reads an activation, but the first one, which reads the image
        if isinstance(module, nn.Conv2d) and name != "block1.conv1" and not name.startswith("desc_head"):
            with torch.no_grad():
                module.weight.mul_(scale)
    return net


class _Dense(nn.Module):
    """The exported part: image -> (score map, the four levels divided by SELU's scale)."""

    def __init__(self, aliked: PyramidALIKED):
        super().__init__()
        self.aliked = _without_selu_scale(aliked)

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
        after=("desc_head",),  # the descriptor head reads the levels at the keypoints
    ),
)
