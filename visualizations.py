"""Figures: match visualisations (and, as the project grows, every figure of the report from saved results)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from helper import atomic_path  # noqa: E402

CORRECT, WRONG = (0.1, 0.8, 0.1, 1.0), (0.9, 0.1, 0.1, 1.0)


def match_colors(conf: np.ndarray, correct: np.ndarray | None = None) -> np.ndarray:
    """RGBA per match: green/red by correctness when ground truth is known, else jet by confidence."""
    if correct is not None:
        return np.array([CORRECT if c else WRONG for c in correct]).reshape(-1, 4)
    return plt.get_cmap("jet")(np.clip(conf, 0, 1))


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(image, 0, 255).astype(np.uint8)
    return np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image


def make_matching_plot(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                       mkpts0: np.ndarray, mkpts1: np.ndarray, color: np.ndarray, text: Sequence[str],
                       path: str | os.PathLike, show_keypoints: bool = False, fast_viz: bool = False,
                       small_text: Sequence[str] = ()) -> None:
    """Side-by-side pair with match lines, written atomically to ``path`` (png or pdf)."""
    image0, image1 = _gray_rgb(image0), _gray_rgb(image1)
    path = Path(path)
    if fast_viz:
        _fast_plot(image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, path, show_keypoints, small_text)
        return
    h, w0, w1 = max(image0.shape[0], image1.shape[0]), image0.shape[1], image1.shape[1]
    gap = 0.02 * (w0 + w1)
    fig = plt.figure(figsize=(12, 12 * h / (w0 + w1 + gap)), dpi=100)
    total = w0 + w1 + gap
    axes = [fig.add_axes((0, 0, w0 / total, 1)), fig.add_axes(((w0 + gap) / total, 0, w1 / total, 1))]
    for ax, img in zip(axes, (image0, image1)):
        ax.imshow(img)
        ax.set_axis_off()
    if show_keypoints:
        axes[0].scatter(kpts0[:, 0], kpts0[:, 1], c="w", s=2)
        axes[1].scatter(kpts1[:, 0], kpts1[:, 1], c="w", s=2)
    fig.canvas.draw()
    for p0, p1, c in zip(mkpts0, mkpts1, color):
        con = matplotlib.patches.ConnectionPatch(xyA=p1, xyB=p0, coordsA="data", coordsB="data", axesA=axes[1],
                                                 axesB=axes[0], color=c, linewidth=1.0)
        axes[1].add_artist(con)
    for ax, pts in ((axes[0], mkpts0), (axes[1], mkpts1)):
        ax.scatter(pts[:, 0], pts[:, 1], c=color[:, :3] if len(color) else "g", s=4)
    fig.text(0.01, 0.99, "\n".join(text), transform=fig.axes[0].transAxes, fontsize=13, va="top", ha="left",
             color="w", bbox=dict(facecolor="k", alpha=0.5, linewidth=0))
    if small_text:
        fig.text(0.01, 0.01, "\n".join(small_text), transform=fig.axes[0].transAxes, fontsize=7, va="bottom",
                 ha="left", color="w")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def _fast_plot(image0, image1, kpts0, kpts1, mkpts0, mkpts1, color, text, path, show_keypoints, small_text):
    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    margin = 10
    out = np.full((max(h0, h1), w0 + w1 + margin, 3), 255, np.uint8)
    out[:h0, :w0], out[:h1, w0 + margin:] = image0, image1
    out = cv2.cvtColor(out, cv2.COLOR_RGB2BGR)
    if show_keypoints:
        for x, y in np.round(kpts0).astype(int):
            cv2.circle(out, (x, y), 2, (255, 255, 255), -1, cv2.LINE_AA)
        for x, y in np.round(kpts1).astype(int):
            cv2.circle(out, (x + margin + w0, y), 2, (255, 255, 255), -1, cv2.LINE_AA)
    for (x0, y0), (x1, y1), c in zip(np.round(mkpts0).astype(int), np.round(mkpts1).astype(int), color):
        bgr = tuple(int(v * 255) for v in c[2::-1])
        cv2.line(out, (x0, y0), (x1 + margin + w0, y1), bgr, 1, cv2.LINE_AA)
    for i, line in enumerate(text):
        cv2.putText(out, line, (8, 24 + 24 * i), cv2.FONT_HERSHEY_DUPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    for i, line in enumerate(reversed(list(small_text))):
        cv2.putText(out, line, (8, out.shape[0] - 8 - 14 * i), cv2.FONT_HERSHEY_DUPLEX, 0.4, (255, 255, 255), 1)
    ok, buf = cv2.imencode(path.suffix or ".png", out)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
