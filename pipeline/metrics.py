"""Matching metrics of one pair and their summary: homography corner error and its AUC, precision and recall
from the true homography, pose error and epipolar precision exactly as the official match_pairs.py. Pure numpy
and OpenCV: a pair that cannot be estimated counts as a failure (infinite error), never dropped.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import cv2
import numpy as np
from scipy.spatial import cKDTree

from data.homographies import warp_points
from data.pairs import Pair
from helper import (
    InputError,
)

logger = logging.getLogger(__name__)

HOMOGRAPHY_THRESHOLDS = (1, 3, 5, 10)  # px, corner error, as glue-factory reports HPatches
POSE_THRESHOLDS = (5, 10, 20)  # degrees, as the official match_pairs.py
EPIPOLAR_THRESHOLD = 5e-4  # official: normalised symmetric epipolar distance of a correct match
# The percentile bootstrap over pairs behind every interval: seeded by (seed, number of pairs), so the same pairs
# always give the same interval and two models evaluated on the same pairs are resampled alike (paired).
BOOTSTRAP = {"resamples": 1000, "level": 0.95, "seed": 0}
MEANS = ("precision", "recall", "matching_score", "agreement")  # per-pair values whose mean is the summary


def auc(errors: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalised (the official pose_auc)."""
    return [float(a) for a in auc_batch(np.asarray(errors, np.float64)[None], thresholds)[0]]


def auc_batch(errors: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``auc`` of each row of a (rows, pairs) array at once: (rows, thresholds). The official curve: recall i/n at
    the i-th smallest error, from (0, 0), linear in between, flat from the last error below the threshold to it."""
    e = np.sort(errors, axis=1)
    n = e.shape[1]
    recall = np.arange(1, n + 1) / max(n, 1)
    previous_e = np.concatenate([np.zeros((len(e), 1)), e[:, :-1]], axis=1)
    previous_r = np.r_[0.0, recall[:-1]]
    out = np.empty((len(e), len(thresholds)))
    with np.errstate(invalid="ignore"):  # inf - inf of two failures; those segments are masked out
        segments = (e - previous_e) * (recall + previous_r) / 2
    for j, t in enumerate(thresholds):
        below = e < t
        count = below.sum(1)
        last_e = np.where(count > 0, np.take_along_axis(e, np.maximum(count - 1, 0)[:, None], 1)[:, 0], 0.0)
        out[:, j] = (np.where(below, segments, 0).sum(1) + (t - last_e) * count / max(n, 1)) / t
    return out


def symmetric_reprojection_error(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Mean of the transfer errors image0->image1 (H) and image1->image0 (H⁻¹) of matched points."""
    e1 = np.linalg.norm(warp_points(kpts0, H) - kpts1, axis=1)
    e0 = np.linalg.norm(warp_points(kpts1, np.linalg.inv(H)) - kpts0, axis=1)
    return 0.5 * (e0 + e1)


def ground_truth_matches(kpts0: np.ndarray, kpts1: np.ndarray, H: np.ndarray, threshold: float) -> np.ndarray:
    """For each keypoint of image0, its mutual-nearest keypoint of image1 by symmetric transfer error (the mean of
    the two transfer errors, as ``models.losses.homography_gt``) when that error is below ``threshold`` px, else -1.

    Only keypoints whose forward transfer error is under ``2 * threshold`` can qualify, and the nearest keypoint of
    any pair that does lies among them too: a KD-tree finds those candidates, so the result is the full N×M
    comparison's without its cost (4096 keypoints: 0.27 s a pair as a dense matrix). Ties go to the lower index."""
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    gt = np.full(len(kpts0), -1, np.int64)
    if not len(kpts0) or not len(kpts1):
        return gt
    w0, w1 = warp_points(kpts0, H), warp_points(kpts1, np.linalg.inv(H))
    rows = np.flatnonzero(np.isfinite(w0).all(1))
    found = cKDTree(kpts1).query_ball_point(w0[rows], r=2 * threshold * (1 + 1e-9))
    i = np.repeat(rows, [len(f) for f in found])
    j = np.fromiter((k for f in found for k in f), np.int64, len(i))
    d = 0.5 * (np.linalg.norm(w0[i] - kpts1[j], axis=1) + np.linalg.norm(kpts0[i] - w1[j], axis=1))
    keep = d < threshold  # NaN and inf (a point sent to infinity) are never below it
    i, j, d = i[keep], j[keep], d[keep]

    def nearest(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
        """For each index of ``a``'s side, its nearest candidate on ``b``'s (the lower index on ties), else -1."""
        out = np.full(size, -1, np.int64)
        order = np.lexsort((b, d, a))
        first = order[np.r_[True, a[order][1:] != a[order][:-1]]] if len(a) else order
        out[a[first]] = b[first]
        return out

    nn0, nn1 = nearest(i, j, len(kpts0)), nearest(j, i, len(kpts1))
    has = nn0 >= 0
    mutual = np.zeros(len(kpts0), bool)
    mutual[has] = nn1[nn0[has]] == np.flatnonzero(has)
    gt[mutual] = nn0[mutual]
    return gt


def weighted_dlt(pts0: np.ndarray, pts1: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """Homography from all matches by the direct linear transform, rows weighted by confidence (Hartley-normalised)."""

    def normaliser(p):
        c = p.mean(0)
        s = np.sqrt(2) / max(np.linalg.norm(p - c, axis=1).mean(), 1e-12)
        return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]])

    T0, T1 = normaliser(pts0), normaliser(pts1)
    p0, p1 = warp_points(pts0, T0), warp_points(pts1, T1)
    x, y, u, v = p0[:, 0], p0[:, 1], p1[:, 0], p1[:, 1]
    zero, one = np.zeros_like(x), np.ones_like(x)
    A = np.concatenate(
        [
            np.stack([x, y, one, zero, zero, zero, -u * x, -u * y, -u], 1),
            np.stack([zero, zero, zero, x, y, one, -v * x, -v * y, -v], 1),
        ]
    )
    A *= np.sqrt(np.r_[weights, weights])[:, None]
    _, _, vt = np.linalg.svd(A)
    H = np.linalg.inv(T1) @ vt[-1].reshape(3, 3) @ T0
    return H / H[2, 2] if abs(H[2, 2]) > 1e-12 else None


def estimate_homography(
    pts0: np.ndarray, pts1: np.ndarray, conf: np.ndarray, method: str = "ransac", ransac_threshold: float = 3.0
) -> np.ndarray | None:
    """H from matches with OpenCV RANSAC / USAC-MAGSAC, PoseLib's LO-RANSAC or a weighted DLT; None when it cannot
    be estimated."""
    if len(pts0) < 4:
        return None
    if method == "dlt":
        return weighted_dlt(pts0, pts1, np.clip(conf, 1e-6, None))
    if method == "poselib":
        try:
            import poselib
        except ImportError:
            raise InputError("the 'poselib' estimator needs PyPI's poselib: pip install poselib") from None
        H, info = poselib.estimate_homography(
            pts0.astype(np.float64), pts1.astype(np.float64), {"max_reproj_error": ransac_threshold}, {}
        )
        return None if H is None or not np.all(np.isfinite(H)) or info.get("num_inliers", 0) < 4 else np.asarray(H)
    flag = {"ransac": cv2.RANSAC, "magsac": cv2.USAC_MAGSAC}[method]
    H, _ = cv2.findHomography(
        pts0.astype(np.float64), pts1.astype(np.float64), flag, ransac_threshold, maxIters=10000, confidence=0.9999
    )
    return None if H is None or not np.all(np.isfinite(H)) else H


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, size: tuple[int, int]) -> float:
    """Mean distance (image1 px) between image0's corners mapped by the estimated and the true H; inf if none."""
    if H_est is None:
        return float("inf")
    w, h = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    err = np.linalg.norm(warp_points(corners, H_est) - warp_points(corners, H_gt), axis=1).mean()
    return float(err) if np.isfinite(err) else float("inf")


def homography_metrics(
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    matches: np.ndarray,
    conf: np.ndarray,
    H: np.ndarray,
    size0: tuple[int, int],
    threshold: float = 3.0,
    method: str = "ransac",
    ransac_threshold: float = 3.0,
) -> dict[str, Any]:
    """Precision, recall, matching score and corner error of one homography pair."""
    valid = matches > -1
    m0, m1 = kpts0[valid], kpts1[matches[valid]]
    errors = symmetric_reprojection_error(m0, m1, H) if len(m0) else np.zeros(0)
    correct = errors < threshold
    gt = ground_truth_matches(kpts0, kpts1, H, threshold)
    has_gt = gt > -1
    recalled = np.zeros(len(kpts0), bool)
    recalled[np.flatnonzero(valid)[correct]] = True  # a correct match of a keypoint that has a true match
    H_est = estimate_homography(m0, m1, conf[valid], method, ransac_threshold)
    return {
        "num_keypoints0": len(kpts0),
        "num_keypoints1": len(kpts1),
        "num_matches": int(valid.sum()),
        "num_correct": int(correct.sum()),
        "num_gt_matches": int(has_gt.sum()),
        "precision": float(correct.mean()) if len(correct) else 0.0,
        "recall": float((recalled & has_gt).sum() / has_gt.sum()) if has_gt.any() else 0.0,
        "matching_score": float(correct.sum() / len(kpts0)) if len(kpts0) else 0.0,
        "corner_error": corner_error(H_est, H, size0),
    }


def rotate_intrinsics(K: np.ndarray, rotated_shape: tuple[int, ...], rot: int) -> np.ndarray:
    """Intrinsics of an image rotated by rot×90° counter-clockwise (np.rot90), as the official code."""
    h, w = rotated_shape[:2][::-1] if rot % 2 else rotated_shape[:2]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rot %= 4
    if rot == 1:
        return np.array([[fy, 0.0, cy], [0.0, fx, w - 1 - cx], [0.0, 0.0, 1.0]])
    if rot == 2:
        return np.array([[fx, 0.0, w - 1 - cx], [0.0, fy, h - 1 - cy], [0.0, 0.0, 1.0]])
    return np.array([[fy, 0.0, h - 1 - cy], [0.0, fx, cx], [0.0, 0.0, 1.0]])


def rotate_pose_inplane(i_T_w: np.ndarray, rot: int) -> np.ndarray:
    r = np.deg2rad((0, 270, 180, 90)[rot % 4])
    R = np.eye(4)
    R[:2, :2] = [[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]
    return R.astype(np.float32) @ i_T_w


def epipolar_errors(kpts0, kpts1, T_0to1, K0, K1) -> np.ndarray:
    """Squared symmetric epipolar distance in normalised coordinates (the official definition)."""
    p0 = np.c_[(kpts0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None], np.ones(len(kpts0))]
    p1 = np.c_[(kpts1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None], np.ones(len(kpts1))]
    t = T_0to1[:3, 3]
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ T_0to1[:3, :3]
    Ep0, Etp1 = p0 @ E.T, p1 @ E
    p1Ep0 = np.sum(p1 * Ep0, -1)
    return p1Ep0**2 * (1.0 / (Ep0[:, 0] ** 2 + Ep0[:, 1] ** 2) + 1.0 / (Etp1[:, 0] ** 2 + Etp1[:, 1] ** 2))


def estimate_pose(kpts0, kpts1, K0, K1, thresh: float = 1.0, conf: float = 0.99999, method: str = "ransac"):
    """(R, t, inliers) of camera 1 from camera 0 from the essential matrix, None if < 5 matches or no estimate.
    ``method``: 'ransac' (OpenCV RANSAC in normalised coordinates, as the official code), 'magsac' (OpenCV
    USAC-MAGSAC) or 'poselib' (PoseLib's LO-RANSAC with non-linear refinement, glue-factory's); ``thresh`` is
    the inlier threshold in pixels."""
    if len(kpts0) < 5:
        return None
    if method == "poselib":
        import poselib

        camera = lambda K: {"model": "PINHOLE", "width": 0, "height": 0,  # noqa: E731
                            "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}  # fmt: skip
        pose, info = poselib.estimate_relative_pose(
            kpts0.astype(np.float64), kpts1.astype(np.float64), camera(K0), camera(K1),
            {"max_epipolar_error": thresh}, {},
        )  # fmt: skip
        if info.get("num_inliers", 0) < 5 or not np.all(np.isfinite(pose.t)):
            return None
        return pose.R, np.asarray(pose.t), np.asarray(info["inliers"], bool)
    if method not in ("ransac", "magsac"):
        raise InputError(f"estimator {method!r} does not estimate a relative pose (choose ransac, magsac or poselib)")
    f_mean = np.mean([K0[0, 0], K1[1, 1], K0[0, 0], K1[1, 1]])
    n0 = (kpts0 - K0[[0, 1], [2, 2]][None]) / K0[[0, 1], [0, 1]][None]
    n1 = (kpts1 - K1[[0, 1], [2, 2]][None]) / K1[[0, 1], [0, 1]][None]
    flag = cv2.RANSAC if method == "ransac" else cv2.USAC_MAGSAC
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), threshold=thresh / f_mean, prob=conf, method=flag)
    if E is None:
        return None
    best, ret = 0, None
    for _E in np.split(E, len(E) / 3):
        n, R, t, _ = cv2.recoverPose(_E, n0, n1, np.eye(3), 1e9, mask=mask)
        if n > best:
            best, ret = n, (R, t[:, 0], mask.ravel() > 0)
    return ret


def pose_errors(T_0to1: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """(translation angle error, rotation angle error) in degrees; the translation sign is ambiguous."""
    t_gt = T_0to1[:3, 3]
    cos_t = np.clip(np.dot(t, t_gt) / (np.linalg.norm(t) * np.linalg.norm(t_gt)), -1.0, 1.0)
    err_t = np.rad2deg(np.arccos(cos_t))
    cos_r = np.clip((np.trace(R.T @ T_0to1[:3, :3]) - 1) / 2, -1.0, 1.0)
    return float(min(err_t, 180 - err_t)), float(np.rad2deg(np.abs(np.arccos(cos_r))))


def pose_metrics(kpts0, kpts1, matches, K0, K1, T_0to1, method: str = "ransac", thresh: float = 1.0) -> dict[str, Any]:
    """Epipolar precision, matching score and pose errors of one pose pair, as the official match_pairs.py (its
    estimator: OpenCV RANSAC at 1 px)."""
    valid = matches > -1
    m0, m1 = kpts0[valid], kpts1[matches[valid]]
    epi = epipolar_errors(m0, m1, T_0to1, K0, K1)
    correct = epi < EPIPOLAR_THRESHOLD
    ret = estimate_pose(m0, m1, K0, K1, thresh, method=method)
    err_t, err_R = (float("inf"), float("inf")) if ret is None else pose_errors(T_0to1, ret[0], ret[1])
    return {
        "num_keypoints0": len(kpts0),
        "num_keypoints1": len(kpts1),
        "num_matches": int(valid.sum()),
        "num_correct": int(correct.sum()),
        "precision": float(correct.mean()) if len(correct) else 0.0,
        "matching_score": float(correct.sum() / len(kpts0)) if len(kpts0) else 0.0,
        "error_t": err_t,
        "error_R": err_R,
        "epipolar_errors": epi,
    }


def pose_ground_truth(pair: Pair, shape0: tuple[int, ...], shape1: tuple[int, ...]) -> tuple:
    """(K0, K1, T_0to1) for the images as evaluated, applying the pair's in-plane rotations."""
    K0, K1, T = pair.K0, pair.K1, pair.T_0to1
    if pair.rot0 or pair.rot1:
        cam0_T_w, cam1_T_w = np.eye(4), T
        if pair.rot0:
            K0, cam0_T_w = rotate_intrinsics(K0, shape0, pair.rot0), rotate_pose_inplane(cam0_T_w, pair.rot0)
        if pair.rot1:
            K1, cam1_T_w = rotate_intrinsics(K1, shape1, pair.rot1), rotate_pose_inplane(cam1_T_w, pair.rot1)
        T = cam1_T_w @ np.linalg.inv(cam0_T_w)
    return K0, K1, T


def pair_metrics(
    pair: Pair,
    pred: dict[str, np.ndarray],
    shape0: tuple[int, ...],
    shape1: tuple[int, ...],
    threshold: float = 3.0,
    method: str = "ransac",
    ransac_threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics of one pair whose ground truth is expressed for the evaluated images (PairSet.ground_truth).
    ``ransac_threshold``: the estimator's inlier threshold, px (default: 3 for a homography, 1 for a pose, the
    official settings)."""
    k0, k1, m, c = pred["keypoints0"], pred["keypoints1"], pred["matches0"], pred["matching_scores0"]
    if pair.kind == "homography":
        size0 = (shape0[1], shape0[0])
        return homography_metrics(k0, k1, m, c, pair.H, size0, threshold, method, ransac_threshold or 3.0)
    if pair.kind == "pose":
        K0, K1, T = pose_ground_truth(pair, shape0, shape1)
        return pose_metrics(k0, k1, m, K0, K1, T, method, ransac_threshold or 1.0)
    raise InputError(f"pair {pair.name0} {pair.name1} has no ground truth to evaluate")


def correct_matches(pair: Pair, pred: dict[str, np.ndarray], metrics: dict[str, Any]) -> np.ndarray:
    """Which of the predicted matches are right under the pair's ground truth (pair_metrics() gave ``metrics``):
    within 3 px both ways for a homography, epipolar error under 5e-4 for a pose."""
    valid = pred["matches0"] > -1
    if pair.kind == "homography":
        k0, k1 = pred["keypoints0"][valid], pred["keypoints1"][pred["matches0"][valid]]
        return symmetric_reprojection_error(k0, k1, pair.H) < 3.0
    return metrics["epipolar_errors"] < 5e-4


def summarize(rows: list[dict[str, Any]], bootstrap: dict[str, Any] | None = BOOTSTRAP) -> dict[str, Any]:
    """Means over all pairs (failures included), the AUCs of the corner or pose errors and, unless ``bootstrap``
    is None, their 95 % intervals over pairs (``summary["intervals"][metric] = [low, high]``)."""
    if not rows:
        raise InputError("no pairs were evaluated")
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    out: dict[str, Any] = {"num_pairs": len(rows)}
    for key in ("precision", "recall", "matching_score", "agreement", "num_matches", "num_keypoints0", "num_correct"):
        if key in rows[0]:
            out[key] = mean(key)
    if "corner_error" in rows[0]:
        errors = [r["corner_error"] for r in rows]
        out.update({f"auc@{t}px": a for t, a in zip(HOMOGRAPHY_THRESHOLDS, auc(errors, HOMOGRAPHY_THRESHOLDS))})
        out["failures"] = int(np.sum(~np.isfinite(errors)))
        out["median_corner_error"] = float(np.median(errors))
    if "error_t" in rows[0]:
        errors = [max(r["error_t"], r["error_R"]) for r in rows]
        out.update({f"auc@{t}deg": a for t, a in zip(POSE_THRESHOLDS, auc(errors, POSE_THRESHOLDS))})
        out["failures"] = int(np.sum(~np.isfinite(errors)))
    if bootstrap is not None:
        out["intervals"] = intervals(rows, **bootstrap)
    return out


# ----------------------------------------------------------------------------- intervals


def _errors(rows: list[dict[str, Any]]) -> tuple[np.ndarray, tuple[int, ...], str] | None:
    if "corner_error" in rows[0]:
        return np.array([r["corner_error"] for r in rows], np.float64), HOMOGRAPHY_THRESHOLDS, "px"
    if "error_t" in rows[0]:
        return np.array([max(r["error_t"], r["error_R"]) for r in rows], np.float64), POSE_THRESHOLDS, "deg"
    return None


def _draws(rows: list[dict[str, Any]], resamples: int, seed: int, by: str | None) -> list[np.ndarray]:
    """Bootstrap draws of row indices, as blocks of equal-length rows. ``by=None``: pairs drawn with replacement
    (one block). ``by`` a row key (e.g. ``"name0"``, the photo a synthetic pair was made from): whole clusters of
    rows sharing that value drawn with replacement (a cluster bootstrap: pairs of one photo are not independent),
    one block per resample since their lengths differ."""
    n = len(rows)
    rng = np.random.default_rng([seed, n])
    if by is None:
        return [rng.integers(0, n, size=(resamples, n))]
    clusters: dict[Any, list[int]] = {}
    for i, r in enumerate(rows):
        clusters.setdefault(r[by], []).append(i)
    members = [np.array(m) for m in clusters.values()]
    picks = rng.integers(0, len(members), size=(resamples, len(members)))
    return [np.concatenate([members[c] for c in pick])[None] for pick in picks]


def resampled(rows: list[dict[str, Any]], resamples: int, seed: int, by: str | None = None) -> dict[str, np.ndarray]:
    """Each metric of ``summarize`` on ``resamples`` bootstrap resamples (the same draws for any rows of the same
    length, seed and clusters; ``by``: see ``_draws``): {metric: array of ``resamples`` values}."""
    blocks = _draws(rows, resamples, seed, by)
    values = {k: np.array([r[k] for r in rows], np.float64) for k in MEANS if k in rows[0]}
    out = {k: np.concatenate([v[d].mean(1) for d in blocks]) for k, v in values.items()}
    found = _errors(rows)
    if found is not None:
        errors, thresholds, unit = found
        curves = np.concatenate([auc_batch(errors[d], thresholds) for d in blocks])
        out.update({f"auc@{t}{unit}": curves[:, i] for i, t in enumerate(thresholds)})
    return out


def _bounds(values: np.ndarray, level: float) -> list[float]:
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def intervals(
    rows: list[dict[str, Any]], resamples: int = 1000, level: float = 0.95, seed: int = 0, by: str | None = None
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over pairs (``by``: over clusters of pairs) of every summary metric:
    {metric: [low, high]}."""
    return {k: _bounds(v, level) for k, v in resampled(rows, resamples, seed, by).items()}


def paired_difference(
    rows: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    by: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Each metric of ``rows`` minus the ``reference`` model's on the same pairs, with the paired bootstrap interval
    (pairs resampled, both models scored on the same draws; ``by="name0"``: whole photos resampled, the honest
    interval when several pairs come from one photo): {metric: {"difference", "interval", "within_noise"}}.
    ``within_noise`` is exactly "the interval contains 0"."""
    names = lambda rs: [(r.get("name0"), r.get("name1")) for r in rs]  # noqa: E731
    if len(rows) != len(reference) or names(rows) != names(reference):
        raise InputError("a paired comparison needs both models evaluated on the same pairs, in the same order")
    mine, theirs = resampled(rows, resamples, seed, by), resampled(reference, resamples, seed, by)
    point, base = summarize(rows, None), summarize(reference, None)
    out = {}
    for k in mine.keys() & theirs.keys():
        low, high = _bounds(mine[k] - theirs[k], level)
        out[k] = {"difference": float(point[k] - base[k]), "interval": [low, high], "within_noise": low <= 0 <= high}
    return dict(sorted(out.items()))


def pair_values(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-pair metrics a paired comparison needs (names, corner or pose errors, precision, recall, ...)."""
    keep = ("name0", "name1", "corner_error", "error_t", "error_R", *MEANS)
    return [{k: r[k] for k in keep if k in r} for r in rows]


def pair_floats(stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``pair_values`` read back from a stage record: numbers as floats again (a record stores a failure's
    infinite error as 'inf')."""
    return [{k: v if k in ("name0", "name1") else float(v) for k, v in r.items()} for r in stored]


def format_summary(summary: dict[str, Any]) -> str:
    """One line per metric: value and, where it has one, its 95 % interval over pairs."""
    spans = summary.get("intervals", {})
    lines = []
    for k, v in summary.items():
        if k == "intervals":
            continue
        text = f"{v:.4f}" if isinstance(v, float) else str(v)
        if k in spans:
            text += f"  [{spans[k][0]:.4f}, {spans[k][1]:.4f}]"
        lines.append(f"{k:<20} {text}")
    return "\n".join(lines)
