"""match_pairs.py: official outputs, evaluation that an independent recomputation confirms, clear errors."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import ROOT

import match_pairs
from data.images import open_source
from data.pairs import SyntheticPairs, read_pairs
from helper import InputError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    src = open_source("sample")
    return SyntheticPairs(src, ["astronaut.png", "coffee.png", "rocket.jpg"], 3, (480, 360), seed=1).export(folder)


def test_outputs_and_independent_recomputation(exported, tmp_path):
    out = tmp_path / "out"
    summaries = match_pairs.main(
        [
            "--input_pairs",
            str(exported),
            "--output_dir",
            str(out),
            "--matcher",
            "sift+nn",
            "--resize",
            "320",
            "240",
            "--eval",
            "--viz",
            "--fast_viz",
        ]
    )
    assert summaries["homography"]["num_pairs"] == 3
    for pair in read_pairs(exported):
        stem0, stem1 = pair.stems
        res = np.load(out / f"{stem0}_{stem1}_matches.npz")
        ev = np.load(out / f"{stem0}_{stem1}_evaluation.npz")
        assert set(res.files) == {"keypoints0", "keypoints1", "matches", "match_confidence"}
        assert (out / f"{stem0}_{stem1}_matches.png").stat().st_size > 1000
        # Recompute from the written matches with OpenCV only: H of the stored images, rescaled to 320x240.
        S = np.diag([480 / 320, 360 / 240, 1.0])
        H = np.linalg.inv(S) @ pair.H @ S
        valid = res["matches"] > -1
        k0 = res["keypoints0"][valid].astype(np.float64)
        k1 = res["keypoints1"][res["matches"][valid]].astype(np.float64)
        fwd = cv2.perspectiveTransform(k0[None], H)[0]
        bwd = cv2.perspectiveTransform(k1[None], np.linalg.inv(H))[0]
        err = 0.5 * (np.linalg.norm(fwd - k1, axis=1) + np.linalg.norm(bwd - k0, axis=1))
        assert float(ev["precision"]) == pytest.approx(np.mean(err < 3), abs=1e-12)
        assert int(ev["num_correct"]) == int(np.sum(err < 3))
        H_est, _ = cv2.findHomography(k0, k1, cv2.RANSAC, 3.0, maxIters=10000, confidence=0.9999)
        corners = np.array([[[0, 0], [319, 0], [319, 239], [0, 239]]], np.float64)
        ce = np.linalg.norm(
            cv2.perspectiveTransform(corners, H_est) - cv2.perspectiveTransform(corners, H), axis=2
        ).mean()
        assert float(ev["corner_error"]) == pytest.approx(ce, rel=1e-6)
        assert float(ev["precision"]) > 0.8


def test_cache_reuses_matches(exported, tmp_path):
    args = ["--input_pairs", str(exported), "--output_dir", str(tmp_path), "--matcher", "sift+nn", "--max_length", "1"]
    match_pairs.main(args)
    npz = next(tmp_path.glob("*_matches.npz"))
    before = npz.stat().st_mtime_ns
    match_pairs.main(args + ["--cache"])
    assert npz.stat().st_mtime_ns == before


def test_missing_image_and_eval_without_ground_truth(exported, tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("missing.png astronaut.png\n")
    with pytest.raises(InputError, match="image not found: .*missing.png"):
        match_pairs.main(
            [
                "--input_pairs",
                str(bad),
                "--input_dir",
                str(exported.parent),
                "--matcher",
                "sift+nn",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(InputError, match="--eval needs ground truth"):
        match_pairs.main(["--input_pairs", str(bad), "--eval", "--matcher", "sift+nn", "--output_dir", str(tmp_path)])


def test_command_line_error_is_one_line_with_status_2(tmp_path):
    bad = tmp_path / "pairs.txt"
    bad.write_text("a.png b.png\nthis line is broken\n")
    proc = subprocess.run(
        [sys.executable, "match_pairs.py", "--input_pairs", str(bad), "--matcher", "sift+nn"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert err == [f"error: {bad}:2: expected 2, 11 (homography) or 38 (pose) fields, got 4"]
    assert "Traceback" not in proc.stderr


def test_checkpoint_flag_runs_a_saved_model(exported, tmp_path):
    from models.matching import build_matcher
    from pipeline.checkpoint import save_checkpoint

    ckpt = save_checkpoint(build_matcher("sift+nn", {"matcher": {"ratio_threshold": 0.7}}), tmp_path / "sift.pth")
    summaries = match_pairs.main(
        [
            "--input_pairs",
            str(exported),
            "--output_dir",
            str(tmp_path / "o"),
            "--checkpoint",
            str(ckpt),
            "--eval",
            "--max_length",
            "1",
        ]
    )
    assert summaries["homography"]["num_pairs"] == 1 and summaries["homography"]["precision"] > 0.8


def test_sequence_input_matches_a_camera_sweep(tmp_path):
    summaries = match_pairs.main(
        [
            "--input_pairs",
            "sequence",
            "--output_dir",
            str(tmp_path),
            "--matcher",
            "sift+nn",
            "--eval",
            "--max_length",
            "3",
        ]
    )
    assert summaries["homography"]["num_pairs"] == 3
    assert len(list(tmp_path.glob("astronaut_astronaut_frame000*_matches.npz"))) == 3
    assert len(list((tmp_path / "sequence_pairs").glob("*.png"))) == 13  # the photo and 12 frames
