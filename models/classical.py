"""The classical baseline: OpenCV SIFT with mutual nearest-neighbour matching and Lowe's ratio test."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from .matching import Features, Matcher, register_matcher


class SIFT(nn.Module):
    """OpenCV SIFT as a (parameter-free) module; RootSIFT descriptors by default."""

    default_config = {"max_keypoints": 1024, "contrast_threshold": 0.04, "rootsift": True}

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**self.default_config, **(config or {})}

    def forward(self, image: torch.Tensor) -> Features:
        cfg = self.config
        sift = cv2.SIFT_create(nfeatures=max(cfg["max_keypoints"], 0), contrastThreshold=cfg["contrast_threshold"])
        out: Features = {"keypoints": [], "scores": [], "descriptors": []}
        for img in image[:, 0]:
            gray = (img.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            kps, desc = sift.detectAndCompute(gray, None)
            if desc is None:
                desc = np.zeros((0, 128), np.float32)
            if cfg["max_keypoints"] > 0:  # OpenCV may return a few more when responses tie
                order = np.argsort([-k.response for k in kps], kind="stable")[: cfg["max_keypoints"]]
                kps, desc = [kps[i] for i in order], desc[order]
            desc = torch.from_numpy(desc.astype(np.float32)).to(image.device)
            if cfg["rootsift"]:
                desc = torch.sqrt(nn.functional.normalize(desc, p=1, dim=1))
            out["keypoints"].append(
                torch.tensor([k.pt for k in kps], dtype=torch.float32, device=image.device).reshape(-1, 2)
            )
            out["scores"].append(torch.tensor([k.response for k in kps], dtype=torch.float32, device=image.device))
            out["descriptors"].append(nn.functional.normalize(desc, dim=1).t())
        return out


class MutualNearestNeighbour(nn.Module):
    """Mutual nearest neighbours of L2-normalised descriptors that also pass the ratio test."""

    default_config = {"ratio_threshold": 0.8, "distance_threshold": None}

    def __init__(self, config: dict[str, Any] | None = None):
        super().__init__()
        self.config = {**self.default_config, **(config or {})}

    def forward(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        d0, d1 = data["descriptors0"], data["descriptors1"]  # B×D×M, B×D×N
        b, m, n = d0.shape[0], d0.shape[2], d1.shape[2]
        if m == 0 or n == 0:
            return {
                "matches0": d0.new_full((b, m), -1, dtype=torch.long),
                "matches1": d1.new_full((b, n), -1, dtype=torch.long),
                "matching_scores0": d0.new_zeros((b, m)),
                "matching_scores1": d1.new_zeros((b, n)),
            }
        sim = torch.einsum("bdm,bdn->bmn", d0, d1)
        dist = (2 - 2 * sim).clamp(min=0).sqrt()
        matches0 = self._one_way(dist, self.config)
        matches1 = self._one_way(dist.transpose(1, 2), self.config)
        mutual0 = (matches0 >= 0) & (matches1.gather(1, matches0.clamp(min=0)) == torch.arange(m, device=d0.device))
        matches0 = torch.where(mutual0, matches0, -1)
        mutual1 = (matches1 >= 0) & (matches0.gather(1, matches1.clamp(min=0)) == torch.arange(n, device=d0.device))
        matches1 = torch.where(mutual1, matches1, -1)
        scores0 = torch.where(mutual0, sim.gather(2, matches0.clamp(min=0)[..., None])[..., 0], 0.0)
        scores1 = torch.where(mutual1, sim.transpose(1, 2).gather(2, matches1.clamp(min=0)[..., None])[..., 0], 0.0)
        return {"matches0": matches0, "matches1": matches1, "matching_scores0": scores0, "matching_scores1": scores1}

    @staticmethod
    def _one_way(dist: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
        k = min(2, dist.shape[2])
        best = dist.topk(k, dim=2, largest=False)
        ok = torch.ones_like(best.values[..., 0], dtype=torch.bool)
        if k == 2 and cfg["ratio_threshold"] is not None:
            ok &= best.values[..., 0] <= cfg["ratio_threshold"] * best.values[..., 1]
        if cfg["distance_threshold"] is not None:
            ok &= best.values[..., 0] <= cfg["distance_threshold"]
        return torch.where(ok, best.indices[..., 0], -1)


@register_matcher
class SiftNN(Matcher):
    """SIFT + mutual nearest neighbour. Config: {'detector': {...SIFT}, 'matcher': {...ratio test}}."""

    name = "sift+nn"
    offline = True  # no weights at all
    channels = 1

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        super().__init__(SIFT(config.get("detector")), MutualNearestNeighbour(config.get("matcher")), config)

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {"detector": SIFT.default_config, "matcher": MutualNearestNeighbour.default_config, "pretrained": True}

    def detect(self, image: torch.Tensor) -> Features:
        return self.detector(image)

    def match(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.matcher(data)
