"""A small folder laid out like HPatches (800×600 .ppm images, plain-text H_1_k), from sample photos warped by
known homographies; it stands in for the 1.3 GB download in tests."""

from pathlib import Path

import cv2
import numpy as np

from data.homographies import HomographyConfig, crop_resize, sample_homography, warp_image
from data.hpatches import HPATCHES_FOLDER
from data.images import SampleSource

SCENES = {"v_fake": "astronaut.png", "i_fake": "coffee.png", "v_talent": "chelsea.png"}  # v_talent: a large one


def make_release(folder: Path) -> Path:
    """``folder/hpatches-sequences-release`` with the scenes of SCENES; returns it."""
    release, photos, size = folder / HPATCHES_FOLDER, SampleSource(), (800, 600)
    for seed, (scene, photo) in enumerate(SCENES.items()):
        (release / scene).mkdir(parents=True)
        base = crop_resize(photos.read(photo), size)
        cv2.imwrite(str(release / scene / "1.ppm"), cv2.cvtColor(base, cv2.COLOR_RGB2BGR))
        for k in range(2, 7):
            H = sample_homography(np.random.default_rng([seed, k]), size, HomographyConfig(difficulty=0.5))
            cv2.imwrite(str(release / scene / f"{k}.ppm"), cv2.cvtColor(warp_image(base, H, size), cv2.COLOR_RGB2BGR))
            np.savetxt(release / scene / f"H_1_{k}", H)
    return release
