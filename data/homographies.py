"""Random homographies (seeded, parameterised as in SuperPoint/SuperGlue COCO training), warping, augmentation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np


@dataclass(frozen=True)
class HomographyConfig:
    """Amplitudes at difficulty 1; ``difficulty`` in [0, 1] scales all of them (glue-factory's single knob)."""

    patch_ratio: float = 0.8  # side of the source patch, as a fraction of the image, before the transforms
    perspective: float = 0.2  # corner displacement, as a fraction of the patch side
    shear: float = 0.15  # maximum shear factor
    rotation: float = 25.0  # maximum in-plane rotation, degrees
    scale: float = 0.25  # maximum log-scale change, as exp(±scale)
    translation: float = 1.0  # fraction of the free margin the patch may move
    allow_artifacts: bool = False  # let the patch leave the image (black borders in the warp)
    difficulty: float = 0.7

    def scaled(self) -> "HomographyConfig":
        d = self.difficulty
        return replace(
            self,
            perspective=self.perspective * d,
            shear=self.shear * d,
            rotation=self.rotation * d,
            scale=self.scale * d,
        )

    def as_dict(self) -> dict:
        return asdict(self)


# Viewpoint amplitudes at difficulty 1 (the pairs' ``difficulty``, 0.7 by default, scales them). "easy": the seed's
# COCO protocol (at 0.7: in-plane rotation within ±17.5°, scale ×0.84-1.19). "hard": HPatches-like viewpoint change
# (at 0.7: perspective 0.35, scale ×0.56-1.8, in-plane rotation within ±45°: the range upright detectors and
# LightGlue's homography training see, glue-factory's max_angle). The hard tier keeps the dense pipeline well below
# saturation while most of its pairs still solve: stronger amplitudes fail most pairs and widen the paired intervals
# (benchmarks/controls.py).
VIEWPOINTS = {
    "easy": HomographyConfig(),
    "hard": HomographyConfig(perspective=0.5, rotation=45 / 0.7, scale=np.log(1.8) / 0.7),
}


def _corners(w: float, h: float) -> np.ndarray:
    """Outer corners of a w×h image in the pixel-centre convention (pixel (0, 0) covers [-0.5, 0.5]²)."""
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]], np.float64)


def sample_patch(rng: np.random.Generator, cfg: HomographyConfig) -> np.ndarray:
    """Four corners (unit square coordinates) of a random quadrilateral patch of the source image."""
    cfg = cfg.scaled()
    for _ in range(100):
        r = cfg.patch_ratio
        patch = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float64) * r + (1 - r) / 2
        patch += rng.uniform(-1, 1, (4, 2)) * cfg.perspective * r / 2
        center = patch.mean(0)
        angle = np.deg2rad(rng.uniform(-cfg.rotation, cfg.rotation))
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shear = np.array([[1, rng.uniform(-cfg.shear, cfg.shear)], [0, 1]])
        scale = np.exp(rng.uniform(-cfg.scale, cfg.scale))
        patch = (patch - center) @ (scale * rot @ shear).T + center
        low, high = patch.min(0), patch.max(0)
        if cfg.allow_artifacts:
            margin_lo, margin_hi = -low - 0.2, 1.2 - high
        else:
            margin_lo, margin_hi = -low, 1 - high
        if np.all(margin_lo <= margin_hi):
            t = rng.uniform(margin_lo, margin_hi) * cfg.translation
            return patch + t
    # No silent fallback to an easy warp: a tier's pairs are all of its difficulty, or it is an error
    raise ValueError(f"no patch fits the image in 100 draws with {cfg.as_dict()}: lower the amplitudes")


def sample_homography(rng: np.random.Generator, size: tuple[int, int], cfg: HomographyConfig) -> np.ndarray:
    """H (3×3, float64) mapping pixels of a w×h image to pixels of its warped view of the same size.

    The warped view shows a random patch of the source stretched over the whole frame, as in
    SuperPoint's homographic adaptation and SuperGlue's COCO training.
    """
    w, h = size
    frame = _corners(w, h)
    patch = frame[0] + sample_patch(rng, cfg) * np.array([w, h])
    return homography_from_corners(patch, frame)


def homography_from_corners(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The H mapping 4 points ``src`` to ``dst`` exactly, solved in float64 (OpenCV's takes float32)."""
    A, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        A.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        A.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.array(A, np.float64), np.array(b, np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def warp_image(image: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The view of ``image`` through H, of size (w, h); outside the source is black."""
    return cv2.warpPerspective(image, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def warp_points(points: np.ndarray, H: np.ndarray) -> np.ndarray:
    """Apply H to N×2 points (float64); points mapped to infinity come back as inf."""
    pts = np.concatenate([points.astype(np.float64), np.ones((len(points), 1))], 1) @ H.T
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pts[:, :2] / pts[:, 2:]
    out[~np.isfinite(out)] = np.inf
    return out


def crop_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to cover (w, h) keeping the aspect, then crop the centre: no stretching."""
    w, h = size
    ih, iw = image.shape[:2]
    scale = max(w / iw, h / ih)
    nw, nh = max(w, int(round(iw * scale))), max(h, int(round(ih * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x0, y0 = (nw - w) // 2, (nh - h) // 2
    return np.ascontiguousarray(resized[y0 : y0 + h, x0 : x0 + w])


def photometric_augment(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, Gaussian noise and blur (training only)."""
    img = image.astype(np.float32)
    img = img * (1 + rng.uniform(-0.3, 0.3) * strength) + rng.uniform(-25, 25) * strength  # contrast, brightness
    mean = img.mean()
    img = (img - mean) * (1 + rng.uniform(-0.3, 0.3) * strength) + mean
    if rng.random() < 0.5 * strength:
        k = int(rng.choice([3, 5]))
        img = cv2.GaussianBlur(img, (k, k), 0)
    img = img + rng.normal(0, 5 * strength, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def photometric_change(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """The same scene under other light and another camera (an evaluation tier's second image): a colour cast and
    gain per channel, gamma, a shading gradient across the frame, then sensor noise, defocus blur and JPEG
    compression; ``strength`` scales every amplitude (1: gain ×0.6-1.4, gamma 0.5-2, shading ×0.5-1.5 across the
    frame, noise σ up to 6 grey levels, blur σ up to 1.2 px, JPEG quality 35-95)."""
    s = float(strength)
    h, w = image.shape[:2]
    img = image.astype(np.float32) / 255
    gain = np.exp(rng.uniform(-np.log(1.4), np.log(1.4)) * s)
    cast = np.exp(rng.uniform(-0.15, 0.15, 3) * s)  # colour temperature / white balance
    img = img * gain * cast
    img = np.clip(img, 0, 1) ** np.exp(rng.uniform(-np.log(2), np.log(2)) * s)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * (np.arange(w)[None, :] / w - 0.5) + np.sin(angle) * (np.arange(h)[:, None] / h - 0.5)
    img = img * (1 + rng.uniform(0.2, 0.5) * s * 2 * ramp)[..., None]
    sigma = rng.uniform(0, 1.2) * s
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = img + rng.normal(0, rng.uniform(0, 6) * s / 255, img.shape).astype(np.float32)
    out = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    quality = int(round(95 - rng.uniform(0, 60) * min(s, 1)))
    ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def interpolate_homography(H: np.ndarray, size: tuple[int, int], t: float) -> np.ndarray:
    """The homography that moves the image corners a fraction ``t`` of the way along ``H`` (0: identity)."""
    c = _corners(*size)
    moved = c + t * (warp_points(c, H) - c)
    return cv2.getPerspectiveTransform(c.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
