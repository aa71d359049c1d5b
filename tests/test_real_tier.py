"""The real tier: Middlebury disparities, OpenCV's chessboard rig calibrated here, and the metric that needs no
estimator (data/real.py; OpenCV's sample data from Debian's opencv-doc, installed by .ci/run)."""

from dataclasses import replace

import numpy as np
import pytest

from data.real import calibrate_rig, disparity_metrics, real_tier
from pipeline.metrics import pair_metrics


def test_disparity_metric_counts_matches_where_the_disparity_puts_them():
    disparity = np.full((10, 20), 4.0)
    disparity[:, :3] = np.nan  # unknown there
    k0 = np.array([[10.0, 5.0], [12.0, 5.0], [1.0, 1.0], [15.0, 2.0]])
    k1 = np.array([[6.5, 5.2], [5.0, 5.0], [0.0, 1.0], [11.0, 9.0]])
    got = disparity_metrics(k0, k1, np.array([0, 1, 2, 3]), disparity)
    # right; 3 px off in x; no ground truth; right in x but 7 rows off
    assert got == {"num_keypoints0": 4, "num_matches": 4, "num_judged": 3, "num_correct": 1, "precision": 1 / 3}


@pytest.fixture(scope="module")
def tier():
    return real_tier()


def test_the_chessboard_rig_calibrates_as_opencvs_sample(tier):
    from data.images import opencv_samples_dir

    rig = calibrate_rig(opencv_samples_dir())
    assert rig["rms"] < 1.0  # px
    assert abs(rig["T"][0]) > 10 * np.abs(rig["T"][1:]).max()  # a side-by-side rig
    pair = tier["chessboard"].pairs[0]
    assert len(tier["chessboard"]) == 13 and pair.kind == "pose"
    # the board's own corners, found again in the undistorted images, satisfy the rig's epipolar geometry
    import cv2

    found = [cv2.findChessboardCorners(cv2.cvtColor(tier["chessboard"].image(pair, i)[1], cv2.COLOR_RGB2GRAY), (9, 6))
             for i in (0, 1)]  # fmt: skip
    assert found[0][0] and found[1][0]
    k0, k1 = (found[i][1].reshape(-1, 2).astype(np.float64) for i in (0, 1))
    pred = {"keypoints0": k0, "keypoints1": k1, "matches0": np.arange(len(k0)), "matching_scores0": np.ones(len(k0))}
    shape = tier["chessboard"].image(pair, 0)[1].shape
    assert pair_metrics(pair, pred, shape, shape)["precision"] == 1.0
    turned = replace(pair, T_0to1=pair.T_0to1.copy())  # tilted 2° across the epipolar lines: the check can fail
    turned.T_0to1[:3, :3] = cv2.Rodrigues(np.array([np.deg2rad(2.0), 0.0, 0.0]))[0] @ pair.T_0to1[:3, :3]
    assert pair_metrics(turned, pred, shape, shape)["precision"] < 0.5


def test_the_dense_pipeline_agrees_with_the_real_ground_truth(tier):
    from models.matching import build_matcher
    from pipeline.evaluation import predict

    matcher = build_matcher("aliked+lightglue")
    stereo = tier["stereo"]
    for pair in stereo:
        pred = predict(matcher, stereo, pair)
        got = disparity_metrics(pred["keypoints0"], pred["keypoints1"], pred["matches0"], pair.meta["disparity"])
        assert got["precision"] > 0.8 and got["num_correct"] > 300, pair.meta["set"]
        # the disparity the other way round (x + d) finds almost none: the metric can fail
        flipped = disparity_metrics(pred["keypoints0"], pred["keypoints1"], pred["matches0"], -pair.meta["disparity"])
        assert flipped["precision"] < 0.1
