"""ALIKED without its dense descriptor map (models/aliked.py) computes what kornia's ALIKED computes, in PyTorch and
as an ONNX Runtime graph (fp32 and int8), for any image size."""

import numpy as np
import pytest
import torch
from kornia.feature import ALIKED

from data.homographies import crop_resize
from data.images import open_source
from helper import to_tensor
from models.aliked import PyramidALIKED, RampedReLU
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


@pytest.mark.slow
def test_openvino_runs_the_same_graph_deformable_convolutions_included(tmp_path):
    """OpenVINO reads the ONNX graph once its DeformConv nodes are its own op (zero-padded bilinear sampling at the
    border, as DeformConv computes it: the 451×299 image is padded, so samples fall outside), and returns the
    channels-last levels as views of its planar outputs, which the descriptor head reads as they are."""
    from backends.onnxruntime import cpu_session
    from backends.openvino import OpenVino, _openvino_onnx
    from models.matching import build_matcher
    from pipeline.checkpoint import load_checkpoint, save_checkpoint
    from quantization.int8 import int8_detector

    matcher = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 512}}).eval()
    calibration = [photo("rocket.jpg", (320, 240))]
    ort = int8_detector(matcher, calibration, tmp_path / "ort", quantize=False)
    ov = int8_detector(matcher, calibration, tmp_path / "ov", quantize=False, backend_name="openvino")
    assert (ov.detector.backend, ort.detector.backend) == ("openvino", "onnxruntime")
    assert ov.detector.graph_bytes == ort.detector.graph_bytes  # one stored graph, two runtimes
    rewritten = _openvino_onnx(ov.detector.graph_bytes)
    assert b"DeformConv" in ov.detector.graph_bytes and b"DeformableConv2D" in rewritten
    for size in ((640, 480), (451, 299)):
        image = photo("astronaut.png", size)
        feed = {"image": image.numpy()}
        ref_outputs = cpu_session(ort.detector.graph_bytes, 1).run(None, feed)
        outputs = OpenVino().session(ov.detector.graph_bytes, 1).run(None, feed)
        for a, b in zip(ref_outputs, outputs):
            assert a.shape == b.shape
            assert np.abs(a - b).max() < 1e-4
        assert not outputs[1].flags["C_CONTIGUOUS"]  # level 1: a channels-last view of the planar map
        with torch.no_grad():
            ref, out = matcher.detect(image), ov.detect(image)
        # the same keypoints, most to 1e-3 px: the sub-pixel refinement puts some 1/8 px apart (ONNX Runtime's graph
        # against PyTorch too, on 11 % of the val photos' keypoints)
        dist = torch.cdist(ref["keypoints"][0], out["keypoints"][0]).min(1)
        assert (dist.values < 0.5).all() and (dist.values < 1e-3).float().mean() > 0.8
        near = dist.values < 1e-3
        assert torch.allclose(ref["descriptors"][0][:, near], out["descriptors"][0][:, dist.indices[near]], atol=1e-4)
    # stored with its runtime, reloaded in it
    loaded = load_checkpoint(save_checkpoint(ov, tmp_path / "ov.pth"))
    assert loaded.detector.backend == "openvino" and loaded.detector.graph_bytes == ov.detector.graph_bytes
    image = photo("coffee.png", (451, 299))
    with torch.no_grad():
        assert torch.equal(loaded.detect(image)["descriptors"][0], ov.detect(image)["descriptors"][0])
    # two images at once: each worker thread compiles its own model and runs it, never PyTorch's network
    images = [photo("astronaut.png", (640, 480)), photo("coffee.png", (451, 299))]
    one_by_one = [ov.extract(x) for x in images]
    ov.detector.sp.dense = None
    together = ov.extract_images(images)
    del ov.detector.sp.dense
    for a, b in zip(one_by_one, together):
        assert torch.allclose(a["keypoints"][0], b["keypoints"][0], atol=1e-3)
        assert torch.allclose(a["descriptors"][0], b["descriptors"][0], atol=1e-4)


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


def test_relu_student_swaps_the_dense_part_only_and_reloads(tmp_path):
    """``detector: {activation: relu}``: ReLU wherever the dense part computed SELU (a student to distil, with the
    pretrained weights as its start); the descriptor head keeps SELU; a checkpoint rebuilds it with its activation."""
    from helper import InputError
    from models.matching import build_matcher, with_settings
    from pipeline.checkpoint import load_checkpoint, save_checkpoint

    dense = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 256}})
    relu = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 256, "activation": "relu"}})
    gates = {
        (n.startswith("desc_head"), type(m))
        for n, m in relu.detector.named_modules(remove_duplicate=False)
        if isinstance(m, (torch.nn.SELU, RampedReLU))
    }
    assert gates == {(False, RampedReLU), (True, torch.nn.SELU)} and isinstance(relu.detector.gate, RampedReLU)
    assert all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), relu.state_dict().values()))
    image = photo("coffee.png", (320, 256))
    with torch.no_grad():
        (score, *levels), (score_relu, *levels_relu) = dense.detector.dense(image), relu.detector.dense(image)
    assert min(float(f.min()) for f in levels) < 0 <= min(float(f.min()) for f in levels_relu)
    assert not torch.allclose(score, score_relu, atol=1e-2)
    # the descriptor head reads the same map the same way: equal levels give equal descriptors
    kpts = torch.tensor([[0.1, -0.2], [0.5, 0.5]])
    pad, size = (0, 0), image.shape[-2:]
    with torch.no_grad():
        a = dense.detector.describe([f[0].contiguous() for f in levels], pad, size, kpts)
        b = relu.detector.describe([f[0].contiguous() for f in levels], pad, size, kpts)
    assert torch.equal(a, b)
    save_checkpoint(relu, tmp_path / "relu.pth", {})
    back = load_checkpoint(tmp_path / "relu.pth")
    assert back.detector.activation == "relu" and isinstance(back.detector.gate, RampedReLU)
    fewer = with_settings(back, "detector", {"max_keypoints": 128})  # a checkpoint's operating point: weights kept
    assert fewer.detector.activation == "relu" and fewer.detector.dkd.n_limit == 128
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in fewer.state_dict().items())
    with torch.no_grad():
        ref, out = relu.extract(image), back.extract(image)
    assert all(torch.equal(ref[k][0], out[k][0]) for k in ("keypoints", "descriptors"))
    # a distillation's ramp: from the pretrained network's function (mix 0) to ReLU's (1)
    relu.detector.set_activation_mix(0.0)
    with torch.no_grad():
        assert torch.allclose(relu.detector.dense(image)[0], score, atol=1e-6)
        relu.detector.set_activation_mix(0.5)
        half = relu.detector.dense(image)[0]
        relu.detector.set_activation_mix(1.0)
        assert not torch.allclose(half, score, atol=1e-3) and torch.equal(relu.detector.dense(image)[0], score_relu)
    for bad, culprit in (({"activation": "gelu"}, "gelu"), ({"activation": "relu", "dense_map": True}, "SELU only")):
        with pytest.raises(InputError, match=culprit):
            build_matcher("aliked+lightglue", {"detector": bad})


@pytest.mark.slow
@pytest.mark.parametrize("activation, op", [("relu", "Relu"), ("leaky_relu", "LeakyRelu")])
def test_relu_student_graph_has_no_elu_and_equals_pytorch(tmp_path, activation, op):
    import onnx

    from models.matching import build_matcher
    from quantization.int8 import int8_detector

    relu = build_matcher("aliked+lightglue", {"detector": {"max_keypoints": 256, "activation": activation}})
    image = photo("astronaut.png", (320, 240))
    graph = int8_detector(relu, [image], tmp_path, quantize=False)
    ops = {node.op_type for node in onnx.load(graph.onnx_path).graph.node}
    assert op in ops and not ops & {"Elu", "Selu"}
    with torch.no_grad():  # what the graph computes (an untrained student's keypoints would compare its near-ties)
        ref, out = relu.detector.dense(image), graph.detector.dense(image)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ref, out))
