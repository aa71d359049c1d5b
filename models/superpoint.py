"""SuperPoint detector and descriptor, state_dict-compatible with the official ``superpoint_v1.pth``.

DeTone, Malisiewicz, Rabinovich: SuperPoint: Self-Supervised Interest Point Detection and Description,
CVPRW 2018. The post-processing (NMS, border removal, top-k, descriptor sampling) follows the official
release exactly, so the same weights give the same keypoints.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .graphs import DetectorGraph, register_graph
from .weights import load_weights


def simple_nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Zero every score that is not the maximum of its (2r+1)² window, with the official two refinement rounds."""
    if radius < 0:
        raise ValueError(f"nms_radius must be >= 0, got {radius}")

    def window_max(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, kernel_size=2 * radius + 1, stride=1, padding=radius)

    zeros = torch.zeros_like(scores)
    keep = scores == window_max(scores)
    for _ in range(2):
        # Positions next to a kept maximum are suppressed; a maximum of what remains is kept too.
        suppressed = window_max(keep.float()) > 0
        remaining = torch.where(suppressed, zeros, scores)
        keep = keep | ((remaining == window_max(remaining)) & ~suppressed)
    return torch.where(keep, scores, zeros)


def remove_borders(keypoints: torch.Tensor, scores: torch.Tensor, border: int, height: int, width: int):
    """Drop (row, col) keypoints closer than ``border`` pixels to the image border."""
    rows, cols = keypoints[:, 0], keypoints[:, 1]
    inside = (rows >= border) & (rows < height - border) & (cols >= border) & (cols < width - border)
    return keypoints[inside], scores[inside]


def top_k_keypoints(keypoints: torch.Tensor, scores: torch.Tensor, k: int):
    """Keep the ``k`` highest-scoring keypoints, sorted by score (all of them when there are fewer)."""
    if k >= len(keypoints):
        return keypoints, scores
    scores, order = torch.topk(scores, k, dim=0)
    return keypoints[order], scores


def sample_descriptors(keypoints: torch.Tensor, descriptors: torch.Tensor, s: int = 8) -> torch.Tensor:
    """Bilinearly sample B×C×h×w cell descriptors at B×N×2 (x, y) pixel keypoints; returns B×C×N, L2-normalised.

    Official convention: the descriptor of cell i sits at pixel s*i + s/2 - 0.5, so pixel x maps to the
    normalised grid coordinate (x - s/2 + 0.5) / (w*s - s/2 - 0.5) * 2 - 1 with align_corners=True.
    """
    b, c, h, w = descriptors.shape
    grid = keypoints - s / 2 + 0.5
    grid = grid / torch.tensor([w * s - s / 2 - 0.5, h * s - s / 2 - 0.5]).to(grid)[None]
    grid = grid * 2 - 1
    sampled = F.grid_sample(descriptors, grid.view(b, 1, -1, 2), mode="bilinear", align_corners=True)
    return F.normalize(sampled.reshape(b, c, -1), p=2, dim=1)


class SuperPoint(nn.Module):
    """SuperPoint: shared VGG encoder, 65-bin detector head and 256-d descriptor head."""

    default_config: dict[str, Any] = {
        "descriptor_dim": 256,
        "nms_radius": 4,
        "keypoint_threshold": 0.005,
        "max_keypoints": -1,
        "remove_borders": 4,
        "weights": "superpoint_v1",  # official name, a path, or None for random initialisation
    }
    encoder_names = ("conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b")

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**self.default_config, **(config or {})}
        mk = self.config["max_keypoints"]
        if mk == 0 or mk < -1:
            raise ValueError(f'"max_keypoints" must be positive or -1, got {mk}')

        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        widths = (64, 64, 64, 64, 128, 128, 128, 128)
        c_in = 1
        for name, c_out in zip(self.encoder_names, widths):
            setattr(self, name, nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1))
            c_in = c_out
        self.convPa = nn.Conv2d(c_in, 256, kernel_size=3, stride=1, padding=1)
        self.convPb = nn.Conv2d(256, 65, kernel_size=1, stride=1, padding=0)
        self.convDa = nn.Conv2d(c_in, 256, kernel_size=3, stride=1, padding=1)
        self.convDb = nn.Conv2d(256, self.config["descriptor_dim"], kernel_size=1, stride=1, padding=0)

        if self.config["weights"] is not None:
            load_weights(self, self.config["weights"])

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """B×1×H×W image in [0, 1] -> B×C×H/8×W/8 encoder features."""
        x = image
        for i, name in enumerate(self.encoder_names):
            x = self.relu(getattr(self, name)(x))
            if i in (1, 3, 5):
                x = self.pool(x)
        return x

    def dense(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network outputs before post-processing: B×H×W keypoint heatmap, B×D×H/8×W/8 normalised descriptors."""
        x = self.encode(image)
        logits = self.convPb(self.relu(self.convPa(x)))
        prob = F.softmax(logits, 1)[:, :-1]  # the 65th bin is "no keypoint in this cell"
        b, _, h, w = prob.shape
        heatmap = prob.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h * 8, w * 8)
        descriptors = F.normalize(self.convDb(self.relu(self.convDa(x))), p=2, dim=1)
        return heatmap, descriptors

    def forward(self, data: dict[str, torch.Tensor], dense: Callable | None = None) -> dict[str, list[torch.Tensor]]:
        """{'image': B×1×H×W} -> lists over the batch of keypoints N×2 (x, y), scores N, descriptors D×N.
        ``dense``: what computes ``dense`` outputs instead (a runtime's graph of it)."""
        heatmap, dense_desc = (dense or self.dense)(data["image"])
        keypoints, scores, descriptors = [], [], []
        for heat, desc in zip(simple_nms(heatmap, self.config["nms_radius"]), dense_desc):
            kpts, kscores = self._keypoints(heat)
            keypoints.append(kpts)
            scores.append(kscores)
            descriptors.append(sample_descriptors(kpts[None], desc[None], 8)[0])
        return {"keypoints": keypoints, "scores": scores, "descriptors": descriptors}

    def _keypoints(self, heat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(keypoints N×2 as x y, scores N) of one H×W heatmap after non-maximum suppression."""
        cfg = self.config
        kpts = torch.nonzero(heat > cfg["keypoint_threshold"])  # (row, col) in raster order
        kscores = heat[tuple(kpts.t())]
        kpts, kscores = remove_borders(kpts, kscores, cfg["remove_borders"], *heat.shape)
        if cfg["max_keypoints"] >= 0:
            kpts, kscores = top_k_keypoints(kpts, kscores, cfg["max_keypoints"])
        return torch.flip(kpts, [1]).float(), kscores

    def distill_outputs(self, image: torch.Tensor, keypoints: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """What distillation compares, for one image (1×1×H×W): ``score_map`` (1×H×W, the heatmap before
        suppression), and at ``keypoints`` (N×2 px, x y; by default its own) ``scores`` (N) and ``descriptors``
        (D×N)."""
        heatmap, desc = self.dense(image)
        if keypoints is None:
            keypoints, scores = self._keypoints(simple_nms(heatmap, self.config["nms_radius"])[0])
        else:
            pixel = keypoints.round().long()
            h, w = heatmap.shape[-2:]
            scores = heatmap[0, pixel[:, 1].clamp(0, h - 1), pixel[:, 0].clamp(0, w - 1)]
        descriptors = sample_descriptors(keypoints[None], desc, 8)[0]
        return {"score_map": heatmap, "keypoints": keypoints, "scores": scores, "descriptors": descriptors}


class _DenseNetwork(nn.Module):
    """SuperPoint's network without post-processing, as a module (image -> heatmap, descriptors)."""

    def __init__(self, sp: SuperPoint):
        super().__init__()
        self.sp = sp

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sp.dense(image)


# Its logits and descriptors feed a softmax / normalisation whose small differences decide keypoints: float.
register_graph(
    SuperPoint, DetectorGraph(_DenseNetwork, ("heatmap", "descriptors"), multiple=8, keep_float=("convPb", "convDb"))
)
