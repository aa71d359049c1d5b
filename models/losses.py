"""Ground-truth assignments from a homography and the matching loss on a log assignment (SuperGlue, LightGlue)."""

from __future__ import annotations

import torch

IGNORE = -2  # neither a clear match nor clearly unmatched: left out of the loss


def warp(points: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Apply B×3×3 homographies to B×N×2 points."""
    p = torch.cat([points, torch.ones_like(points[..., :1])], -1) @ H.transpose(-1, -2)
    return p[..., :2] / p[..., 2:]


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances of B×M×2 and B×N×2 points, each from its own coordinates: equal points give equal
    distances, so a tie is a tie on every CPU and ``min`` gives it to the lower index. (cdist's default matrix-product
    form, |a|² + |b|² - 2ab, rounds each column its own way, and in float32 by up to ~0.01 px at 640 px.)"""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def homography_gt(
    kpts0: torch.Tensor, kpts1: torch.Tensor, H: torch.Tensor, pos_th: float = 3.0, neg_th: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth matches of B×M×2 and B×N×2 keypoints under H (image0 -> image1 pixels).

    A pair is a match when the two are mutual nearest neighbours by symmetric transfer error below
    ``pos_th`` px; a keypoint whose nearest error exceeds ``neg_th`` is unmatched (-1); others are ignored (-2).
    """
    H = H.to(kpts0)
    d = 0.5 * (_distances(warp(kpts0, H), kpts1) + _distances(kpts0, warp(kpts1, torch.linalg.inv(H))))
    d = torch.nan_to_num(d, nan=float("inf"))
    b, m, n = d.shape
    if m == 0 or n == 0:
        return (kpts0.new_full((b, m), -1, dtype=torch.long), kpts1.new_full((b, n), -1, dtype=torch.long))
    min0, nn0 = d.min(2)
    min1, nn1 = d.min(1)
    mutual0 = nn1.gather(1, nn0) == torch.arange(m, device=d.device)
    mutual1 = nn0.gather(1, nn1) == torch.arange(n, device=d.device)
    m0 = torch.where(mutual0 & (min0 < pos_th), nn0, torch.where(min0 > neg_th, -1, IGNORE))
    m1 = torch.where(mutual1 & (min1 < pos_th), nn1, torch.where(min1 > neg_th, -1, IGNORE))
    return m0, m1


def matching_nll(
    log_assignment: torch.Tensor, gt0: torch.Tensor, gt1: torch.Tensor, balance: float = 0.5
) -> torch.Tensor:
    """Negative log-likelihood of the ground truth under a B×(M+1)×(N+1) log assignment (dustbins last).

    Matches pull their cell up; unmatched keypoints pull their dustbin entry up. ``balance`` weighs the
    positive term against the negative one; each is averaged over its own count.
    """
    pos = gt0 >= 0
    la = log_assignment[:, :-1, :-1]
    pos_ll = la.gather(2, gt0.clamp(min=0)[..., None])[..., 0][pos]
    neg_ll = torch.cat([log_assignment[:, :-1, -1][gt0 == -1], log_assignment[:, -1, :-1][gt1 == -1]])
    zero = log_assignment.sum() * 0
    nll_pos = -pos_ll.mean() if pos_ll.numel() else zero
    nll_neg = -neg_ll.mean() if neg_ll.numel() else zero
    return balance * nll_pos + (1 - balance) * nll_neg
