"""The real ground truth that installs offline: a small "real" tier of pairs, a sanity check beside the synthetic tiers
(too few pairs for intervals).

- graffiti: Oxford's graf1 -> graf3 (about 40° of viewpoint change) with its published homography (OpenCV's sample
  data, Debian's opencv-doc);
- aloe (Middlebury 2006, opencv-doc) and motorcycle (Middlebury 2014 at ¼ size, scikit-image): rectified stereo pairs
  with ground-truth disparity of the left image (the right image's pixel is ``x - disparity``, same row);
- chessboard: OpenCV's 13 stereo chessboard pairs (opencv-doc's left/right01-14), the rig calibrated here from
  their 9×6 chessboard corners with OpenCV's stereo calibration; the images are undistorted with it, so the pairs
  are pose pairs of a pinhole rig (the relative pose is the rig's, the same for every pair).

A stereo pair's match is right when it lands within 2 px of where the disparity puts it (rows within 2 px); graffiti
and chessboard pairs are judged as the homography and pose pairs they are.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from helper import InputError, read_image

from .images import opencv_samples_dir
from .pairs import Pair, PairSet, read_homography_file

BOARD = (9, 6)  # inner corners of OpenCV's stereo sample chessboard
CHESSBOARD_PAIRS = [f"{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)]


class RealPairs(PairSet):
    """Pairs of images held in memory, by name."""

    def __init__(self, images: dict[str, np.ndarray], pairs: list[Pair], ident: str):
        self.images, self.pairs, self.ident = images, pairs, ident

    def image(self, pair: Pair, i: int) -> tuple[str, np.ndarray]:
        name = pair.name0 if i == 0 else pair.name1
        return f"{self.ident}:{name}", self.images[name]


def graffiti(folder: Path) -> RealPairs:
    images = {n: read_image(folder / n) for n in ("graf1.png", "graf3.png")}
    pair = Pair("graf1.png", "graf3.png", H=read_homography_file(folder / "H1to3p.xml"), meta={"set": "graffiti"})
    return RealPairs(images, [pair], "real:graffiti")


def stereo(folder: Path) -> RealPairs:
    """Middlebury's aloe and motorcycle: rectified pairs, the left image's ground-truth disparity in ``meta``
    (NaN where unknown)."""
    aloe = cv2.imread(str(folder / "aloeGT.png"), cv2.IMREAD_UNCHANGED)
    if aloe is None:
        raise InputError(f"{folder / 'aloeGT.png'}: not a readable image")
    aloe = aloe.astype(np.float64)
    aloe[aloe == 0] = np.nan  # 0: no ground truth (occluded or unmatched)
    import skimage.data

    left, right, motorcycle = skimage.data.stereo_motorcycle()
    motorcycle = np.where(np.isfinite(motorcycle), motorcycle, np.nan)
    images = {"aloeL.jpg": read_image(folder / "aloeL.jpg"), "aloeR.jpg": read_image(folder / "aloeR.jpg"),
              "motorcycle_left.png": left, "motorcycle_right.png": right}  # fmt: skip
    pairs = [
        Pair("aloeL.jpg", "aloeR.jpg", meta={"set": "aloe", "disparity": aloe}),
        Pair("motorcycle_left.png", "motorcycle_right.png", meta={"set": "motorcycle", "disparity": motorcycle}),
    ]
    return RealPairs(images, pairs, "real:stereo")


def calibrate_rig(folder: Path) -> dict[str, np.ndarray]:
    """The stereo rig of OpenCV's chessboard pairs from their corners: K0, dist0, K1, dist1, R, T (right camera from
    left) and the RMS reprojection error in px."""
    board = np.zeros((BOARD[0] * BOARD[1], 3), np.float32)
    board[:, :2] = np.mgrid[0 : BOARD[0], 0 : BOARD[1]].T.reshape(-1, 2)
    found: list[tuple[np.ndarray, np.ndarray]] = []
    size = None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.01)
    for k in CHESSBOARD_PAIRS:
        corners = []
        for side in ("left", "right"):
            grey = cv2.imread(str(folder / f"{side}{k}.jpg"), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise InputError(f"{folder / f'{side}{k}.jpg'}: not a readable image")
            size = grey.shape[::-1]
            ok, c = cv2.findChessboardCorners(grey, BOARD)
            if not ok:
                break
            corners.append(cv2.cornerSubPix(grey, c, (11, 11), (-1, -1), criteria))
        if len(corners) == 2:
            found.append((corners[0], corners[1]))
    if len(found) < 5:
        raise InputError(f"the chessboard is found in only {len(found)} pairs of {folder}: cannot calibrate")
    objects = [board] * len(found)
    K0 = cv2.initCameraMatrix2D(objects, [f[0] for f in found], size, 0)
    K1 = cv2.initCameraMatrix2D(objects, [f[1] for f in found], size, 0)
    flags = cv2.CALIB_USE_INTRINSIC_GUESS | cv2.CALIB_SAME_FOCAL_LENGTH | cv2.CALIB_RATIONAL_MODEL
    flags |= cv2.CALIB_FIX_K3 | cv2.CALIB_FIX_K4 | cv2.CALIB_FIX_K5  # the OpenCV stereo sample's settings
    rms, K0, d0, K1, d1, R, T, _, _ = cv2.stereoCalibrate(
        objects, [f[0] for f in found], [f[1] for f in found], K0, np.zeros(8), K1, np.zeros(8), size,
        flags=flags, criteria=(cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-5),
    )  # fmt: skip
    return {"K0": K0, "dist0": d0, "K1": K1, "dist1": d1, "R": R, "T": T.ravel(), "rms": float(rms)}


def chessboard(folder: Path) -> RealPairs:
    """OpenCV's chessboard stereo pairs, undistorted, as pose pairs of the calibrated rig."""
    rig = calibrate_rig(folder)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = rig["R"], rig["T"]
    images, pairs = {}, []
    for k in CHESSBOARD_PAIRS:
        for side, K, dist in (("left", rig["K0"], rig["dist0"]), ("right", rig["K1"], rig["dist1"])):
            images[f"{side}{k}.jpg"] = cv2.undistort(read_image(folder / f"{side}{k}.jpg"), K, dist)
        pairs.append(Pair(f"left{k}.jpg", f"right{k}.jpg", K0=rig["K0"], K1=rig["K1"], T_0to1=T,
                          meta={"set": "chessboard", "rms": rig["rms"]}))  # fmt: skip
    return RealPairs(images, pairs, "real:chessboard")


def real_tier(folder: str | Path | None = None) -> dict[str, RealPairs]:
    """Every set of the real tier ({'graffiti', 'stereo', 'chessboard'}); ``folder``: OpenCV's sample data
    (default: opencv_samples_dir())."""
    folder = Path(folder) if folder else opencv_samples_dir()
    return {"graffiti": graffiti(folder), "stereo": stereo(folder), "chessboard": chessboard(folder)}


def disparity_metrics(
    kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray, disparity: np.ndarray, tol: float = 2.0
) -> dict[str, float | int]:
    """Matches of a rectified pair judged by the left image's disparity: right when the right keypoint is within
    ``tol`` px of (x - disparity, y); matches where the disparity is unknown are left out of the precision."""
    valid = matches > -1
    a, b = kpts0[valid], kpts1[matches[valid]]
    h, w = disparity.shape
    xi = np.clip(np.round(a[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.round(a[:, 1]).astype(int), 0, h - 1)
    d = disparity[yi, xi]
    known = np.isfinite(d)
    right = known & (np.abs(a[:, 0] - d - b[:, 0]) <= tol) & (np.abs(a[:, 1] - b[:, 1]) <= tol)
    return {
        "num_keypoints0": len(kpts0),
        "num_matches": int(valid.sum()),
        "num_judged": int(known.sum()),
        "num_correct": int(right.sum()),
        "precision": float(right.sum() / known.sum()) if known.any() else 0.0,
    }
