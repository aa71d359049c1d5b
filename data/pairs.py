"""Image pairs: pairs files (official pose format or homography format) and fixed synthetic evaluation pairs.

Pairs file lines:
  name0 name1                                         (no ground truth)
  name0 name1 h11 h12 h13 h21 h22 h23 h31 h32 h33     (H maps pixels of image0 to image1, images as stored)
  name0 name1 rot0 rot1 K0(9) K1(9) T_0to1(16)        (the official pose format)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np

from helper import MAX_SIDE, Check, InputError, atomic_path, read_image, read_text, resize_to

from .homographies import (
    VIEWPOINTS,
    HomographyConfig,
    crop_resize,
    interpolate_homography,
    photometric_augment,
    photometric_change,
    sample_homography,
    warp_image,
)
from .images import ImageSource, open_source, readable_images, split_names


@dataclass
class Pair:
    """Two image names and their ground truth, if any, for the images as stored."""

    name0: str
    name1: str
    H: np.ndarray | None = None  # 3×3, image0 pixels -> image1 pixels
    K0: np.ndarray | None = None
    K1: np.ndarray | None = None
    T_0to1: np.ndarray | None = None
    rot0: int = 0
    rot1: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "homography" if self.H is not None else "pose" if self.T_0to1 is not None else "none"

    @property
    def stems(self) -> tuple[str, str]:
        return Path(self.name0).stem, Path(self.name1).stem

    def line(self) -> str:
        """This pair as a pairs-file line (full float64 precision)."""
        fmt = lambda a: " ".join(repr(float(v)) for v in np.asarray(a).ravel())  # noqa: E731
        if self.kind == "homography":
            return f"{self.name0} {self.name1} {fmt(self.H)}"
        if self.kind == "pose":
            return f"{self.name0} {self.name1} {self.rot0} {self.rot1} {fmt(self.K0)} {fmt(self.K1)} {fmt(self.T_0to1)}"
        return f"{self.name0} {self.name1}"


def _plain(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip(".") or "_"


def unique_file_names(names: Iterable[str], suffix: str = ".png") -> dict[str, str]:
    """Each image name as one plain file name (letters, digits, ``._+-``: a pairs file reads it back, whatever the
    original held — spaces, newlines, folders), with ``suffix``; names that would coincide (``x/a.png``, ``y/a.png``)
    are told apart by a digest of the original name."""
    names = list(dict.fromkeys(names))
    plain = {n: _plain(Path(n).stem) for n in names}
    taken = Counter(plain.values())
    return {
        n: (p if taken[p] == 1 else f"{p}-{hashlib.sha1(n.encode()).hexdigest()[:8]}") + suffix
        for n, p in plain.items()
    }


def output_stems(pairs: Sequence[Pair]) -> list[str]:
    """Per pair, the stem of its output files: the official ``{stem0}_{stem1}``, and where two different pairs would
    share it (images of one base name in two folders), a digest of the pair's line after it: one pair's matches are
    never written over, or read back from the cache as, another's."""
    official = [f"{a}_{b}" for a, b in (p.stems for p in pairs)]
    lines: dict[str, set[str]] = {}
    for stem, pair in zip(official, pairs):
        lines.setdefault(stem, set()).add(pair.line())
    return [
        stem if len(lines[stem]) == 1 else f"{stem}-{hashlib.sha1(pair.line().encode()).hexdigest()[:8]}"
        for stem, pair in zip(official, pairs)
    ]


def checked_homography(H: np.ndarray) -> np.ndarray:
    """``H`` if it is a finite, well-conditioned homography (ValueError otherwise): its condition number, scale
    aside, below 1e10 — a nearly singular one sends points to infinity or rounds them away."""
    if not np.all(np.isfinite(H)) or not np.abs(H).max() > 0:
        raise ValueError("the homography is not finite")
    if np.linalg.cond(H / np.abs(H).max()) > 1e10:
        raise ValueError("the homography is singular or nearly so (condition number above 1e10)")
    return H


def checked_intrinsics(K: np.ndarray) -> np.ndarray:
    """``K`` if it is a camera matrix: finite, positive focal lengths, last row 0 0 1 (ValueError otherwise)."""
    if not np.all(np.isfinite(K)) or not (K[0, 0] > 0 and K[1, 1] > 0) or not np.allclose(K[2], [0, 0, 1]):
        raise ValueError("intrinsics must be finite with positive focal lengths and a last row 0 0 1")
    return K


def checked_pose(T: np.ndarray) -> np.ndarray:
    """``T`` if it is a rigid motion: finite, a rotation (orthonormal, determinant 1), last row 0 0 0 1."""
    if not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1]):
        raise ValueError("the pose must be finite with a last row 0 0 0 1")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or np.linalg.det(R) < 0:
        raise ValueError("the pose's rotation is not a rotation (R R^T != I or det < 0)")
    return T


def parse_pair_line(line: str, where: str) -> Pair:
    """One pairs-file line -> Pair; a malformed line raises InputError naming ``where`` (file:line)."""
    parts = line.split()
    try:
        if len(parts) == 2:
            return Pair(parts[0], parts[1])
        if len(parts) == 11:
            return Pair(parts[0], parts[1], H=checked_homography(np.array(parts[2:], np.float64).reshape(3, 3)))
        if len(parts) == 38:
            rot0, rot1 = int(parts[2]), int(parts[3])
            if not {rot0, rot1} <= {0, 1, 2, 3}:
                raise ValueError("rotations are quarter turns 0-3")
            return Pair(
                parts[0],
                parts[1],
                rot0=rot0,
                rot1=rot1,
                K0=checked_intrinsics(np.array(parts[4:13], np.float64).reshape(3, 3)),
                K1=checked_intrinsics(np.array(parts[13:22], np.float64).reshape(3, 3)),
                T_0to1=checked_pose(np.array(parts[22:], np.float64).reshape(4, 4)),
            )
    except ValueError as e:
        raise InputError(f"{where}: malformed pair line ({e})") from None
    raise InputError(f"{where}: expected 2, 11 (homography) or 38 (pose) fields, got {len(parts)}")


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    path = Path(path)
    pairs = []
    for i, line in enumerate(read_text(path, "pairs file").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            pairs.append(parse_pair_line(line, f"{path}:{i}"))
    if not pairs:
        raise InputError(f"pairs file {path} has no pairs")
    return pairs


def read_homography_file(path: str | os.PathLike) -> np.ndarray:
    """A published 3×3 homography: plain text (Oxford / HPatches ``H1to3p``, ``H_1_2``) or an OpenCV XML/YAML
    storage holding one matrix (OpenCV's ``samples/data/H1to3p.xml``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"homography file not found: {path}")
    if path.suffix.lower() in (".xml", ".yml", ".yaml"):
        storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
        root = storage.root()
        nodes = [root.getNode(k) for k in root.keys()] if storage.isOpened() else []
        H = nodes[0].mat() if len(nodes) == 1 else None
        storage.release()
    else:
        try:
            H = np.loadtxt(path, dtype=np.float64)
        except ValueError:
            H = None
    if H is None or np.shape(H) != (3, 3) or not np.all(np.isfinite(H)) or abs(np.linalg.det(H)) < 1e-12:
        raise InputError(f"{path}: expected one finite, invertible 3×3 homography")
    return np.asarray(H, np.float64)


def write_pairs(path: str | os.PathLike, pairs: Sequence[Pair]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(p.line() + "\n" for p in pairs))


class PairSet(Sequence):
    """Pairs plus the images they refer to, at evaluation resolution, with ground truth in that resolution."""

    ident = ""
    pairs: list[Pair]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]

    def image(self, pair: Pair, i: int) -> tuple[str, np.ndarray]:
        """(cache key, RGB uint8 image) of image ``i`` (0 or 1) of ``pair``."""
        raise NotImplementedError

    def ground_truth(self, pair: Pair) -> Pair:
        """The pair with its ground truth expressed for the images that ``image`` returns."""
        return pair

    def view(self, pair: Pair, i: int) -> tuple[str, tuple[int, ...], np.ndarray | None]:
        """(cache key, image shape, the image or None): what a cached detector output needs. A set that knows key
        and shape without making the image (rendered scenes) returns None for it unless it is at hand."""
        key, image = self.image(pair, i)
        return key, image.shape, image


class SyntheticPairs(PairSet):
    """A fixed list of homography pairs: photos (cropped to size) against seeded random warps of them.

    The same source, names, size, seed and settings give the same pairs on any machine. Photos are used in
    order, cycling when there are fewer than pairs; only the photos needed are read (and kept). With
    ``augment`` > 0 both images get seeded photometric augmentation (for training).
    """

    def __init__(
        self,
        source: ImageSource,
        names: list[str],
        num_pairs: int,
        size: tuple[int, int] = (640, 480),
        seed: int = 0,
        homography: HomographyConfig | None = None,
        augment: float = 0.0,
        photometric: float = 0.0,
    ):
        self.source, self.size, self.seed, self.augment = source, tuple(size), seed, augment
        self.photometric = photometric
        self.homography = homography or HomographyConfig()
        self._images: dict[str, np.ndarray] = {}
        for name, image in readable_images(source, names):
            self._images[name] = crop_resize(image, self.size)
            if len(self._images) >= num_pairs:
                break
        usable = list(self._images)
        if not usable:
            raise InputError(f"no readable images among {len(names)} in {source.ident}")
        self.pairs = []
        for i in range(num_pairs):
            name = usable[i % len(usable)]
            try:
                H = sample_homography(np.random.default_rng([seed, i]), self.size, self.homography)
            except ValueError as e:  # the amplitudes asked for leave no patch inside the image
                raise InputError(f"pair {i}: {e}") from None
            warped = f"{Path(name).stem}_warp{i:04d}.png"
            self.pairs.append(Pair(name, warped, H=H, meta={"index": i}))
        self.ident = (
            f"synthetic:{source.ident}:{self.size}:{seed}:{augment}:{sorted(self.homography.as_dict().items())}"
        ) + (f":photometric={photometric}" if photometric else "")

    def image(self, pair: Pair, i: int) -> tuple[str, np.ndarray]:
        base = self._images[pair.name0]
        image = base if i == 0 else warp_image(base, pair.H, self.size)
        if i == 1 and self.photometric > 0:  # the tier's other light and camera, seeded per pair
            image = photometric_change(
                image, np.random.default_rng([self.seed, pair.meta["index"], 11]), self.photometric
            )
        if self.augment > 0:
            rng = np.random.default_rng([self.seed, pair.meta["index"], i, 7])
            return f"{self.ident}:{pair.name1}:{i}", photometric_augment(image, rng, self.augment)
        return f"{self.ident}:{pair.name0 if i == 0 else pair.name1}", image

    def export(self, folder: str | os.PathLike, pairs_file: str = "pairs.txt") -> Path:
        """Write the images and a homography pairs file, so ``match_pairs.py`` reproduces any result."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        names = unique_file_names(n for pair in self.pairs for n in (pair.name0, pair.name1))
        written = set()
        for pair in self.pairs:
            for i, name in enumerate((pair.name0, pair.name1)):
                if names[name] in written:
                    continue
                with atomic_path(folder / names[name]) as tmp:
                    ok, buf = cv2.imencode(".png", cv2.cvtColor(self.image(pair, i)[1], cv2.COLOR_RGB2BGR))
                    tmp.write_bytes(buf.tobytes())
                written.add(names[name])
        exported = [Pair(names[p.name0], names[p.name1], H=p.H) for p in self.pairs]
        write_pairs(folder / pairs_file, exported)
        return folder / pairs_file


class SequencePairs(SyntheticPairs):
    """A photo against frames of a smooth camera motion: frame i is warped ``i / (n - 1)`` of the way along
    one seeded homography (for the dense-vs-compressed animation)."""

    def __init__(
        self,
        source: ImageSource,
        name: str,
        num_frames: int = 12,
        size: tuple[int, int] = (640, 480),
        seed: int = 0,
        homography: HomographyConfig | None = None,
    ):
        super().__init__(source, [name], num_frames, size, seed, homography)
        H = sample_homography(np.random.default_rng([seed, 10**6]), self.size, self.homography)
        for i, pair in enumerate(self.pairs):
            pair.H = interpolate_homography(H, self.size, (i + 1) / num_frames)
            pair.name1 = f"{Path(name).stem}_frame{i:04d}.png"
        self.ident += ":sequence"


class FilePairs(PairSet):
    """Pairs from a pairs file with images in a folder, resized like the official match_pairs.py (or, with
    ``short_side``, to that shorter side keeping the aspect)."""

    def __init__(
        self,
        pairs: list[Pair],
        input_dir: str | os.PathLike,
        resize: Sequence[int] = (640, 480),
        resize_float: bool = False,
        short_side: int | None = None,
    ):
        self.pairs, self.input_dir = pairs, Path(input_dir)
        self.resize, self.resize_float, self.short_side = list(resize), resize_float, short_side
        self.ident = f"files:{self.input_dir.resolve()}:{self.resize}:{resize_float}:{short_side}"
        self._scales: dict[str, tuple[float, float]] = {}

    def load(self, name: str, rotation: int = 0) -> np.ndarray:
        image = read_image(self.input_dir / name)
        h, w = image.shape[:2]
        if self.short_side:  # the shorter side to this many pixels, as glue-factory's HPatches evaluation
            s = self.short_side / min(h, w)
            image = resize_to(image, [int(round(w * s)), int(round(h * s))], self.resize_float)
        else:
            image = resize_to(image, self.resize, self.resize_float)
        self._scales[name] = (w / image.shape[1], h / image.shape[0])
        if rotation:
            image = np.ascontiguousarray(np.rot90(image, k=rotation))
        return image

    def image(self, pair: Pair, i: int) -> tuple[str, np.ndarray]:
        name, rot = (pair.name0, pair.rot0) if i == 0 else (pair.name1, pair.rot1)
        image = self.load(name, rot)
        if image.dtype != np.uint8:  # --resize_float keeps float precision
            image = np.clip(image, 0, 255)
        return f"{self.ident}:{name}:{rot}", image

    def scales(self, name: str) -> tuple[float, float]:
        """(original / resized) width and height factors of an image (reads it once if needed)."""
        if name not in self._scales:
            self.load(name)
        return self._scales[name]

    def ground_truth(self, pair: Pair) -> Pair:
        if pair.kind == "homography":
            s0, s1 = self.scales(pair.name0), self.scales(pair.name1)
            S0 = np.diag([s0[0], s0[1], 1.0])
            S1_inv = np.diag([1 / s1[0], 1 / s1[1], 1.0])
            # Resized pixels are mapped with the centre convention of the resize: x_orig = s * x.
            return Pair(pair.name0, pair.name1, H=S1_inv @ pair.H @ S0, meta=pair.meta)
        if pair.kind == "pose":
            # As the official code: the scales are swapped for odd rotations before scaling K.
            s0 = self.scales(pair.name0)[:: -1 if pair.rot0 % 2 else 1]
            s1 = self.scales(pair.name1)[:: -1 if pair.rot1 % 2 else 1]
            return Pair(
                pair.name0,
                pair.name1,
                K0=scale_intrinsics(pair.K0, s0),
                K1=scale_intrinsics(pair.K1, s1),
                T_0to1=pair.T_0to1,
                rot0=pair.rot0,
                rot1=pair.rot1,
                meta=pair.meta,
            )
        return pair


# Evaluation tiers of synthetic pairs. Homography tiers: the viewpoint amplitudes (data/homographies.py VIEWPOINTS)
# and the strength of the second image's photometric change; "easy" is the seed's protocol (where a dense pipeline is
# saturated), "hard" is where a small loss can show. "pose": two-view 3D scenes with relative pose (data/scenes.py,
# its SceneConfig with these settings changed).
TIERS: dict[str, dict[str, Any]] = {
    "easy": {"viewpoint": "easy", "photometric": 0.0},
    "hard": {"viewpoint": "hard", "photometric": 0.5},
    "pose": {"scenes": {}},
}

# Pair sets other modules generate, by a tier's key ("scenes": data/scenes.py, which builds on this module and registers
# itself when the data package is imported): (source, names, num_pairs, size, seed, settings) -> PairSet.
GENERATORS: dict[str, Callable[..., PairSet]] = {}

# One section of pairs settings (a config's "val", "train", "calibration"), with the defaults of a plain evaluation.
PAIRS: dict[str, Any] = {
    "tier": "easy",
    "source": "sample",
    "split": "all",
    "val_fraction": 0.2,
    "num_pairs": 100,
    "size": [640, 480],
    "difficulty": 0.7,
    "augment": 0.0,
    "seed": 0,
}


SIZE = Check(kind=list, length=2, each=Check(kind=int, lo=16, hi=MAX_SIDE))  # W H of the pairs' images
SEED = Check(kind=int, lo=0, hi=2**31 - 1)  # NumPy's seeds: 0 to 2**32 - 1, less one per data-parallel rank
PAIRS_CHECKS: dict[str, Check] = {  # a section of pairs: PAIRS' keys, and a val section's evaluation settings
    "seed": SEED,
    "tier": Check(choices=tuple(TIERS)),
    "split": Check(choices=("all", "train", "val")),
    "val_fraction": Check(lo=0, hi=1, open=True),
    "num_pairs": Check(lo=1),
    "size": SIZE,
    "difficulty": Check(lo=0, hi=1),
    "augment": Check(lo=0),
    "every": Check(lo=1),
    "estimator": Check(choices=("ransac", "magsac", "poselib", "dlt")),
    "ransac_threshold": Check(lo=0, open=True),
}


def make_pairs(settings: Mapping[str, Any] | None = None, **overrides: Any) -> PairSet:
    """The fixed synthetic pairs of a section of settings (PAIRS, then ``settings``, then ``overrides``): the same on
    every machine for the same settings; ``augment`` > 0 adds seeded photometric changes to both images (homography
    tiers only: the pose tier is for evaluation; ``difficulty`` scales homography tiers only). Keys that are not
    about pairs (e.g. a val section's ``every``) are ignored."""
    cfg = {**PAIRS, **(settings or {}), **overrides}
    if cfg["tier"] not in TIERS:
        raise InputError(f"unknown tier {cfg['tier']!r} (choose from {', '.join(TIERS)})")
    tier = TIERS[cfg["tier"]]
    if "scenes" in tier and cfg["augment"]:
        raise InputError(f"tier {cfg['tier']!r} is for evaluation: its pairs take no augment (got {cfg['augment']})")
    source = open_source(cfg["source"])
    names = split_names(source.names, cfg["split"], cfg["val_fraction"])
    if "scenes" in tier:
        make = GENERATORS["scenes"]
        return make(source, names, cfg["num_pairs"], tuple(cfg["size"]), cfg["seed"], tier["scenes"])
    return SyntheticPairs(
        source,
        names,
        cfg["num_pairs"],
        tuple(cfg["size"]),
        cfg["seed"],
        replace(VIEWPOINTS[tier["viewpoint"]], difficulty=cfg["difficulty"]),
        cfg["augment"],
        tier["photometric"],
    )


def scale_intrinsics(K: np.ndarray, scales: tuple[float, float]) -> np.ndarray:
    """Intrinsics of an image resized by 1/scales (as the official code)."""
    return np.diag([1.0 / scales[0], 1.0 / scales[1], 1.0]) @ K
