"""ALIKED without its dense descriptor map (models/aliked.py) computes what kornia's ALIKED computes, in PyTorch and
as an ONNX Runtime graph (fp32 and int8), for any image size."""

import numpy as np
import pytest
import torch
from kornia.feature import ALIKED

from data.homographies import crop_resize
from data.images import open_source
from helper import to_tensor
from models.aliked import PyramidALIKED
from models.weights import offline_weights_dir, read_state_dict


def photo(name: str, size: tuple[int, int]) -> torch.Tensor:
    return to_tensor(crop_resize(open_source("sample").read(name), size))


@pytest.fixture(scope="module")
def pair_of_detectors():
    state = read_state_dict(offline_weights_dir() / "aliked-n16.pth")
    nets = []
    for cls in (ALIKED, PyramidALIKED):
        net = cls("aliked-n16", max_num_keypoints=512)
        net.load_state_dict(state, strict=False)
        nets.append(net.eval())
    return nets


def assert_same_features(ref, out, desc_atol=1e-4):
    assert ref.keypoints.shape == out.keypoints.shape
    assert torch.allclose(ref.keypoints, out.keypoints, atol=1e-3)
    assert torch.allclose(ref.keypoint_scores, out.keypoint_scores, atol=1e-4)
    assert torch.allclose(ref.descriptors, out.descriptors, atol=desc_atol)


@pytest.mark.parametrize("size", [(640, 480), (451, 299)])  # (w, h); the second is padded to multiples of 32
def test_same_keypoints_scores_and_descriptors_as_kornia(pair_of_detectors, size):
    kornia_aliked, pyramid = pair_of_detectors
    image = photo("astronaut.png", size)
    with torch.no_grad():
        (ref,), (out,) = kornia_aliked(image), pyramid(image)
    assert len(ref.keypoints) > 200
    assert_same_features(ref, out)


def test_batch_with_image_sizes_and_the_same_state_dict(pair_of_detectors):
    kornia_aliked, pyramid = pair_of_detectors
    assert pyramid.state_dict().keys() == kornia_aliked.state_dict().keys()
    images = torch.cat([photo("coffee.png", (320, 256)), photo("chelsea.png", (320, 256))])
    valid = torch.tensor([[320, 256], [300, 200]])
    with torch.no_grad():
        refs, outs = kornia_aliked(images, valid), pyramid(images, valid)
    for ref, out in zip(refs, outs):
        assert_same_features(ref, out)


@pytest.mark.slow
def test_onnxruntime_graph_fp32_equals_pytorch_and_int8_stays_close(pair_of_detectors, tmp_path):
    from models.matching import build_matcher
    from quantization.int8 import _int8_kernels, int8_detector

    matcher = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 512}}).eval()
    calibration = [photo(n, (320, 240)) for n in ("rocket.jpg", "coffee.png")]
    fp32 = int8_detector(matcher, calibration[:1], tmp_path / "fp32", quantize=False)
    int8 = int8_detector(matcher, calibration, tmp_path / "int8")
    # what a report's execution column says of each
    assert _int8_kernels(fp32) == "fp32 ONNX Runtime graph for the detector"
    assert _int8_kernels(int8) == "int8 kernels (ONNX Runtime) for the detector"
    for size in ((640, 480), (451, 299)):  # one graph, any size
        image = photo("astronaut.png", size)
        with torch.no_grad():
            ref, out, low = (m.detect(image) for m in (matcher, fp32, int8))
        assert torch.allclose(ref["keypoints"][0], out["keypoints"][0], atol=1e-3)
        assert torch.allclose(ref["descriptors"][0], out["descriptors"][0], atol=1e-4)
        # int8: most keypoints where they were, descriptors pointing the same way
        dist = torch.cdist(ref["keypoints"][0], low["keypoints"][0]).min(1)
        assert (dist.values < 1).float().mean() > 0.85
        near = dist.values < 1
        cos = (ref["descriptors"][0][:, near] * low["descriptors"][0][:, dist.indices[near]]).sum(0)
        assert float(np.median(cos.numpy())) > 0.95
    # both images at once (worker threads, a one-thread session each): the graphs run, never PyTorch's network
    images = [photo("astronaut.png", (640, 480)), photo("coffee.png", (451, 299))]
    one_by_one = [fp32.extract(x) for x in images]
    for m in (fp32, int8):
        m.detector.sp.dense = None  # what a worker would call if it ran the PyTorch network
        together = m.extract_images(images)
        del m.detector.sp.dense
        assert [len(f["keypoints"][0]) for f in together] == [len(f["keypoints"][0]) for f in m.extract_images(images)]
    together = fp32.extract_images(images)
    for ref, out in zip(one_by_one, together):
        assert torch.allclose(ref["keypoints"][0], out["keypoints"][0], atol=1e-3)
        assert torch.allclose(ref["descriptors"][0], out["descriptors"][0], atol=1e-4)


def test_an_image_without_keypoints_gives_empty_features(pair_of_detectors):
    _, pyramid = pair_of_detectors
    with torch.no_grad():
        (out,) = pyramid(torch.zeros(1, 3, 96, 128))
    assert out.keypoints.shape == (0, 2) and out.descriptors.shape == (0, 128) and out.keypoint_scores.shape == (0,)


def test_dense_graph_network_moves_selu_scale_into_the_weights(pair_of_detectors):
    """The exported network computes ELU where ALIKED computes SELU (no multiplication over every activation):
    the same score map, the levels divided by SELU's scale (which the descriptors' normalization cancels)."""
    from models.aliked import _without_selu_scale

    _, pyramid = pair_of_detectors
    before = {k: v.clone() for k, v in pyramid.state_dict().items()}
    folded = _without_selu_scale(pyramid)
    assert not any(isinstance(m, torch.nn.SELU) for n, m in folded.named_modules() if not n.startswith("desc_head"))
    image = photo("coffee.png", (320, 256))
    with torch.no_grad():
        ref, out = pyramid.dense(image), folded.dense(image)
    assert torch.allclose(ref[0], out[0], atol=1e-5)
    for level, divided in zip(ref[1:], out[1:]):
        assert torch.allclose(level, divided * 1.0507009873554805, atol=1e-4)
    assert all(torch.equal(v, pyramid.state_dict()[k]) for k, v in before.items())  # the original is untouched
