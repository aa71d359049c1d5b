"""Ground truth from homographies and the matching loss that training and Taylor importance use."""

import numpy as np
import torch

from data.homographies import warp_points
from models.losses import IGNORE, homography_gt, matching_nll
from models.superglue import SuperGlue
from pipeline.metrics import ground_truth_matches
from pruning.channel import prune_superglue_channels, taylor_scores


def scene(m=50, outliers=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = torch.tensor([[[0.9, 0.1, 20.0], [-0.05, 1.0, 5.0], [1e-4, 0.0, 1.0]]], dtype=torch.float64)
    k0 = torch.rand(1, m, 2, generator=g, dtype=torch.float64) * 300 + 50
    p = torch.cat([k0, torch.ones(1, m, 1, dtype=torch.float64)], -1) @ H[0].T
    k1 = p[..., :2] / p[..., 2:]
    perm = torch.randperm(m, generator=g)
    k1 = k1[:, perm]
    k0 = torch.cat([k0, torch.rand(1, outliers, 2, generator=g, dtype=torch.float64) * 5 + 1000], 1)
    return k0, k1, H, perm


def test_ground_truth_matches_ignores_and_unmatched():
    k0, k1, H, perm = scene()
    k1[0, 0] += torch.tensor([4.0, 0.0], dtype=torch.float64)  # 4 px off: neither match nor clearly unmatched
    gt0, gt1 = homography_gt(k0, k1, H)
    inv = torch.argsort(perm)
    assert gt0[0, perm[0]] == IGNORE and gt1[0, 0] == IGNORE
    ok = torch.ones(50, dtype=torch.bool)
    ok[perm[0]] = False
    assert torch.equal(gt0[0, :50][ok], inv[:50][ok])
    assert (gt0[0, 50:] == -1).all()  # the outliers go to the dustbin


def test_evaluation_ground_truth_is_the_dense_comparison():
    """The metrics' KD-tree ground truth (candidates within twice the threshold) equals the full N×M comparison of
    homography_gt, on scenes with noise, outliers, integer-pixel keypoints, duplicates, points sent to infinity and
    empty sides."""
    rng = np.random.default_rng(0)
    as_t = lambda a: torch.from_numpy(np.asarray(a, np.float64)).reshape(1, -1, 2)  # noqa: E731
    horizon = np.array([[1, 0, 0], [0, 1, 0], [-1 / 640, 0, 1]])  # sends x = 640 to infinity
    edge = [(np.array([[640.0, 100], [320, 240]]), warp_points(np.array([[320.0, 240], [10, 10]]), horizon), horizon)]
    edge += [
        (np.zeros((0, 2)), rng.uniform(0, 640, (5, 2)), np.eye(3)),
        (rng.uniform(0, 640, (5, 2)), np.zeros((0, 2)), np.eye(3)),
    ]
    for k0, k1, H in edge:
        dense = homography_gt(as_t(k0), as_t(k1), torch.from_numpy(H)[None], 3.0, 3.0)[0][0].clamp(min=-1).numpy()
        np.testing.assert_array_equal(ground_truth_matches(k0, k1, H, 3.0), dense)
    assert ground_truth_matches(*edge[0], 3.0).tolist() == [-1, 0]  # the point at infinity matches nothing
    compared = 0
    for t in range(60):
        n, m = rng.integers(0, 400, 2)
        k0 = rng.uniform(0, 640, (n, 2))
        H = np.eye(3) + rng.normal(0, [[0.05, 0.05, 5], [0.05, 0.05, 5], [1e-3 * (t % 4 == 0), 1e-4, 0]])
        k1 = warp_points(k0, H)[:m]
        k1 = k1[np.isfinite(k1).all(1)]
        k1 = np.concatenate([k1 + rng.normal(0, rng.uniform(0.1, 4), k1.shape), rng.uniform(0, 640, (40, 2))])
        if t % 3 == 0:
            k0, k1 = np.round(k0), np.round(k1)
        if t % 5 == 0:
            k1 = np.concatenate([k1, k1[:10]])
        th = (1.0, 3.0, 5.0)[t % 3]
        dense = homography_gt(as_t(k0), as_t(k1), torch.from_numpy(H)[None], th, th)[0][0].clamp(min=-1).numpy()
        sparse = ground_truth_matches(k0, k1, H, th)
        np.testing.assert_array_equal(sparse, dense)
        compared += int((dense >= 0).sum())
    assert compared > 1000  # true matches were there to find


def test_loss_prefers_the_true_assignment_and_trains_superglue():
    torch.manual_seed(0)
    k0, k1, H, _ = scene(40, 5)
    gt0, gt1 = homography_gt(k0, k1, H)
    perfect = torch.full((1, 46, 41), -20.0)
    for i, j in enumerate(gt0[0].tolist()):
        perfect[0, i, j if j >= 0 else -1] = 0.0
    perfect[0, -1, :-1][gt1[0] == -1] = 0.0
    uniform = torch.full((1, 46, 41), -3.7)
    assert matching_nll(perfect, gt0, gt1) < 1e-6 < matching_nll(uniform, gt0, gt1)

    sg = SuperGlue({"weights": None, "GNN_layers": ["self", "cross"], "sinkhorn_iterations": 20}).train()
    g = torch.Generator().manual_seed(3)
    d0 = torch.nn.functional.normalize(torch.randn(1, 256, 45, generator=g), dim=1)
    d1 = d0[:, :, :40][:, :, torch.argsort(gt0[0, :40].clamp(min=0))]  # image1 sees image0's first 40 points
    data = {
        "keypoints0": k0.float(),
        "keypoints1": k1.float(),
        "scores0": torch.rand(1, 45),
        "scores1": torch.rand(1, 40),
        "descriptors0": d0,
        "descriptors1": d1,
        "image_size0": (400, 400),
        "image_size1": (400, 400),
    }
    opt = torch.optim.Adam(sg.parameters(), lr=1e-3)
    losses = []
    with torch.enable_grad():
        for _ in range(15):
            loss = matching_nll(sg(data)["log_assignment"], gt0, gt1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]

    # Taylor importance from the same loss drives channel pruning.
    scores = taylor_scores(sg, lambda: matching_nll(sg(data)["log_assignment"], gt0, gt1), steps=2)
    assert all(s.shape == m.weight.shape for m, s in scores.items()) and sum(s.sum() for s in scores.values()) > 0
    prune_superglue_channels(sg.eval(), {"mlp": 0.5, "attn_dim": 0.5}, scores)
    assert torch.isfinite(sg(data)["log_assignment"]).all()
