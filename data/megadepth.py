"""MegaDepth-1500 (the LoFTR test split as glue-factory packs it): 1500 pairs of two outdoor scenes with
SfM poses and intrinsics, the benchmark the field reports relative pose on (LightGlue, glue-factory, XFeat).

Layout (glue-factory's ``posed_images``): ``megadepth1500/images/<name>``, ``views.txt`` (one line per image:
``name R(9) t(3) MODEL width height params``, R|t from world to camera, a COLMAP pinhole camera) and ``pairs.txt``
(``name0 name1``). Downloaded on request (Colab, GPU machines: no registry ships it); the images are resized to a
longer side of 1600 px as glue-factory's LightGlue evaluation does.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from helper import InputError, read_text

from .hpatches import fetch_dataset
from .pairs import FilePairs, Pair, checked_intrinsics, checked_pose

MEGADEPTH_URL = "https://cvg-data.inf.ethz.ch/megadepth/megadepth1500.zip"
MEGADEPTH_FOLDER = "megadepth1500"
LONG_SIDE = 1600  # glue-factory's megadepth1500 evaluation of LightGlue
CAMERAS = {"PINHOLE": 4, "SIMPLE_PINHOLE": 3}  # COLMAP models without distortion: their parameter counts


def complete(root: Path) -> bool:
    return (root / "views.txt").is_file() and (root / "pairs.txt").is_file() and (root / "images").is_dir()


def fetch_megadepth(folder: str | os.PathLike, url: str = MEGADEPTH_URL) -> Path:
    """The MegaDepth-1500 folder: ``folder`` if it is one, else ``folder/megadepth1500``, downloaded there first if
    missing (never deleting or overwriting the user's files)."""
    return fetch_dataset(folder, url, MEGADEPTH_FOLDER, complete, "MegaDepth-1500", "images/, views.txt and pairs.txt")


def parse_view(fields: list[str], where: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, T_w2cam) of one views.txt line's fields after the name."""
    try:
        R, t = np.array(fields[:9], np.float64).reshape(3, 3), np.array(fields[9:12], np.float64)
        model, params = fields[12], np.array(fields[15:], np.float64)
    except (ValueError, IndexError):
        raise InputError(f"{where}: expected 'name R(9) t(3) MODEL width height params'") from None
    if model not in CAMERAS or len(params) != CAMERAS[model]:
        raise InputError(f"{where}: camera {model} with {len(params)} parameters (expected {', '.join(CAMERAS)})")
    fx, fy, cx, cy = params if model == "PINHOLE" else (params[0], params[0], params[1], params[2])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    try:  # COLMAP's principal point is in the pixel-corner convention; the project's pixels are centres
        return checked_intrinsics(np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1.0]])), checked_pose(T)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None


class MegaDepthPairs(FilePairs):
    """The pairs of pairs.txt with their intrinsics and relative pose from views.txt, images resized to a longer side
    of ``long_side`` (ground truth scaled to match)."""

    def __init__(self, root: str | os.PathLike, long_side: int = LONG_SIDE):
        root = Path(root)
        views = {}
        for i, line in enumerate(read_text(root / "views.txt").splitlines(), 1):
            if line.strip():
                name, *fields = line.split()
                views[name] = parse_view(fields, f"{root / 'views.txt'}:{i}")
        pairs = []
        for i, line in enumerate(read_text(root / "pairs.txt").splitlines(), 1):
            if not line.strip():
                continue
            names = line.split()
            missing = [n for n in names[:2] if n not in views]
            if len(names) < 2 or missing:
                raise InputError(f"{root / 'pairs.txt'}:{i}: expected two names of views.txt, got {line.strip()!r}")
            (K0, T0), (K1, T1) = views[names[0]], views[names[1]]
            pairs.append(Pair(names[0], names[1], K0=K0, K1=K1, T_0to1=T1 @ np.linalg.inv(T0)))
        if not pairs:
            raise InputError(f"{root / 'pairs.txt'} lists no pairs")
        super().__init__(pairs, root / "images", [long_side])
