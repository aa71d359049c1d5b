"""Two-view 3D scenes: the renderer agrees with the ground-truth pose, scenes are seeded, pose estimators recover a
known pose."""

import cv2
import numpy as np
import pytest

from data import scenes
from data.images import open_source, split_names
from data.scenes import Face, ScenePairs, intrinsics, render, rotation
from helper import InputError
from pipeline.metrics import estimate_pose, pose_errors


def smooth_texture(side=256):
    cells = np.random.default_rng(0).integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return cv2.resize(cells, (side, side), interpolation=cv2.INTER_CUBIC)


def agreement(image0, image1, K, T, face):
    """Share of camera 0's pixels on the plane whose colour is found where the plane's homography under the pose
    ``T`` puts them in camera 1 (within 6 grey levels)."""
    n = np.cross(face.edge_u, face.edge_v)
    n /= np.linalg.norm(n)
    d = n @ face.origin  # the plane n . X = d in camera 0 maps pixels to camera 1 by K (R + t n^T / d) K^-1
    H = K @ (T[:3, :3] + np.outer(T[:3, 3], n) / d) @ np.linalg.inv(K)
    h, w = image0.shape[:2]
    ys, xs = np.mgrid[10 : h - 10 : 3, 10 : w - 10 : 3]
    points1 = np.c_[xs.ravel(), ys.ravel(), np.ones(xs.size)] @ H.T
    points1 = (points1[:, :2] / points1[:, 2:]).astype(np.float32)
    keep = np.all((points1 > 3) & (points1 < [w - 4, h - 4]), 1)
    seen = cv2.remap(image1, points1[keep, None, 0], points1[keep, None, 1], cv2.INTER_LINEAR)[:, 0]
    here = image0[ys.ravel()[keep], xs.ravel()[keep]]
    return keep.sum(), float((np.abs(seen.astype(int) - here.astype(int)).max(1) <= 6).mean())


def test_a_rendered_plane_moves_between_the_views_by_the_homography_of_its_pose():
    size, K = (320, 240), intrinsics((320, 240), 60.0)
    face = Face(np.array([-4.0, -3.0, 6.0]), np.array([8.0, 0.0, 1.5]), np.array([0.0, 6.0, 0.0]), smooth_texture())
    T = np.eye(4)
    T[:3, :3] = rotation([0.1, 1.0, 0.0], 12.0)
    T[:3, 3] = [-0.6, 0.1, 0.2]
    image0, image1 = render([face], K, np.eye(4), size), render([face], K, T, size)
    seen, share = agreement(image0, image1, K, T, face)
    assert seen > 3000 and share > 0.97
    wrong = T.copy()
    wrong[:3, 3] *= -1  # the pose the other way: the check can fail
    assert agreement(image0, image1, K, wrong, face)[1] < 0.5


def test_nearer_faces_hide_farther_ones():
    K = intrinsics((64, 48), 60.0)
    wall = Face(
        np.array([-10.0, -10.0, 10.0]), np.array([20.0, 0, 0]), np.array([0, 20.0, 0]), np.full((8, 8, 3), 50, np.uint8)
    )
    near = Face(np.array([-1.0, -1.0, 5.0]), np.array([2.0, 0, 0]), np.array([0, 2.0, 0]),
                np.full((8, 8, 3), 200, np.uint8))  # fmt: skip
    for order in ([wall, near], [near, wall]):
        image = render(order, K, np.eye(4), (64, 48))
        assert image[24, 32, 0] == 200 and image[2, 2, 0] == 50


@pytest.fixture(scope="module")
def photos():
    source = open_source("sample")
    return source, split_names(source.names, "val", 0.2)


def test_scene_pairs_are_seeded_and_in_the_official_pose_format(photos, tmp_path):
    source, names = photos
    a, b = ScenePairs(source, names, 2, (160, 120), seed=3), ScenePairs(source, names, 2, (160, 120), seed=3)
    other = ScenePairs(source, names, 2, (160, 120), seed=4)
    assert a.ident == b.ident != other.ident
    for p, q, r in zip(a, b, other):
        np.testing.assert_array_equal(p.T_0to1, q.T_0to1)
        assert not np.allclose(p.T_0to1, r.T_0to1)
        assert p.kind == "pose" and p.K0.shape == (3, 3)
        for i in (0, 1):
            np.testing.assert_array_equal(a.image(p, i)[1], b.image(q, i)[1])
    R, t = a[0].T_0to1[:3, :3], a[0].T_0to1[:3, 3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.norm(t) > 0.5  # a real baseline
    exported = a.export(tmp_path / "scenes")
    from data.pairs import read_pairs

    back = read_pairs(exported)
    np.testing.assert_allclose(back[1].T_0to1, a[1].T_0to1, rtol=0, atol=0)
    assert (tmp_path / "scenes" / back[1].name1).is_file()


def test_scenes_that_cannot_be_built_are_a_one_line_error(photos, monkeypatch):
    source, names = photos
    monkeypatch.setattr(scenes, "MIN_FACES", 10**6)
    with pytest.raises(InputError, match="scene 0: no scene keeps 1000000 faces in front of both cameras"):
        ScenePairs(source, names, 1, (160, 120))


@pytest.mark.parametrize("method", ["ransac", "magsac", "poselib"])
def test_pose_estimators_recover_a_known_pose(method):
    rng = np.random.default_rng(0)
    K = intrinsics((640, 480), 60.0)
    X = np.c_[rng.uniform(-3, 3, 300), rng.uniform(-2, 2, 300), rng.uniform(4, 10, 300)]
    R, t = rotation([0.2, 1.0, 0.1], 20.0), np.array([-1.0, 0.2, 0.3])
    project = lambda P: (P @ K.T)[:, :2] / P[:, 2:]  # noqa: E731
    k0, k1 = project(X), project(X @ R.T + t)
    k1[:30] += rng.uniform(-80, 80, (30, 2))  # outliers
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    R_est, t_est, inliers = estimate_pose(k0, k1 + rng.normal(0, 0.3, k1.shape), K, K, 1.0, method=method)
    err_t, err_R = pose_errors(T, R_est, t_est)
    assert err_t < 1.0 and err_R < 0.5 and inliers[30:].mean() > 0.9


def test_an_estimator_without_a_relative_pose_is_named():
    K = intrinsics((640, 480), 60.0)
    with pytest.raises(InputError, match="'dlt' does not estimate a relative pose"):
        estimate_pose(np.zeros((8, 2)), np.zeros((8, 2)), K, K, method="dlt")


def test_the_pose_tier_is_evaluated_with_the_pose_protocol():
    from data.pairs import make_pairs
    from models.matching import build_matcher
    from pipeline.evaluation import evaluate

    pairs = make_pairs(source="sample", num_pairs=3, tier="pose")
    assert isinstance(pairs, ScenePairs) and all(p.kind == "pose" for p in pairs)
    result = evaluate(build_matcher("aliked+lightglue"), pairs, method="poselib", progress=False)
    assert {"auc@5deg", "auc@10deg", "auc@20deg"} <= set(result["summary"])
    # the pair of the narrowest baseline is solved within a degree by the dense pipeline
    angle = lambda p: np.linalg.norm(cv2.Rodrigues(p.T_0to1[:3, :3])[0])  # noqa: E731
    row = result["rows"][min(range(len(pairs)), key=lambda i: angle(pairs[i]))]
    assert max(row["error_R"], row["error_t"]) < 1.0 and row["precision"] > 0.9
    with pytest.raises(InputError, match="its pairs take no augment"):
        make_pairs(source="sample", num_pairs=2, tier="pose", augment=0.5)


def test_cached_detector_outputs_need_no_rendering(monkeypatch):
    # a pose tier larger than the images kept in memory is rendered once per detector, not once per model judged
    from data.pairs import make_pairs
    from models.matching import build_matcher
    from pipeline.evaluation import FeatureCache, evaluate

    settings = {"source": "sample", "num_pairs": 2, "tier": "pose", "size": [320, 240]}
    matcher, cache = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 128}}), FeatureCache()
    first = evaluate(matcher, make_pairs(settings), cache, method="poselib", progress=False)
    calls = []
    monkeypatch.setattr(scenes, "render", lambda *a, **k: calls.append(1))
    again = evaluate(matcher, make_pairs(settings), cache, method="poselib", progress=False)  # a fresh pair set
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]  # noqa: E731
    assert calls == [] and untimed(again["rows"]) == untimed(first["rows"])
