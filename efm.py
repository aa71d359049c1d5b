"""The project from Python in one import: ready pipelines, matching two images, compression, checkpoints, evaluation.

    import efm
    pipeline = efm.load("fast")                         # a preset, a matcher of the zoo, or a checkpoint file
    matches = efm.match(pipeline, "left.jpg", "right.jpg")
    print(len(matches), matches.points0[:3], matches.points1[:3], matches.scores[:3])
    small = efm.compress(pipeline, "kmeans", bits=4)    # a new pipeline: ``pipeline`` is left as it was
    efm.save(small, "small.pth")
    print(efm.evaluate(efm.load("small.pth"), num_pairs=20, against=pipeline)["vs"]["auc@3px"])

A pipeline is a ``models.matching.Matcher`` (detector + matching network), the one interface every command line, the
experiment engine and the checkpoints use; this module is a thin layer over them (``models/``, ``compression/``,
``pipeline/``), which stay the place to extend (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compression.methods import METHODS, Job, steps, variant_settings
from data.pairs import TIERS, make_pairs
from helper import InputError, check_config, load_config, merge_config, read_image, to_tensor
from models.matching import Matcher, available_matchers, build_matcher, check_matcher_config, to_channels
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.evaluation import FeatureCache
from pipeline.evaluation import evaluate as evaluate_pairs
from pipeline.experiment import DEFAULTS, ROOT, VARIANT, VARIANT_CHECKS, check_against, check_variant
from pipeline.metrics import paired_difference
from pipeline.presets import PRESETS
from pipeline.tiers import sections

__all__ = ["PRESETS", "Matches", "compress", "evaluate", "load", "match", "methods", "pipelines", "save"]


@dataclass(frozen=True)
class Matches:
    """The matches of one image pair, as plain arrays in the given images' pixels (x, y).

    ``points0[i]`` in image 0 matches ``points1[i]`` in image 1 with confidence ``scores[i]``; ``indices`` holds the
    pair's keypoint indices (K×2) into ``keypoints0`` / ``keypoints1``, every keypoint each detector found."""

    points0: np.ndarray  # K×2 float32
    points1: np.ndarray  # K×2 float32
    scores: np.ndarray  # K float32, in [0, 1]
    indices: np.ndarray  # K×2 int64
    keypoints0: np.ndarray  # N×2 float32
    keypoints1: np.ndarray  # M×2 float32

    def __len__(self) -> int:
        return len(self.scores)


def pipelines() -> list[str]:
    """What ``load`` takes by name: the presets, then the matchers of the zoo."""
    return [*PRESETS, *available_matchers()]


def methods() -> list[str]:
    """What ``compress`` takes: the registered compression methods (several joined by '+' run in order)."""
    return list(METHODS)


@lru_cache(maxsize=1)
def _demo() -> dict[str, Any]:
    """configs/demo.yaml over the experiment defaults: where the presets and the calibration pairs come from."""
    config = load_config(ROOT / "configs" / "demo.yaml", defaults=DEFAULTS)
    return merge_config(config, {part: {"source": config["source"]} for part in ("val", "calibration")})


def load(name: str | os.PathLike, **settings: Any) -> Matcher:
    """A pipeline, ready to ``match``: a preset ('accurate', 'fast', 'small'), a matcher of the zoo (e.g.
    'aliked+lightglue', 'xfeat+lighterglue', 'superpoint+superglue', which needs the official weights) or a checkpoint
    file this project wrote (``save``). ``settings`` change a zoo matcher's config, e.g.
    ``load("aliked+lightglue", detector={"max_keypoints": 1024})``."""
    key = str(name)
    if key in PRESETS:
        if settings:
            raise InputError(
                f"preset {key!r} is fixed: give settings to a zoo matcher ({', '.join(available_matchers())})"
            )
        demo = _demo()
        dense = build_matcher(demo["matcher"], check_matcher_config(demo["matcher"], demo["matcher_config"]))
        if PRESETS[key] is None:
            return dense
        spec = next(s for s in demo["quantization"] + demo["pruning"] if s["name"] == PRESETS[key])
        return compress(dense, **{k: v for k, v in spec.items() if k != "name"})
    if key in available_matchers():
        return build_matcher(key, check_matcher_config(key, settings, where=f"efm.load({key!r})"))
    if settings:
        raise InputError(f"{key}: a checkpoint's config is its own; settings apply to a zoo matcher")
    if not Path(key).is_file():
        raise InputError(f"{key!r} is neither a pipeline ({', '.join(pipelines())}) nor a checkpoint file")
    return load_checkpoint(key)


def save(pipeline: Matcher, path: str | os.PathLike) -> Path:
    """Write ``pipeline`` as one compact checkpoint (compressed layers stay compressed; ``load`` reads it back
    bit-exact). Written atomically; returns the path."""
    return save_checkpoint(pipeline, path)


def _image(image: str | os.PathLike | np.ndarray, which: int) -> torch.Tensor:
    """An image path or an H×W / H×W×3 array (uint8 in 0..255, or float in [0, 1]) as a 1×C×H×W tensor in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        return to_tensor(read_image(image))
    if not isinstance(image, np.ndarray):
        raise InputError(f"image{which}: give a path or a NumPy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise InputError(f"image{which}: an array of H×W or H×W×3 pixels, got shape {image.shape}")
    if image.dtype == np.uint8:
        return to_tensor(image)
    if not np.issubdtype(image.dtype, np.floating) or not np.isfinite(image).all():
        raise InputError(f"image{which}: uint8 pixels, or finite floats in [0, 1] (got {image.dtype})")
    if image.min() < 0 or image.max() > 1:
        raise InputError(f"image{which}: float pixels are read in [0, 1], got {image.min():g}..{image.max():g}")
    return to_tensor(image.astype(np.float32) * 255.0)


@torch.inference_mode()
def match(pipeline: Matcher, image0: str | os.PathLike | np.ndarray, image1: str | os.PathLike | np.ndarray) -> Matches:
    """Detect and match two images (paths, or arrays as ``_image`` reads them) at their own size; see ``Matches``.
    Resize large images first for speed: the pipeline detects at the size it is given (unless its config sets a
    ``resize``), as ``match_pairs.py --resize`` does."""
    device = next(pipeline.parameters(), torch.empty(0)).device
    images = [_image(image, i).to(device) for i, image in enumerate((image0, image1))]
    pipeline.eval()
    pred = pipeline({"image0": images[0], "image1": images[1]})
    kpts0, kpts1 = (pred[f"keypoints{i}"][0].cpu().numpy().astype(np.float32) for i in (0, 1))
    matches0 = pred["matches0"][0].cpu().numpy()
    i0 = np.flatnonzero(matches0 > -1)
    i1 = matches0[i0]
    return Matches(
        points0=kpts0[i0],
        points1=kpts1[i1],
        scores=pred["matching_scores0"][0].cpu().numpy()[i0].astype(np.float32),
        indices=np.stack([i0, i1], 1).astype(np.int64),
        keypoints0=kpts0,
        keypoints1=kpts1,
    )


def _calibration(settings: dict[str, Any] | None) -> tuple[Any, Any]:
    """What calibrated methods observe: the pairs of ``settings`` (a pairs section), by default the demo's calibration
    pairs (training photos, never evaluation pairs)."""
    settings = {**_demo()["calibration"], **(settings or {})}

    def calibrate(pipeline: Matcher) -> None:
        evaluate_pairs(pipeline, make_pairs(settings), FeatureCache(), progress=False)

    def images(channels: int) -> list[torch.Tensor]:
        pairs = make_pairs(settings)
        return [to_channels(to_tensor(pairs.image(p, 0)[1]), channels) for p in pairs]

    return calibrate, images


def compress(
    pipeline: Matcher, method: str, part: str = "matcher", calibration: dict[str, Any] | None = None, **settings: Any
) -> Matcher:
    """A new pipeline: ``pipeline`` with its ``part`` ('matcher': the matching network, or 'detector') compressed by
    ``method`` (``methods()``; e.g. 'kmeans' with ``bits=4``, 'fine-grained' with ``sparsity=0.5``, 'channel' with
    ``ratio=0.25``, 'int8-onnxruntime', 'settings' with ``set={...}``). ``pipeline`` itself is left unchanged.
    Settings are the variant settings of an experiment config (configs/demo.yaml), checked the same way; a choice by
    a sensitivity scan ('auto') and finetuning need the experiment engine (``pruning_experiments.py``). Methods that
    observe activations (linear and int8 quantization) run the pipeline on ``calibration``'s pairs (the settings of a
    pairs section, e.g. an experiment's ``calibration``; by default the demo's: training photos)."""
    spec = {"name": "efm.compress", "method": method, "part": part, **settings}
    defaults, checks = variant_settings()
    spec = check_config(spec, {**VARIANT, **defaults}, {**VARIANT_CHECKS, **checks})
    check_variant(spec, {})
    if spec.get("base") is not None or spec.get("finetune"):
        raise InputError("compress: 'base' and 'finetune' belong to experiments (pruning_experiments.py)")
    if "auto" in (spec.get("sparsity"), spec.get("bits")):
        raise InputError("compress: 'auto' is chosen by an experiment's sensitivity scan: give a number")
    check_against(spec, pipeline)
    calibrate, images = _calibration(calibration)
    job = Job(copy.deepcopy(pipeline), part, spec, calibrate=calibrate)
    job.calibration_images = lambda: images(job.matcher.channels)
    for step in steps(spec):
        step.apply(job)
    return job.matcher.eval()


def evaluate(
    pipeline: Matcher, tier: str = "hard", num_pairs: int = 100, against: Matcher | None = None, progress: bool = True
) -> dict[str, Any]:
    """Accuracy on the demo's fixed validation pairs of the offline photos (configs/demo.yaml): ``tier`` 'hard'
    (strong viewpoint and photometric change, AUC@3px: the demo decides on it), 'pose' (3D scenes, relative pose,
    AUC@10deg) or 'easy' (the seed's mild homographies); the first ``num_pairs`` of them. Returns the summary (AUCs,
    precision, recall, … and ``intervals``: their 95 % bootstrap intervals); with ``against`` (e.g. the dense
    pipeline), also ``vs``: each metric's difference to it on the same pairs, with its paired 95 % interval."""
    if tier not in TIERS:
        raise InputError(f"unknown tier {tier!r} (choose from {', '.join(TIERS)})")
    demo = _demo()
    others = {t: {"tier": t} for t in TIERS if t != demo["val"]["tier"]}
    section = {**sections({**demo, "tiers": others})[tier], "num_pairs": num_pairs}
    pairs, cache = make_pairs(section), FeatureCache()  # one detector's outputs serve both pipelines when they share it
    found = {}
    for name, model in (("pipeline", pipeline), ("against", against)):
        if model is not None:
            found[name] = evaluate_pairs(
                model,
                pairs,
                cache,
                method=section["estimator"],
                ransac_threshold=section["ransac_threshold"],
                progress=progress,
                desc=f"{tier} pairs" + (" (against)" if name == "against" else ""),
            )
    summary = found["pipeline"]["summary"]
    if against is not None:
        summary["vs"] = paired_difference(found["pipeline"]["rows"], found["against"]["rows"])
    return summary
