"""Metrics are right on constructed cases, failures count, and the detector cache works."""

import numpy as np
import pytest
import torch

from data.homographies import HomographyConfig, sample_homography, warp_points
from data.images import open_source
from data.pairs import FilePairs, Pair, SyntheticPairs, read_pairs
from models.matching import build_matcher
from pipeline.evaluation import FeatureCache, evaluate
from pipeline.metrics import auc, estimate_homography, homography_metrics, pair_metrics, summarize, weighted_dlt

H = sample_homography(np.random.default_rng(0), (640, 480), HomographyConfig())


def grid_points(n=100, seed=0):
    return np.random.default_rng(seed).uniform([100, 80], [540, 400], (n, 2))


def test_auc_is_the_official_curve_and_counts_failures():
    assert auc([0.0] * 4, [1]) == pytest.approx([1.0])
    # Errors 0.5 and inf: the recall curve rises linearly from (0, 0) to (0.5, 0.5), then stays at 0.5.
    assert auc([0.5, np.inf], [1, 2]) == pytest.approx([(0.125 + 0.25) / 1, (0.125 + 0.75) / 2])
    assert auc([np.inf, np.inf], [3])[0] == 0.0


def test_perfect_matches_give_full_marks():
    k0 = grid_points()
    k1 = warp_points(k0, H)
    m = homography_metrics(k0, k1, np.arange(100), np.ones(100), H, (640, 480))
    assert m["precision"] == 1 and m["recall"] == 1 and m["matching_score"] == 1
    assert m["corner_error"] < 1e-4 and m["num_gt_matches"] == 100


def test_wrong_matches_lower_precision_and_stay_in_the_recall_denominator():
    k0 = grid_points()
    k1 = warp_points(k0, H)
    matches = np.arange(100)
    matches[:30] = np.roll(matches[:30], 1)  # 30 wrong assignments
    matches[30:40] = -1  # 10 unmatched
    m = homography_metrics(k0, k1, matches, np.ones(100), H, (640, 480))
    assert m["num_matches"] == 90 and m["num_correct"] == 60
    assert m["precision"] == pytest.approx(60 / 90)
    assert m["recall"] == pytest.approx(60 / 100)  # not 60 / 60: wrong ones are still missed true matches
    assert m["matching_score"] == pytest.approx(0.6)
    assert m["corner_error"] < 0.1  # RANSAC sees through 30 % outliers


def test_too_few_matches_is_a_failure_not_a_skip():
    k0 = grid_points()
    k1 = warp_points(k0, H)
    good = homography_metrics(k0, k1, np.arange(100), np.ones(100), H, (640, 480))
    few = np.full(100, -1)
    few[:3] = [0, 1, 2]
    bad = homography_metrics(k0, k1, few, np.ones(100), H, (640, 480))
    assert bad["corner_error"] == np.inf
    s = summarize([good, bad])
    assert s["num_pairs"] == 2 and s["failures"] == 1
    assert s["auc@3px"] == pytest.approx(0.5, abs=1e-3)  # the failure halves the AUC


def test_weighted_dlt_and_estimators_recover_the_homography():
    k0 = grid_points(50)
    k1 = warp_points(k0, H)
    assert np.allclose(weighted_dlt(k0, k1, np.ones(50)), H / H[2, 2], atol=1e-8)
    for method in ("ransac", "magsac", "dlt"):
        est = estimate_homography(k0, k1, np.ones(50), method)
        assert np.allclose(warp_points(k0, est), k1, atol=1e-3)


def project(points3d, K, R=np.eye(3), t=np.zeros(3)):
    p = (points3d @ R.T + t) @ K.T
    return p[:, :2] / p[:, 2:]


def test_pose_metrics_on_an_exact_two_view_scene():
    rng = np.random.default_rng(0)
    X = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]
    K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
    angle = np.deg2rad(8)
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    t = np.array([-1.0, 0.1, 0.2])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    k0, k1 = project(X, K), project(X, K, R, t)
    pair = Pair("a", "b", K0=K, K1=K, T_0to1=T)
    pred = {"keypoints0": k0, "keypoints1": k1, "matches0": np.arange(200), "matching_scores0": np.ones(200)}
    m = pair_metrics(pair, pred, (480, 640), (480, 640))
    assert m["precision"] == 1 and m["error_R"] < 0.1 and m["error_t"] < 0.5
    shuffled = {**pred, "matches0": np.r_[np.arange(150), rng.permutation(np.arange(150, 200))]}
    m = pair_metrics(pair, shuffled, (480, 640), (480, 640))
    assert 0.74 < m["precision"] < 0.80 and m["error_R"] < 0.5
    s = summarize([m, {**m, "error_t": np.inf, "error_R": np.inf}])
    assert s["failures"] == 1 and 0.4 < s["auc@20deg"] < 0.51


@pytest.fixture(scope="module")
def small_pairs():
    src = open_source("sample")
    return SyntheticPairs(src, ["astronaut.png", "chelsea.png"], 4, (320, 240), seed=0)


def test_evaluate_reuses_detector_outputs_when_only_the_matcher_changes(small_pairs):
    matcher = build_matcher("sift+nn")
    calls = []
    matcher.detector.register_forward_hook(lambda *a: calls.append(1))
    cache = FeatureCache()
    first = evaluate(matcher, small_pairs, cache, progress=False)
    assert len(calls) == 2 + 4  # two distinct first images, four warps
    assert first["summary"]["precision"] > 0.9 and first["summary"]["failures"] == 0
    matcher.matcher.config["ratio_threshold"] = 0.95  # only the matcher changes
    second = evaluate(matcher, small_pairs, cache, progress=False)
    assert len(calls) == 6 and cache.hits == 2 + 8
    assert second["summary"]["num_matches"] > first["summary"]["num_matches"]


def test_detector_change_invalidates_the_cache(small_pairs):
    matcher = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 256}})
    cache = FeatureCache()
    evaluate(matcher, small_pairs, cache, progress=False)
    misses = cache.misses
    with torch.no_grad():
        matcher.detector.score_head[0].weight.mul_(0.5)  # e.g. a pruning step on the detector
    evaluate(matcher, small_pairs, cache, progress=False)
    assert cache.misses == 2 * misses


def test_resized_evaluation_accounts_for_the_scales(small_pairs, tmp_path):
    pairs_file = small_pairs.export(tmp_path)
    matcher = build_matcher("sift+nn")
    full = evaluate(matcher, FilePairs(read_pairs(pairs_file), tmp_path, [-1]), progress=False)["summary"]
    half = evaluate(matcher, FilePairs(read_pairs(pairs_file), tmp_path, [200, 150]), progress=False)["summary"]
    assert full["precision"] > 0.9 and half["precision"] > 0.85
    assert full["failures"] == half["failures"] == 0


def test_detector_settings_are_part_of_the_cache_identity():
    a = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}})
    b = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 256}})
    c = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}, "matcher": {"filter_threshold": 0.5}})
    assert a.detector_fingerprint() != b.detector_fingerprint()
    assert a.detector_fingerprint() == c.detector_fingerprint()  # the matcher's settings do not matter


def test_feature_cache_survives_the_process_and_a_damaged_file_is_only_a_warning(small_pairs, tmp_path, caplog):
    matcher = build_matcher("sift+nn")
    cache = FeatureCache()
    first = evaluate(matcher, small_pairs, cache, progress=False)
    cache.save(tmp_path / "cache" / "features.pt")
    again = FeatureCache()
    again.load(tmp_path / "cache" / "features.pt")
    second = evaluate(matcher, small_pairs, again, progress=False)
    assert again.misses == 0 and again.added == 0  # nothing extracted: every image came from the file
    assert second["summary"] == first["summary"]
    (tmp_path / "bad.pt").write_bytes(b"not a cache")
    damaged = FeatureCache()
    damaged.load(tmp_path / "bad.pt")
    assert "unreadable" in caplog.text and not damaged.items
