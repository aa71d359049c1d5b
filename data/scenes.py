"""Two-view 3D scenes with known relative pose: procedurally built, rendered offline, seeded like the homography pairs.

A scene is a back wall, free-standing boxes and panels at different depths in front of it, every face textured with a
crop of a photograph of the split. Camera 0 looks at the scene; camera 1 orbits the scene's centre by a seeded angle
(parallax, occlusions and foreshortening that one homography cannot give), moves nearer or farther, rolls a little and
looks around; each camera has its own exposure, colour balance, noise, blur and JPEG compression. Faces are Lambertian
(lit by one seeded light, the same in both views).

Rendering: every face is a planar rectangle, so its texture maps into an image by a homography (OpenCV's
warpPerspective, into the face's bounding box only); a z-buffer from the face planes' exact depth per pixel keeps the
nearest surface; images are rendered at twice the size and averaged down (anti-aliased edges). A face reaching behind
either camera is left out of the scene (the wall is tiled, so a wide orbit loses a few tiles, not the wall); a scene
left with too few faces is drawn again, seeded (none in 100 draws is an error).

What this proxy does not capture: non-planar and non-Lambertian surfaces, lens distortion, rolling shutter, motion
blur, moving objects, real sensor noise, repeated structure of buildings, and the scale of MegaDepth's baselines; it
tests pose estimation from matches under parallax and occlusion, not the appearance changes of real photos.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from helper import InputError, atomic_path

from .homographies import photometric_change
from .images import ImageSource, readable_images
from .pairs import GENERATORS, Pair, PairSet, write_pairs

SUPERSAMPLE = 2  # rendered at this many times the size, then averaged down
KEPT_IMAGES = 256  # rendered images kept in memory (~0.9 MB each at 640×480)
MIN_FACES = 12  # a scene with fewer faces in front of both cameras is drawn again


@dataclass(frozen=True)
class SceneConfig:
    """Amplitudes of the scenes and of the second camera's motion."""

    distance: tuple[float, float] = (5.0, 8.0)  # camera 0 to the scene's centre, m
    # camera 1's rotation about the scene's centre, degrees (uniform): from baselines every matcher solves to ones
    # beyond LightGlue's reach, so that the tier's AUC is decided at the edge of what a matcher can do
    orbit: tuple[float, float] = (5.0, 80.0)
    zoom: tuple[float, float] = (0.5, 2.0)  # camera 1's distance to the centre over camera 0's
    roll: float = 10.0  # camera 1's roll, degrees (within what upright detectors are trained for)
    look: float = 10.0  # camera 1's look-around off the centre, degrees
    boxes: tuple[int, int] = (4, 8)
    panels: tuple[int, int] = (1, 3)
    fov: float = 60.0  # horizontal field of view of both cameras, degrees
    photometric: float = 1.0  # strength of each camera's exposure/colour change (homographies.photometric_change)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Face:
    """A textured planar rectangle: the points ``origin + s * edge_u + t * edge_v`` for s, t in [0, 1]."""

    origin: np.ndarray
    edge_u: np.ndarray
    edge_v: np.ndarray
    texture: np.ndarray | None = None  # RGB uint8; its columns run along edge_u, its rows along edge_v

    def corners(self) -> np.ndarray:
        o, u, v = self.origin, self.edge_u, self.edge_v
        return np.array([o, o + u, o + u + v, o + v])


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    return cv2.Rodrigues((np.asarray(axis, np.float64) / np.linalg.norm(axis) * np.deg2rad(degrees))[:, None])[0]


def intrinsics(size: tuple[int, int], fov: float) -> np.ndarray:
    w, h = size
    f = (w / 2) / np.tan(np.deg2rad(fov) / 2)
    return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])


def in_camera(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]


def in_front(face: Face, T: np.ndarray, near: float = 0.2) -> bool:
    return bool(np.all(in_camera(face.corners(), T)[:, 2] > near))


def render(faces: list[Face], K: np.ndarray, T: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The faces seen by the camera ``K``, ``T`` (world to camera, 4×4) in a w×h RGB image; black where none."""
    s = SUPERSAMPLE
    w, h = size[0] * s, size[1] * s
    # pixel centres at integers at both sizes: x_big = s * x + (s - 1) / 2
    Ks = np.array([[s, 0, (s - 1) / 2], [0, s, (s - 1) / 2], [0, 0, 1.0]]) @ K
    Ks_inv = np.linalg.inv(Ks)
    R, t = T[:3, :3], T[:3, 3]
    colour = np.zeros((h, w, 3), np.uint8)
    depth = np.full((h, w), np.inf)
    for face in faces:
        corners = in_camera(face.corners(), T)
        if np.any(corners[:, 2] <= 1e-3):
            raise ValueError("a face reaches behind the camera")
        projected = corners @ Ks.T
        projected = projected[:, :2] / projected[:, 2:]
        x0, y0 = np.maximum(np.floor(projected.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(projected.max(0)).astype(int) + 2, [w, h])
        if x1 <= x0 or y1 <= y0:
            continue
        th, tw = face.texture.shape[:2]
        # texture pixel centre (u, v) is the point s = (u + 0.5) / tw, t = (v + 0.5) / th of the face
        A = np.c_[R @ face.edge_u / tw, R @ face.edge_v / th, R @ face.origin + t]
        A[:, 2] += 0.5 * (A[:, 0] + A[:, 1])
        H = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1.0]]) @ Ks @ A
        box = (int(x1 - x0), int(y1 - y0))
        warped = cv2.warpPerspective(face.texture, H, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = cv2.warpPerspective(
            np.ones((th, tw), np.uint8), H, box, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        ).astype(bool)
        # depth of the face's plane along each pixel's ray: z = (n . p) / (n . K^-1 x)
        normal = R @ np.cross(face.edge_u, face.edge_v)
        ys, xs = np.nonzero(inside)
        rays = np.c_[xs + x0, ys + y0, np.ones(len(xs))] @ Ks_inv.T
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (normal @ corners[0]) / (rays @ normal)
        region = depth[y0:y1, x0:x1]
        nearer = (z > 0) & (z < region[ys, xs])
        ys, xs = ys[nearer], xs[nearer]
        region[ys, xs] = z[nearer]
        colour[y0:y1, x0:x1][ys, xs] = warped[ys, xs]
    return cv2.resize(colour, size, interpolation=cv2.INTER_AREA)


class Scene:
    """One seeded scene and its two cameras: ``faces``, ``K`` (both cameras), ``T_0to1`` (camera 1 from camera 0;
    camera 0 is the world frame)."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], cfg: SceneConfig):
        """The geometry and the cameras (no textures yet: ``textured``)."""
        self.size, self.K = size, intrinsics(size, cfg.fov)
        for _ in range(100):
            self.T_0to1 = self._camera(rng, cfg)
            # a face reaching behind either camera is left out of the scene (both views render the same faces)
            self.faces = [f for f in self._faces(rng, cfg) if all(in_front(f, T) for T in (np.eye(4), self.T_0to1))]
            if len(self.faces) >= MIN_FACES:
                return
        raise ValueError(f"no scene keeps {MIN_FACES} faces in front of both cameras in 100 draws with {cfg.as_dict()}")

    def textured(self, rng: np.random.Generator, photos: list[np.ndarray]) -> Scene:
        """Every face given a crop of a random photo, lit by one random light (Lambertian: the same in both views)."""
        light = np.array([rng.uniform(-1, 1), rng.uniform(-1, -0.2), rng.uniform(-1, -0.3)])
        light /= np.linalg.norm(light)
        for face in self.faces:
            n = np.cross(face.edge_u, face.edge_v)
            shade = 0.45 + 0.55 * abs(n @ light) / np.linalg.norm(n)  # either side may face the camera
            texture = self._texture(rng, photos, np.linalg.norm(face.edge_u), np.linalg.norm(face.edge_v))
            face.texture = np.clip(texture * shade, 0, 255).astype(np.uint8)
        return self

    def _camera(self, rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
        self.distance = rng.uniform(*cfg.distance)
        centre = np.array([0.0, 0.0, self.distance])
        axis = np.array([rng.uniform(-0.3, 0.3), 1.0, rng.uniform(-0.3, 0.3)])  # mostly about the vertical
        orbit = rotation(axis, rng.uniform(*cfg.orbit) * rng.choice([-1, 1]))
        position = centre + orbit @ (-centre) * np.exp(rng.uniform(*np.log(cfg.zoom)))
        jitter = rotation(rng.normal(size=3), rng.uniform(0, cfg.look)) @ rotation(
            [0, 0, 1], rng.uniform(-1, 1) * cfg.roll
        )
        to_world = orbit @ jitter  # camera 1's axes in the world
        T = np.eye(4)
        T[:3, :3] = to_world.T
        T[:3, 3] = -to_world.T @ position
        return T

    def _texture(self, rng: np.random.Generator, photos: list[np.ndarray], width: float, height: float) -> np.ndarray:
        """A crop of a random photo, oriented and sized for a width×height m face at about one texel per pixel of
        the supersampled image at the scene's distance."""
        photo = photos[rng.integers(len(photos))]
        if rng.random() < 0.5:
            photo = np.ascontiguousarray(photo[:, ::-1])
        ph, pw = photo.shape[:2]
        aspect = width / height
        cw = min(pw, int(ph * aspect)) * rng.uniform(0.5, 1.0)
        ch = cw / aspect
        x, y = rng.uniform(0, pw - cw), rng.uniform(0, ph - ch)
        crop = photo[int(y) : int(y + ch) + 1, int(x) : int(x + cw) + 1]
        per_m = self.K[0, 0] * SUPERSAMPLE / self.distance
        tw = int(np.clip(width * per_m, 8, 2048))
        th = int(np.clip(height * per_m, 8, 2048))
        texture = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA if tw < crop.shape[1] else cv2.INTER_LINEAR)
        return texture

    def _faces(self, rng: np.random.Generator, cfg: SceneConfig) -> list[Face]:
        d = self.distance
        # the back wall, turned a little, wide and tall enough for both views: a grid of tiles, each its own photo
        back = d + rng.uniform(1.5, 4.0)
        turn = rotation([0, 1, 0], rng.uniform(-25, 25))
        cols, rows = 8, 4
        u, v = turn @ np.array([4.0 * back / cols, 0, 0]), turn @ np.array([0, 2.6 * back / rows, 0])
        corner = np.array([0, 0, back]) - u * cols / 2 - v * rows / 2
        faces = [Face(corner + c * u + r * v, u, v) for r in range(rows) for c in range(cols)]
        reach = d * np.tan(np.deg2rad(cfg.fov) / 2) * 0.9  # lateral spread of the objects at the centre's depth
        for _ in range(rng.integers(cfg.boxes[0], cfg.boxes[1] + 1)):
            dims = rng.uniform(0.5, 2.0, 3) * d / 6
            centre = np.array([rng.uniform(-reach, reach), rng.uniform(-0.6, 0.6) * reach, d + rng.uniform(-2.5, 1.0)])
            R = rotation(rng.normal(size=3), rng.uniform(0, 40)) @ rotation([0, 1, 0], rng.uniform(0, 90))
            axes = R * dims  # columns: the box's edges
            corner = centre - axes.sum(1) / 2
            for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):  # two opposite faces per pair of axes
                a, b = axes[:, i], axes[:, j]
                for base in (corner, corner + axes[:, k]):
                    faces.append(Face(base, a, b))
        for _ in range(rng.integers(cfg.panels[0], cfg.panels[1] + 1)):
            width, height = rng.uniform(0.8, 2.5, 2) * d / 6
            centre = np.array([rng.uniform(-reach, reach), rng.uniform(-0.5, 0.5) * reach, d + rng.uniform(-2.5, 1.0)])
            R = rotation([0, 1, 0], rng.uniform(-50, 50)) @ rotation([1, 0, 0], rng.uniform(-20, 20))
            u, v = R @ np.array([width, 0, 0]), R @ np.array([0, height, 0])
            faces.append(Face(centre - u / 2 - v / 2, u, v))
        return faces


class ScenePairs(PairSet):
    """A fixed list of two-view pose pairs of procedural scenes textured with the photos ``names`` of ``source``
    (the first ``max_photos`` readable ones; the official pose pairs format's ground truth: ``K0``, ``K1``,
    ``T_0to1``). The same source, names, size, seed and settings give the same pairs on any machine; images are
    rendered when first asked for."""

    def __init__(
        self,
        source: ImageSource,
        names: list[str],
        num_pairs: int,
        size: tuple[int, int] = (640, 480),
        seed: int = 0,
        config: SceneConfig | None = None,
        max_photos: int = 64,
    ):
        self.size, self.seed, self.config = tuple(size), seed, config or SceneConfig()
        self.photos = [self._shrunk(image) for _, image in readable_images(source, names[:max_photos])]
        if not self.photos:
            raise InputError(f"no readable images among {len(names)} in {source.ident}")
        self.pairs, self._textured, self._rendered = [], (None, None), OrderedDict()
        for i in range(num_pairs):
            scene = self.scene(i)  # the geometry and cameras only: cheap
            self.pairs.append(
                Pair(f"scene{i:04d}_0.png", f"scene{i:04d}_1.png", K0=scene.K, K1=scene.K, T_0to1=scene.T_0to1,
                     meta={"index": i})
            )  # fmt: skip
        self.ident = f"scenes:{source.ident}:{self.size}:{seed}:{sorted(self.config.as_dict().items())}"

    @staticmethod
    def _shrunk(image: np.ndarray, side: int = 1024) -> np.ndarray:
        scale = side / max(image.shape[:2])
        if scale >= 1:
            return image
        return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)

    def scene(self, index: int, textured: bool = False) -> Scene:
        """Scene ``index``: its geometry and cameras, with ``textured`` its faces' textures too (the last one kept:
        a pair's two images are asked for in turn)."""
        if textured and self._textured[0] == index:
            return self._textured[1]
        try:
            scene = Scene(np.random.default_rng([self.seed, index, 5]), self.size, self.config)
        except ValueError as e:
            raise InputError(f"scene {index}: {e}") from None
        if textured:
            scene.textured(np.random.default_rng([self.seed, index, 6]), self.photos)
            self._textured = (index, scene)
        return scene

    def view(self, pair: Pair, i: int) -> tuple[str, tuple[int, ...], np.ndarray | None]:
        key = f"{self.ident}:{pair.name0 if i == 0 else pair.name1}"  # rendered only when a detector needs it
        return key, (self.size[1], self.size[0], 3), self._rendered.get(key)

    def image(self, pair: Pair, i: int) -> tuple[str, np.ndarray]:
        key = self.view(pair, i)[0]
        if key in self._rendered:  # several pipelines evaluated on the same pairs render each image once
            self._rendered.move_to_end(key)
            return key, self._rendered[key]
        index = pair.meta["index"]
        scene = self.scene(index, textured=True)
        T = np.eye(4) if i == 0 else scene.T_0to1
        image = render(scene.faces, scene.K, T, self.size)
        if self.config.photometric > 0:  # each camera its own exposure, colour balance, noise, blur and JPEG
            image = photometric_change(image, np.random.default_rng([self.seed, index, 13, i]), self.config.photometric)
        self._rendered[key] = image
        while len(self._rendered) > KEPT_IMAGES:
            self._rendered.popitem(last=False)
        return key, image

    def export(self, folder: str | os.PathLike, pairs_file: str = "pairs.txt") -> Path:
        """Write the images and an official pose pairs file, so ``match_pairs.py`` reproduces any result."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for pair in self.pairs:
            for i, name in enumerate((pair.name0, pair.name1)):
                with atomic_path(folder / name) as tmp:
                    ok, buf = cv2.imencode(".png", cv2.cvtColor(self.image(pair, i)[1], cv2.COLOR_RGB2BGR))
                    tmp.write_bytes(buf.tobytes())
        write_pairs(folder / pairs_file, self.pairs)
        return folder / pairs_file


GENERATORS["scenes"] = lambda source, names, num_pairs, size, seed, settings: ScenePairs(
    source, names, num_pairs, size, seed, SceneConfig(**settings)
)
