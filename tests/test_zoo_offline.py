"""The offline-pretrained matchers really match photographs, with the network switched off."""

import socket

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from models.matching import build_matcher, offline_matchers

H = np.array([[0.92, 0.08, 25.0], [-0.06, 1.02, 12.0], [8e-5, -6e-5, 1.0]])


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def tensor(rgb):
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize(
    "name,min_correct",
    [
        ("aliked+lightglue", 0.95),
        ("disk+lightglue", 0.95),
        ("sift+nn", 0.9),
        ("xfeat+lighterglue", 0.9),  # integer-pixel keypoints of the image resized to multiples of 32
        ("xfeat", 0.7),  # mutual nearest neighbours without a ratio test
    ],
)
def test_matches_photo_against_its_warp(name, min_correct, no_network):
    img = cv2.resize(skimage.data.astronaut(), (480, 360), interpolation=cv2.INTER_AREA)
    warped = cv2.warpPerspective(img, H, (480, 360))
    matcher = build_matcher(name, {"detector": {"max_keypoints": 512}})
    out = matcher({"image0": tensor(img), "image1": tensor(warped)})
    k0, k1, m0 = out["keypoints0"][0].numpy(), out["keypoints1"][0].numpy(), out["matches0"][0].numpy()
    valid = m0 >= 0
    projected = cv2.perspectiveTransform(k0[valid][None].astype(np.float64), H)[0]
    correct = np.linalg.norm(projected - k1[m0[valid]], axis=1) < 3
    assert valid.sum() >= 100, f"{name}: only {valid.sum()} matches"
    assert correct.mean() >= min_correct, f"{name}: {correct.mean():.3f} correct"


def test_every_offline_matcher_is_a_walkable_module():
    for name in offline_matchers():
        m = build_matcher(name)
        assert isinstance(m, torch.nn.Module) and not m.training
        if name != "sift+nn":
            assert sum(p.numel() for p in m.detector.parameters()) > 1e5
        if name not in ("sift+nn", "xfeat"):  # nearest neighbours have no weights
            assert sum(p.numel() for p in m.matcher.parameters()) > 1e6


def test_matchers_handle_an_image_without_features():
    blank, photo = torch.zeros(1, 3, 96, 128), torch.rand(1, 3, 96, 128)
    for name in offline_matchers():
        out = build_matcher(name)({"image0": blank, "image1": photo})
        assert out["matches0"].shape == (1, len(out["keypoints0"][0]))
        assert out["matches1"].shape == (1, len(out["keypoints1"][0]))
