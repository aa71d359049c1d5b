"""Honest matching metrics on homography and pose pairs, with detector outputs cached per image and model.

``evaluate(matcher, pairs)`` is the one function everything else calls (sensitivity scans call it hundreds
of times). A pair whose homography or pose cannot be estimated counts as a failure (infinite error); no
pair is ever dropped from an average. The command line over it is evaluate.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from data.pairs import Pair, PairSet
from helper import (
    InputError,
    atomic_path,
    first_line,
    keypoint_limit,
    to_tensor,
)
from models.matching import Matcher, build_matcher
from models.weights import WeightsError, resolve_weights
from pipeline.metrics import pair_metrics, summarize

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- prediction with a feature cache


class FeatureCache:
    """Detector outputs per (detector fingerprint, image key), kept on the CPU, least recently used evicted."""

    def __init__(self, max_items: int = 4096):
        self.max_items = max_items
        self.items: OrderedDict[tuple[str, str], dict[str, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = self.added = 0

    def get(self, key: tuple[str, str]) -> dict[str, torch.Tensor] | None:
        if key in self.items:
            self.items.move_to_end(key)
            self.hits += 1
            return self.items[key]
        self.misses += 1
        return None

    def put(self, key: tuple[str, str], value: dict[str, torch.Tensor]) -> None:
        self.items[key] = value
        self.added += 1
        if len(self.items) > self.max_items:
            self.items.popitem(last=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache (atomically), so another process (the other experiment script) reuses its entries."""
        with atomic_path(path) as tmp:
            torch.save({"keys": [list(k) for k in self.items], "values": list(self.items.values())}, tmp)
        self.added = 0

    def load(self, path: str | os.PathLike) -> None:
        """Add the entries a ``save`` wrote; an unreadable file is only a cache: a warning, then extraction."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            entries = list(zip(saved["keys"], saved["values"]))
        except (OSError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as e:
            logger.warning("feature cache %s is unreadable (%s): extracting again", path, first_line(e))
            return
        for key, value in entries:
            self.items[tuple(key)] = value


def extract_pair(
    matcher: Matcher,
    pairs: PairSet,
    pair: Pair,
    cache: FeatureCache | None = None,
    detector_id: str | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Batched features of both images of a pair (``keypoints0``, ``descriptors0``, ``image_size0``, …) on
    ``device``, detector outputs taken from / put into ``cache``; plus the image shapes and extraction time."""
    device = device or next(matcher.parameters(), torch.empty(0)).device
    detector_id = detector_id or matcher.detector_fingerprint()
    data: dict[str, Any] = {"time_extract": 0.0}
    keys, shapes, images = (list(v) for v in zip(*(pairs.view(pair, i) for i in (0, 1))))
    features = [cache.get((detector_id, key)) if cache is not None else None for key in keys]
    todo = [i for i in (0, 1) if features[i] is None]
    for i in todo:  # made only for a detector that has not seen it
        if images[i] is None:
            images[i] = pairs.image(pair, i)[1]
    if todo:  # both images at once where the detector can (Matcher.extract_images)
        start = time.perf_counter()
        try:
            with torch.no_grad():
                extracted = matcher.extract_images([to_tensor(images[i], device) for i in todo])
        except InputError:  # e.g. an image too small for the detector: say which, trying one at a time
            for i in todo:
                try:
                    with torch.no_grad():
                        matcher.extract(to_tensor(images[i], device))
                except InputError as e:
                    raise InputError(f"{(pair.name0, pair.name1)[i]}: {e}") from None
            raise
        data["time_extract"] = time.perf_counter() - start
        for i, f in zip(todo, extracted):
            features[i] = {k: v[0].detach().cpu() for k, v in f.items()}
            if cache is not None:
                cache.put((detector_id, keys[i]), features[i])
    for i, (shape, cached) in enumerate(zip(shapes, features)):
        data.update({f"{k}{i}": v[None].to(device) for k, v in cached.items()})
        data[f"shape{i}"] = shape
        data[f"image_size{i}"] = (shape[1], shape[0])
    return data


@torch.no_grad()
def predict(
    matcher: Matcher,
    pairs: PairSet,
    pair: Pair,
    cache: FeatureCache | None = None,
    detector_id: str | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Keypoints (N×2), matches0 and matching_scores0 of one pair as numpy, plus the images' shapes and timings."""
    data = extract_pair(matcher, pairs, pair, cache, detector_id, device)
    start = time.perf_counter()
    out = matcher.match(data)
    t_match = time.perf_counter() - start
    return {
        "keypoints0": data["keypoints0"][0].cpu().numpy(),
        "keypoints1": data["keypoints1"][0].cpu().numpy(),
        "matches0": out["matches0"][0].cpu().numpy(),
        "matching_scores0": out["matching_scores0"][0].cpu().numpy(),
        "shape0": data["shape0"],
        "shape1": data["shape1"],
        "time_extract": data["time_extract"],
        "time_match": t_match,
    }


def match_agreement(reference: dict[str, np.ndarray], pred: dict[str, np.ndarray], tol: float = 1.0) -> float:
    """Share of a reference model's matches that ``pred`` reproduces (both endpoints within ``tol`` px)."""
    valid = reference["matches0"] > -1
    if not valid.any():
        return 1.0
    r0, r1 = reference["keypoints0"][valid], reference["keypoints1"][reference["matches0"][valid]]
    ok = pred["matches0"] > -1
    if not ok.any():
        return 0.0
    p0, p1 = pred["keypoints0"][ok], pred["keypoints1"][pred["matches0"][ok]]
    d = np.linalg.norm(r0[:, None] - p0[None], axis=2)
    nearest = d.argmin(1)
    same = (d[np.arange(len(r0)), nearest] < tol) & (np.linalg.norm(r1 - p1[nearest], axis=1) < tol)
    return float(same.mean())


def evaluate(
    matcher: Matcher,
    pairs: PairSet,
    cache: FeatureCache | None = None,
    threshold: float = 3.0,
    method: str = "ransac",
    progress: bool = True,
    desc: str = "evaluate",
    reference: list[dict[str, np.ndarray]] | None = None,
    ransac_threshold: float | None = None,
) -> dict[str, Any]:
    """Match every pair; return {'summary': means and AUCs over all pairs, 'rows': per-pair metrics,
    'predictions': keypoints and matches per pair}. With the ``predictions`` of a reference model (e.g. the
    dense one), rows and summary also give ``agreement``: the share of its matches that are reproduced."""
    matcher.eval()
    detector_id = matcher.detector_fingerprint()
    rows, predictions = [], []
    for k, pair in enumerate(tqdm(pairs, desc=desc, disable=not progress, leave=False)):
        pred = predict(matcher, pairs, pair, cache, detector_id)
        metrics = pair_metrics(
            pairs.ground_truth(pair), pred, pred["shape0"], pred["shape1"], threshold, method, ransac_threshold
        )
        metrics.pop("epipolar_errors", None)
        if reference is not None:
            metrics["agreement"] = match_agreement(reference[k], pred)
        rows.append(
            {
                "name0": pair.name0,
                "name1": pair.name1,
                **metrics,
                "time_extract": pred["time_extract"],
                "time_match": pred["time_match"],
            }
        )
        predictions.append(
            {k: pred[k] for k in ("keypoints0", "keypoints1", "matches0", "matching_scores0", "shape0", "shape1")}
        )
    summary = summarize(rows)
    if reference is not None:
        summary["agreement"] = float(np.mean([r["agreement"] for r in rows]))
    return {"summary": summary, "rows": rows, "predictions": predictions}


def reestimate(
    pairs: PairSet,
    predictions: list[dict[str, Any]],
    threshold: float = 3.0,
    method: str = "ransac",
    ransac_threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Per-pair metrics of ``evaluate``'s predictions under another estimator or threshold, without matching again
    (e.g. to give each matcher its best RANSAC threshold, as glue-factory's HPatches evaluation does)."""
    return [
        pair_metrics(
            pairs.ground_truth(pair), pred, pred["shape0"], pred["shape1"], threshold, method, ransac_threshold
        )
        for pair, pred in zip(pairs, predictions)
    ]


# glue-factory's protocols (its README's tables): HPatches at a shorter side of 480 (HPatchesPairs), MegaDepth-1500 at
# a longer side of 1600 (MegaDepthPairs); the inlier threshold of each robust estimator swept and the best kept.
SWEEP = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
PUBLISHED = {  # HPatches AUC@1/3/5 px (540 pairs), MegaDepth-1500 AUC@5/10/20° (1500 pairs), glue-factory README
    "superpoint+lightglue": {"dlt": (35.1, 67.2, 77.6), "ransac": (34.2, 57.9, 69.9), "poselib": (37.1, 67.4, 77.8),
                             "pose ransac": (51.0, 68.1, 80.7), "pose poselib": (66.8, 79.3, 87.9)},
    "superpoint+superglue": {"dlt": (32.1, 65.0, 75.7), "ransac": (32.9, 55.7, 68.0), "poselib": (37.0, 68.2, 78.7)},
    "aliked+lightglue": {"pose ransac": (52.3, 68.8, 81.0), "pose poselib": (66.4, 79.0, 87.5)},
}  # fmt: skip
PROTOCOL_AUCS = {"homography": ("auc@1px", "auc@3px", "auc@5px"), "pose": ("auc@5deg", "auc@10deg", "auc@20deg")}
# The verdict metric of each kind of pairs and the estimator it is measured under (the project's: PoseLib's LO-RANSAC,
# whose paired intervals are the narrowest, benchmarks/val_size.py): AUC@3px of the corner error at 2 px for
# homography tiers, AUC@10° of the pose error at 1 px for the pose tier.
VERDICT = {
    "homography": {"metric": "auc@3px", "method": "poselib", "ransac_threshold": 2.0},
    "pose": {"metric": "auc@10deg", "method": "poselib", "ransac_threshold": 1.0},
}


def protocol(
    pairs: PairSet,
    predictions: list[dict[str, Any]],
    estimators: tuple[str, ...] | None = None,
    fixed: float | None = None,
    sweep: tuple[float, ...] = SWEEP,
) -> list[dict[str, Any]]:
    """Each estimator on ``evaluate``'s predictions, without matching again: DLT once (homographies); a robust
    estimator at the ``fixed`` threshold (default: 3 px for homographies, 1 px for poses) and at the best of
    ``sweep`` (highest sum of the protocol's three AUCs, glue-factory's choice). Rows: {"estimator", "threshold",
    "setting" ('fixed' / 'best of sweep' / '—'), summary metrics + intervals}."""
    kind = pairs[0].kind
    keys = PROTOCOL_AUCS[kind]
    estimators = estimators or (("dlt", "ransac", "poselib") if kind == "homography" else ("ransac", "poselib"))
    fixed = fixed or (3.0 if kind == "homography" else 1.0)
    out = []
    for method in estimators:
        if method == "dlt":
            out.append({"estimator": "dlt", "threshold": None, "setting": "—",
                        **summarize(reestimate(pairs, predictions, method="dlt"))})  # fmt: skip
            continue
        runs = {t: summarize(reestimate(pairs, predictions, method=method, ransac_threshold=t)) for t in sweep}
        if fixed not in runs:
            runs[fixed] = summarize(reestimate(pairs, predictions, method=method, ransac_threshold=fixed))
        best = max(sweep, key=lambda t: sum(runs[t][k] for k in keys))
        out.append({"estimator": method, "threshold": fixed, "setting": "fixed", **runs[fixed]})
        out.append({"estimator": method, "threshold": best, "setting": "best of sweep", **runs[best]})
    return out


# ----------------------------------------------------------------------------- command line


def official_weights_available(superglue: str = "indoor") -> bool:
    """Whether the official SuperPoint and SuperGlue weights are on this machine (no download attempted)."""
    try:
        resolve_weights("superpoint_v1", allow_download=False)
        resolve_weights(f"superglue_{superglue}", allow_download=False)
        return True
    except WeightsError:
        return False


# The detector's and matcher's flags of the official command line, and their defaults (the flags default to None, so
# that a flag given beside --checkpoint, whose config fixes these settings, is refused instead of silently ignored)
SETTING_FLAGS = {"max_keypoints": 1024, "keypoint_threshold": 0.005, "nms_radius": 4, "sinkhorn_iterations": 20,
                 "match_threshold": 0.2}  # fmt: skip


def build_from_args(args: argparse.Namespace) -> Matcher:
    """The matcher the flags ask for; superpoint+superglue by default when its weights are local."""
    given = [f for f in SETTING_FLAGS if getattr(args, f, None) is not None]
    flag = {f: SETTING_FLAGS[f] if getattr(args, f, None) is None else getattr(args, f) for f in SETTING_FLAGS}
    if getattr(args, "checkpoint", None):
        from pipeline.checkpoint import load_checkpoint

        if given:
            raise InputError(
                f"--{given[0]} does not apply with --checkpoint {args.checkpoint}: the checkpoint's own config sets "
                "its detector and matcher (the settings it was evaluated with); drop the flag"
            )
        matcher = load_checkpoint(args.checkpoint)
        if args.matcher is not None and args.matcher != matcher.name:
            raise InputError(
                f"--matcher {args.matcher} contradicts --checkpoint {args.checkpoint}, which holds "
                f"{matcher.name}: drop --matcher"
            )
        logger.info("using %s from checkpoint %s", matcher.name, args.checkpoint)
        return matcher
    superglue = getattr(args, "superglue", None)
    name = args.matcher or ("superpoint+superglue" if superglue else None)  # asked for: its weights or an error
    superglue = superglue or "indoor"
    if name is None:
        name = "superpoint+superglue" if official_weights_available(superglue) else "aliked+lightglue"
        if name == "aliked+lightglue":
            logger.info("official SuperPoint/SuperGlue weights are not available locally: using aliked+lightglue")
    logger.info("using matcher %s", name)
    if name == "superpoint+superglue":
        config = {
            "superpoint": {
                "nms_radius": flag["nms_radius"],
                "keypoint_threshold": flag["keypoint_threshold"],
                "max_keypoints": flag["max_keypoints"],
            },
            "superglue": {
                "weights": superglue,
                "sinkhorn_iterations": flag["sinkhorn_iterations"],
                "match_threshold": flag["match_threshold"],
            },
        }
    else:
        config = {"detector": {"max_keypoints": flag["max_keypoints"]}}
    return build_matcher(name, config)


def add_matcher_args(parser: argparse.ArgumentParser) -> None:
    from models.matching import available_matchers

    parser.add_argument(
        "--matcher",
        default=None,
        choices=available_matchers(),
        help="matcher of the zoo (default: superpoint+superglue if its weights are local, else aliked+lightglue)",
    )
    parser.add_argument("--checkpoint", default=None, help="a pruned/quantized checkpoint written by this project")
    parser.add_argument("--max_keypoints", type=keypoint_limit, default=None, help="per image (-1: all; default 1024)")
