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


def test_two_image_paths_match_without_a_pairs_file_and_the_picture_names_the_pipeline(exported, tmp_path, capsys):
    image0, image1 = (exported.parent / name for name in read_pairs(exported)[0].stems)
    image0, image1 = (next(exported.parent.glob(f"{p.name}.*")) for p in (image0, image1))
    out = tmp_path / "o"
    match_pairs.main([str(image0), str(image1), "--matcher", "sift+nn", "--output_dir", str(out), "--viz"])
    assert "with sift+nn" in capsys.readouterr().out
    saved = np.load(out / f"{image0.stem}_{image1.stem}_matches.npz")
    assert (saved["matches"] > -1).sum() > 10 and (out / f"{image0.stem}_{image1.stem}_matches.png").is_file()
    with pytest.raises(InputError, match="give two images"):
        match_pairs.main([str(image0), "--matcher", "sift+nn", "--output_dir", str(out)])
    with pytest.raises(InputError, match="--superglue chooses SuperGlue's weights"):
        match_pairs.main([str(image0), str(image1), "--superglue", "outdoor", "--matcher", "sift+nn"])
    with pytest.raises(InputError, match="--pipeline fast is a ready pipeline .* drop --max_keypoints"):
        match_pairs.main([str(image0), str(image1), "--pipeline", "fast", "--max_keypoints", "100"])
    match_pairs.main([str(image0), str(image1), "--pipeline", "accurate", "--output_dir", str(out), "--viz"])
    assert "with aliked+lightglue (accurate)" in capsys.readouterr().out


def test_superglue_without_its_weights_is_one_line_naming_the_file_never_another_matcher(tmp_path, monkeypatch, capsys):
    import urllib.error

    from helper import run_cli
    from models import weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights, "cache_dir", lambda: tmp_path / "hub")
    monkeypatch.setattr(weights, "download", offline)
    with pytest.raises(SystemExit) as exit_:
        run_cli(match_pairs.main, ["--superglue", "outdoor", "--output_dir", str(tmp_path / "o")])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]  # logs aside
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert str(tmp_path / "hub" / "superpoint_v1.pth") in err[0] and "download" in err[0]
    assert not (tmp_path / "o").exists()
