"""Behaviour of the SuperPoint/SuperGlue networks and the Matcher interface with random weights."""

import threading

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.matching import Matching, build_matcher
from models.superglue import SuperGlue
from models.superpoint import SuperPoint

RANDOM = {"superpoint": {"weights": None}, "superglue": {"weights": None}}


def test_superpoint_outputs_lists_in_official_layout():
    sp = SuperPoint({"weights": None, "max_keypoints": 50}).eval()
    out = sp({"image": torch.rand(2, 1, 96, 128)})
    for kpts, scores, desc in zip(out["keypoints"], out["scores"], out["descriptors"]):
        assert kpts.shape == (50, 2) and scores.shape == (50,) and desc.shape == (256, 50)
        assert torch.all(scores[:-1] >= scores[1:])  # top-k keeps the best, sorted
        assert kpts[:, 0].min() >= 4 and kpts[:, 0].max() < 128 - 4  # (x, y) order, borders removed
        assert kpts[:, 1].max() < 96 - 4
        assert torch.allclose(desc.norm(dim=0), torch.ones(50), atol=1e-5)


@pytest.mark.parametrize("bad", [0, -2])
def test_superpoint_rejects_bad_max_keypoints(bad):
    with pytest.raises(ValueError, match="max_keypoints"):
        SuperPoint({"weights": None, "max_keypoints": bad})


def features(b, n, d=256, w=160, h=120):
    return {
        "keypoints": torch.rand(b, n, 2) * torch.tensor([w - 1, h - 1]),
        "scores": torch.rand(b, n),
        "descriptors": torch.nn.functional.normalize(torch.randn(b, d, n), dim=1),
    }


def superglue_input(m, n, b=1):
    f0, f1 = features(b, m), features(b, n)
    return {
        "image_size0": (160, 120),
        "image_size1": (160, 120),
        **{k + "0": v for k, v in f0.items()},
        **{k + "1": v for k, v in f1.items()},
    }


@pytest.mark.parametrize("m,n", [(0, 7), (7, 0), (0, 0)])
def test_superglue_without_keypoints_returns_empty_results(m, n):
    sg = SuperGlue({"weights": None}).eval()
    out = sg(superglue_input(m, n))
    assert out["matches0"].shape == (1, m) and out["matches1"].shape == (1, n)
    assert out["matching_scores0"].shape == (1, m)
    assert out["log_assignment"].shape == (1, m + 1, n + 1)


def test_superglue_log_assignment_is_a_transport_plan():
    sg = SuperGlue({"weights": None, "GNN_layers": ["self", "cross"], "sinkhorn_iterations": 100}).eval()
    out = sg(superglue_input(30, 20, b=2))
    P = out["log_assignment"].exp()
    assert P.shape == (2, 31, 21)
    # Rows of real keypoints sum to 1 (each is matched or in the dustbin); so do the columns.
    assert torch.allclose(P[:, :-1, :].sum(-1), torch.ones(2, 30), atol=1e-3)
    assert torch.allclose(P[:, :, :-1].sum(-2), torch.ones(2, 20), atol=1e-3)
    m0, m1 = out["matches0"], out["matches1"]
    for b in range(2):  # matches are mutual
        for i, j in enumerate(m0[b].tolist()):
            if j >= 0:
                assert m1[b, j] == i


def test_matching_skips_superpoint_when_keypoints_are_given():
    matching = Matching(RANDOM).eval()
    called = []
    matching.superpoint.register_forward_hook(lambda *a: called.append(1))
    data = {"image0": torch.rand(1, 1, 120, 160), "image1": torch.rand(1, 1, 120, 160)}
    f = features(1, 40)
    out = matching({**data, **{k + "0": v for k, v in f.items()}})
    assert len(called) == 1  # image1 only
    assert "keypoints1" in out and "keypoints0" not in out
    assert out["matches0"].shape == (1, 40)


def test_matching_is_one_interface_with_per_component_access():
    matching = build_matcher("superpoint+superglue", RANDOM)
    assert matching.detector is matching.superpoint and matching.matcher is matching.superglue
    img = torch.rand(1, 3, 120, 160)  # RGB input is converted to gray for SuperPoint
    feats = matching.extract(img)
    out = matching({"image0": img, "image1": img})
    assert torch.equal(out["keypoints0"][0], feats["keypoints"][0])
    assert out["matches0"].shape == (1, len(feats["keypoints"][0]))
    assert not matching.training


def test_unknown_matcher_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown matcher 'superglue'.*aliked\\+lightglue"):
        build_matcher("superglue")


def test_both_images_at_once_give_what_one_at_a_time_gives():
    """Matcher.extract_images runs the images on worker threads: the same features, the caller's autograd mode,
    and one at a time under a FLOP counter (which sees only its own thread)."""
    torch.manual_seed(0)
    matching = build_matcher("superpoint+superglue", RANDOM)
    images = [torch.rand(1, 1, 120, 160), torch.rand(1, 1, 96, 128)]
    one_by_one = [matching.extract(x) for x in images]
    with torch.no_grad():
        together = matching.extract_images(images)
    for ref, out in zip(one_by_one, together):
        for key in ref:
            assert torch.equal(ref[key][0], out[key][0])
    assert not together[0]["descriptors"][0].requires_grad  # the caller's no_grad held on the workers
    with torch.enable_grad():  # (the tests run under no_grad)
        assert matching.extract_images(images)[1]["descriptors"][0].requires_grad

    threads = []
    matching.superpoint.register_forward_hook(lambda *a: threads.append(threading.current_thread()))
    with FlopCounterMode(display=False) as counter:
        matching.extract_images(images)
    assert counter.get_total_flops() > 0 and set(threads) == {threading.current_thread()}
    threads.clear()
    with torch.no_grad():
        matching.extract_images(images)
    if torch.get_num_threads() > 1:
        assert threading.current_thread() not in threads  # both on workers
    matching.concurrent = False
    threads.clear()
    matching.extract_images(images)
    assert set(threads) == {threading.current_thread()}


def test_resize_detects_at_the_longer_side_and_gives_keypoints_in_the_given_pixels():
    """The config's ``resize`` (LightGlue's extractors' convention): the detector sees the image scaled so that its
    longer side is that many px; keypoints come back in the given image's pixels, pixel centres at integers."""
    import torch.nn.functional as F

    from helper import InputError
    from models.matching import check_matcher_config

    torch.manual_seed(0)
    image = torch.rand(1, 1, 120, 160)
    plain = build_matcher("superpoint+superglue", RANDOM)
    half = build_matcher("superpoint+superglue", {**RANDOM, "resize": 80})
    half.load_state_dict(plain.state_dict())
    small = F.interpolate(image, size=(60, 80), mode="bilinear", align_corners=False, antialias=True)
    expected = plain.extract(small)
    got = half.extract(image)
    assert len(got["keypoints"][0]) > 0
    torch.testing.assert_close(got["keypoints"][0], (expected["keypoints"][0] + 0.5) * 2 - 0.5)
    assert torch.equal(got["descriptors"][0], expected["descriptors"][0])
    assert torch.equal(got["scores"][0], expected["scores"][0])
    # an image already at that size is detected as it is; the setting is part of the detector's cache identity
    same = build_matcher("superpoint+superglue", {**RANDOM, "resize": 160})
    same.load_state_dict(plain.state_dict())
    assert torch.equal(same.extract(image)["keypoints"][0], plain.extract(image)["keypoints"][0])
    assert half.detector_fingerprint() != plain.detector_fingerprint()
    # whole pairs: matches index the keypoints given back
    out = half({"image0": image, "image1": image.flip(-1)})
    assert out["keypoints0"][0].shape == got["keypoints"][0].shape
    # bad settings and images too small once resized: one-line errors naming the culprit
    with pytest.raises(InputError, match="matcher_config.resize"):
        check_matcher_config("aliked+lightglue", {"resize": 8})
    with pytest.raises(InputError, match="resized to 16×12.*too small"):
        build_matcher("superpoint+superglue", {**RANDOM, "resize": 16}).extract(image)
